"""The sweep stage: every device against every workload (model, precision, width, batch
size), as child runs of one parent run, and where each accelerator starts to beat the CPU."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from pipeline import config, console, devices, plots
from pipeline.config import RunTarget, TrainConfig
from pipeline.data_options import as_shape, data_spec, for_dataset, split
from pipeline.errors import UserError
from pipeline.schema import Metrics, Params, Stages, Tags, memory_method
from pipeline.sweep import tables
from pipeline.sweep.crossover import crossover_table
from pipeline.tracking import runs as tracking
from pipeline.tracking.lifecycle import interrupts_requested, run_closed
from pipeline.training import model


@dataclass(frozen=True)
class Grid:
    devices: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    hidden: tuple[int, ...]  # the MLP's widths; other models have none
    models: tuple[str, ...] = ("mlp",)
    precisions: tuple[str, ...] = ("fp32",)
    repeats: int = 1  # runs of each cell, each in a fresh process
    datasets: tuple[str, ...] = ()  # none: the base configuration's
    optimizers: tuple[str, ...] = ("sgd",)
    compiles: tuple[str, ...] = ("none",)  # torch.compile modes; none: eager

    def as_params(self) -> dict[str, str]:
        return {
            "sweep_devices": ",".join(self.devices),
            "sweep_batch_sizes": ",".join(map(str, self.batch_sizes)),
            "sweep_hidden": ",".join(map(str, self.hidden)),
            "sweep_models": ",".join(self.models),
            "sweep_precisions": ",".join(self.precisions),
            "sweep_repeats": str(self.repeats),
            "sweep_optimizers": ",".join(self.optimizers),
            "sweep_compiles": ",".join(self.compiles),
        } | ({"sweep_datasets": ",".join(self.datasets)} if self.datasets else {})

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "Grid":
        return cls(
            tuple(params["sweep_devices"].split(",")),
            tuple(int(b) for b in params["sweep_batch_sizes"].split(",")),
            tuple(int(h) for h in params["sweep_hidden"].split(",")),
            tuple(params.get("sweep_models", "mlp").split(",")),
            tuple(params.get("sweep_precisions", "fp32").split(",")),
            int(params.get("sweep_repeats", "1")),
            tuple(filter(None, params.get("sweep_datasets", "").split(","))),
            tuple(params.get("sweep_optimizers", "sgd").split(",")),
            tuple(params.get("sweep_compiles", "none").split(",")),
        )

    def workloads(self, base: TrainConfig) -> list[TrainConfig]:
        """Every (data set, model, precision, optimizer, compile mode, width, batch size) as a
        configuration, device unset; each data set in its default order, with --input-shape
        and --classes only where they apply (for_dataset)."""
        datasets = [for_dataset(base.data, d) for d in self.datasets] or [base.data]
        return [
            replace(
                base, data=d, model=m, precision=p, optimizer=o, compile=c, hidden=h, batch_size=b
            )
            for d in datasets
            for m in self.models
            for p in self.precisions
            for o in self.optimizers
            for c in self.compiles
            for h in (self.hidden if m == "mlp" else self.hidden[:1])
            for b in self.batch_sizes
        ]


def base_config(o: dict) -> TrainConfig:
    """What every child shares, from the sweep command's options (its locals)."""
    return TrainConfig(
        data=data_spec(o, split(o["dataset"])),
        weight_decay=o["weight_decay"],
        momentum=o["momentum"],
        layers=o["layers"],
        epochs=o["epochs"],
        lr=o["lr"],
        seed=o["seed"],
    )


def workload_of(params: dict[str, str]) -> tuple:
    """(model, precision, width or None, batch size, data set, optimizer, compile mode) of a
    child run, from its params; the model as the sweep names it (mlp, whatever its width;
    cnn; vit; a factory reference)."""
    mlp = params[Params.MODEL].startswith("mlp-")
    return (
        "mlp" if mlp else params[Params.MODEL],
        params.get(Params.PRECISION, "fp32"),
        int(params[Params.HIDDEN]) if mlp else None,
        int(params[Params.BATCH_SIZE]),
        params.get(Params.DATASET, ""),
        params.get(Params.OPTIMIZER, "sgd"),
        params.get(Params.COMPILE, "none"),
    )


def usable_devices(wanted: tuple[str, ...], strict: bool) -> list[str]:
    """The listed devices this machine has; the others skipped with a line (or UserError)."""
    usable = []
    for spec in wanted:
        try:
            usable.append(str(devices.resolve(spec)))
        except UserError as e:
            if strict:
                raise
            console.err.print(f"skipping {spec}: {e}")
    if not usable:
        raise UserError("none of the listed devices is available here")
    return usable


def sweep(
    grid: Grid,
    base: TrainConfig,
    target: RunTarget,
    strict: bool = False,
    resume: str | None = None,
    quiet: bool = False,
) -> int:
    """Run every (device, model, precision, width, batch size) cell `repeats` times, in
    rounds (each round goes over every cell once, so that a drift of the machine's speed
    spreads over all cells), skipping the runs a resumed sweep already finished; each child
    is a `train` process of its own under one parent run. Summarise. Return how many children
    failed.

    Usage errors (a device missing under --strict, a parent that is not a sweep) are raised
    before anything is written; a child refused as a usage error (exit 2: say, no data set)
    stops the sweep there, its parent ended FAILED with the reason."""
    client, experiment_id = tracking.open_experiment(target.tracking_uri, target.experiment)
    if resume:
        grid, base = _resumable(client, resume, base)
    device_list = usable_devices(grid.devices, strict)
    with interrupts_requested() as stop:
        if resume:
            client.update_run(resume, status="RUNNING")
            parent = tracking.Run(client, resume)
            parent.claim()  # this process is the sweep's now: its first child must not close it
            experiment_id = client.get_run(resume).info.experiment_id
        else:
            name = target.run_name or tracking.unique_run_name(client, experiment_id, "sweep")
            tags = {Tags.STAGE: Stages.SWEEP, Tags.HOST: tracking.host_name(target.host)}
            parent = tracking.Run.start(client, experiment_id, name, tags)
            parent.log_params({**grid.as_params(), **base_params(base)})
            experiment_id = client.get_run(parent.run_id).info.experiment_id  # mlflow run's
        console.err.print(
            f"sweep run {parent.run_id} (to resume it: --resume {parent.run_id})",
            markup=False,
            highlight=False,
        )
        failed = 0
        with run_closed(parent, stop):
            done = finished_children(client, parent.run_id)
            for repeat, device, workload in product(
                range(grid.repeats), device_list, grid.workloads(base)
            ):
                stop.check()  # a signal between two children stops here
                cfg = replace(workload, device=device)
                what = f"{device} {describe_cell(cfg)}"
                if grid.repeats > 1:
                    what += f" (run {repeat + 1} of {grid.repeats})"
                if done[(device, *workload_of(child_params(cfg)))] > repeat:
                    console.err.print(f"already done: {what}")
                    continue
                code = _train_child(cfg, target, parent.run_id, experiment_id, stop)
                stop.check()
                if code == 2:  # refused: every other cell would be refused alike
                    raise UserError(f"sweep stopped: {what} was refused (the line above says why)")
                failed += code != 0
                if not quiet or code:
                    outcome = "finished" if code == 0 else f"failed (exit code {code})"
                    console.err.print(f"{what}: {outcome}")
            summary = summarise(client, parent.run_id)
            _log_summary(parent, summary, quiet)
    return failed


def describe_cell(cfg: TrainConfig) -> str:
    """'mlp hidden 512 fp32 batch 64 on fashion-mnist', 'cnn bf16 batch 256 on cifar10, adamw,
    compiled (default)'."""
    width = f" hidden {cfg.hidden}" if cfg.model == "mlp" else ""
    setup = [cfg.data.name]
    setup += [cfg.optimizer] if cfg.optimizer != "sgd" else []
    setup += [f"compiled ({cfg.compile})"] if cfg.compile != "none" else []
    return f"{cfg.model}{width} {cfg.precision} batch {cfg.batch_size} on {', '.join(setup)}"


def child_params(cfg: TrainConfig) -> dict[str, str]:
    """The params a child logs that name its workload (as train logs them)."""
    return {
        Params.MODEL: model.describe(cfg.model_config),
        Params.PRECISION: cfg.precision,
        Params.HIDDEN: str(cfg.hidden),
        Params.BATCH_SIZE: str(cfg.batch_size),
        Params.DATASET: cfg.data.name,
        Params.OPTIMIZER: cfg.optimizer,
        Params.COMPILE: cfg.compile,
    }


def child_command(cfg: TrainConfig, target: RunTarget, parent_id: str) -> list[str]:
    """`python -m pipeline train` for one combination, under the parent run."""
    args = [sys.executable, "-m", "pipeline", "train", "--quiet", *config.train_args(cfg)]
    args += ["--parent-run-id", parent_id]
    return args + (["--host", target.host] if target.host else [])


def _train_child(cfg, target: RunTarget, parent_id: str, experiment_id: str, stop) -> int:
    """Train one combination in a fresh process (no warm caches, allocator or CUDA context
    carried over from the one before); return its exit code. A signal for the sweep is passed
    on to the child, which ends its own run KILLED."""
    env = {k: v for k, v in os.environ.items() if k not in CHILD_UNSET}
    # In the environment, not on the command line, which `ps` shows to everyone.
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    env["MLFLOW_EXPERIMENT_ID"] = experiment_id
    # Its outcome line is the sweep's to print; its errors reach stderr.
    child = subprocess.Popen(
        child_command(cfg, target, parent_id), env=env, stdout=subprocess.DEVNULL
    )
    while True:
        try:
            return child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stop.signal is not None and child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(stop.signal)
                return child.wait()


# The child is a run of its own in the parent's experiment, whatever named ours.
CHILD_UNSET = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


def base_params(base: TrainConfig) -> dict[str, object]:
    """What every child shares, logged on the parent so that --resume can rebuild it."""
    return (
        {
            Params.DATASET: base.data.name,
            Params.TRAIN_SIZE: base.data.train_size or "all",
            Params.TEST_SIZE: base.data.test_size or "all",
            Params.LAYERS: base.layers,
            Params.EPOCHS: base.epochs,
            Params.LR: base.lr,
            Params.SEED: base.seed,
            Params.WEIGHT_DECAY: base.weight_decay,
            Params.MOMENTUM: base.momentum,
        }
        | (
            {Params.INPUT_SHAPE: "x".join(map(str, base.data.input_shape))}
            if base.data.input_shape
            else {}
        )
        | ({Params.NUM_CLASSES: base.data.num_classes} if base.data.num_classes else {})
    )


def base_from_params(p: dict[str, str], base: TrainConfig) -> TrainConfig:
    def size(key: str) -> int | None:
        return None if p[key] == "all" else int(p[key])

    data = replace(
        base.data,
        name=p[Params.DATASET],
        seed=int(p[Params.SEED]),
        train_size=size(Params.TRAIN_SIZE),
        test_size=size(Params.TEST_SIZE),
        input_shape=as_shape(p.get(Params.INPUT_SHAPE)),
        num_classes=int(p[Params.NUM_CLASSES]) if Params.NUM_CLASSES in p else None,
    )
    return replace(
        base,
        data=data,
        layers=int(p[Params.LAYERS]),
        epochs=int(p[Params.EPOCHS]),
        lr=float(p[Params.LR]),
        seed=int(p[Params.SEED]),
        weight_decay=float(p.get(Params.WEIGHT_DECAY, "0.0")),
        momentum=float(p.get(Params.MOMENTUM, "0.0")),
    )


def _resumable(client: MlflowClient, run_id: str, base: TrainConfig):
    """The grid and shared settings of the sweep to resume, read from its parent run."""
    try:
        run = client.get_run(run_id)
    except Exception:
        raise UserError(f"no sweep run '{run_id}' to resume") from None
    if run.data.tags.get(Tags.STAGE) != Stages.SWEEP:
        raise UserError(f"run '{run_id}' is not a sweep's parent run")
    params = run.data.params
    return Grid.from_params(params), base_from_params(params, base)


def children(client: MlflowClient, parent_id: str) -> list:
    parent = client.get_run(parent_id)
    found = client.search_runs(
        [parent.info.experiment_id],
        tracking.matching(f"tags.`{Tags.PARENT}`", parent_id),
        max_results=1000,
        order_by=["attributes.start_time ASC"],
    )
    return [r for r in found if r.data.tags.get(Tags.PARENT) == parent_id]


def finished_children(client: MlflowClient, parent_id: str) -> Counter:
    """How many finished children each (device that ran, model, precision, width, batch
    size) has."""
    return Counter(
        (r.data.tags.get(Tags.DEVICE) or r.data.params[Params.DEVICE], *workload_of(r.data.params))
        for r in children(client, parent_id)
        if r.info.status == "FINISHED"
    )


def summarise(client: MlflowClient, parent_id: str) -> dict:
    """Throughput per device for each workload, speed-ups over the CPU, and crossovers."""
    records = []
    for r in children(client, parent_id):
        m = r.data.metrics
        if r.info.status != "FINISHED" or Metrics.SAMPLES_PER_S not in m:
            continue
        model, precision, hidden, batch, dataset, optimizer, compile_mode = workload_of(
            r.data.params
        )
        records.append(
            {
                "model": model,
                "precision": precision,
                "hidden": hidden,
                "batch_size": batch,
                "dataset": dataset,
                "optimizer": optimizer,
                "compile": compile_mode,
                "device": r.data.tags.get(Tags.DEVICE) or r.data.params[Params.DEVICE],
                "samples_per_s": m[Metrics.SAMPLES_PER_S],
                "flops_per_sample": m.get(Metrics.FORWARD_FLOPS, 0.0),
                "peak_memory_mb": m.get(Metrics.PEAK_MEMORY_MB),
                "memory_method": memory_method(r.data.tags.get(Tags.PEAK_MEMORY_SOURCE)),
                "energy_j": m.get(Metrics.ENERGY_J),
            }
        )
    return crossover_table(records)


def _log_summary(parent: tracking.Run, summary: dict, quiet: bool) -> None:
    if not quiet:
        console.out.print(tables.sweep_table(summary))
    for line in tables.crossover_lines(summary) or ["no accelerator in this sweep"]:
        console.out.print(line)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sweep.md").write_text(tables.sweep_markdown(summary))
        (folder / "sweep.json").write_text(json.dumps(summary, indent=2))
        plots.plot_sweep(summary, folder / "throughput.png")
        parent.log_artifacts(folder)
    parent.set_tags(
        {
            Tags.NOTE: f"Sweep finished {time.strftime('%Y-%m-%d %H:%M')}. "
            + " ".join(tables.crossover_lines(summary))
        }
    )
