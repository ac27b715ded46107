"""The sweep: every device against every workload size, as child runs of one parent run, and
where each accelerator starts to beat the CPU."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from pipeline import config, console, devices, plots, render, tracking
from pipeline.config import Target, TrainConfig
from pipeline.errors import UserError
from pipeline.lifecycle import interrupts_requested, run_closed
from pipeline.schema import Metrics, Params, Stages, Tags


@dataclass(frozen=True)
class Grid:
    devices: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    hidden: tuple[int, ...]

    def as_params(self) -> dict[str, str]:
        return {
            "sweep_devices": ",".join(self.devices),
            "sweep_batch_sizes": ",".join(map(str, self.batch_sizes)),
            "sweep_hidden": ",".join(map(str, self.hidden)),
        }

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "Grid":
        return cls(
            tuple(params["sweep_devices"].split(",")),
            tuple(int(b) for b in params["sweep_batch_sizes"].split(",")),
            tuple(int(h) for h in params["sweep_hidden"].split(",")),
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


def workload_flops(batch_size: int, hidden: int, layers: int) -> int:
    """Multiply-adds of one forward pass of a batch: the size a workload is ordered by."""
    return batch_size * (784 * hidden + hidden * hidden * (layers - 1) + hidden * 10)


def sweep(
    grid: Grid,
    base: TrainConfig,
    target: Target,
    strict: bool = False,
    resume: str | None = None,
    quiet: bool = False,
) -> str:
    """Run every (device, batch size, width) not yet finished, one at a time, each as a child
    `train` process of its own under one parent run; summarise.

    Usage errors (a device missing under --strict, a parent that is not a sweep) are raised
    before anything is written."""
    client, experiment_id = tracking.open_experiment(
        target.tracking_uri, target.experiment, target.host
    )
    if resume:
        grid, base = _resumable(client, resume, base)
    device_list = usable_devices(grid.devices, strict)
    with interrupts_requested() as stop:
        if resume:
            client.update_run(resume, status="RUNNING")
            parent = tracking.Run(client, resume)
            experiment_id = client.get_run(resume).info.experiment_id
        else:
            name = target.run_name or tracking.unique_run_name(client, experiment_id, "sweep")
            tags = {Tags.STAGE: Stages.SWEEP, Tags.HOST: tracking.host_name(target.host)}
            parent = tracking.Run.start(client, experiment_id, name, tags)
            parent.log_params({**grid.as_params(), **base_params(base)})
            experiment_id = client.get_run(parent.run_id).info.experiment_id  # mlflow run's
        with run_closed(parent, stop):
            done = finished_children(client, parent.run_id)
            for device in device_list:
                for hidden in grid.hidden:
                    for batch_size in grid.batch_sizes:
                        stop.check()  # a signal between two children stops here
                        what = f"{device} batch {batch_size} hidden {hidden}"
                        if (device, str(batch_size), str(hidden)) in done:
                            console.err.print(f"already done: {what}")
                            continue
                        cfg = replace(base, device=device, batch_size=batch_size, hidden=hidden)
                        code = _train_child(cfg, target, parent.run_id, experiment_id, stop)
                        stop.check()
                        if not quiet or code:
                            outcome = "finished" if code == 0 else f"failed (exit code {code})"
                            console.err.print(f"{what}: {outcome}")
            summary = summarise(client, parent.run_id, base.layers)
            _log_summary(parent, summary, quiet)
    return parent.run_id


def child_command(cfg: TrainConfig, target: Target, parent_id: str) -> list[str]:
    """`python -m pipeline train` for one combination, under the parent run."""
    args = [sys.executable, "-m", "pipeline", "train", "--quiet", *config.train_args(cfg)]
    args += ["--parent-run-id", parent_id]
    return args + (["--host", target.host] if target.host else [])


def _train_child(cfg, target: Target, parent_id: str, experiment_id: str, stop) -> int:
    """Train one combination in a fresh process (no warm caches, allocator or CUDA context
    carried over from the one before); return its exit code. A signal for the sweep is passed
    on to the child, which ends its own run KILLED."""
    env = {k: v for k, v in os.environ.items() if k not in CHILD_UNSET}
    # In the environment, not on the command line, which `ps` shows to everyone.
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    env["MLFLOW_EXPERIMENT_ID"] = experiment_id
    child = subprocess.Popen(child_command(cfg, target, parent_id), env=env)
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
    return {
        Params.DATASET: base.data.name,
        Params.TRAIN_SIZE: base.data.train_size or "all",
        Params.TEST_SIZE: base.data.test_size or "all",
        Params.LAYERS: base.layers,
        Params.EPOCHS: base.epochs,
        Params.LR: base.lr,
        Params.SEED: base.seed,
    }


def base_from_params(p: dict[str, str], base: TrainConfig) -> TrainConfig:
    def size(key: str) -> int | None:
        return None if p[key] == "all" else int(p[key])

    data = replace(
        base.data,
        name=p[Params.DATASET],
        seed=int(p[Params.SEED]),
        train_size=size(Params.TRAIN_SIZE),
        test_size=size(Params.TEST_SIZE),
    )
    return replace(
        base,
        data=data,
        layers=int(p[Params.LAYERS]),
        epochs=int(p[Params.EPOCHS]),
        lr=float(p[Params.LR]),
        seed=int(p[Params.SEED]),
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
    return list(
        client.search_runs(
            [parent.info.experiment_id],
            f"tags.`{Tags.PARENT}` = '{parent_id}'",
            max_results=1000,
            order_by=["attributes.start_time ASC"],
        )
    )


def finished_children(client: MlflowClient, parent_id: str) -> set[tuple[str, str, str]]:
    return {
        (
            r.data.tags.get(Tags.DEVICE) or r.data.params[Params.DEVICE],
            r.data.params[Params.BATCH_SIZE],
            r.data.params[Params.HIDDEN],
        )
        for r in children(client, parent_id)
        if r.info.status == "FINISHED"
    }


def summarise(client: MlflowClient, parent_id: str, layers: int) -> dict:
    """Throughput per device for each workload, speed-ups over the CPU, and crossovers."""
    rows: dict[tuple[int, int], dict[str, float]] = {}
    for r in children(client, parent_id):
        if r.info.status != "FINISHED" or Metrics.SAMPLES_PER_S not in r.data.metrics:
            continue
        key = (int(r.data.params[Params.HIDDEN]), int(r.data.params[Params.BATCH_SIZE]))
        device = r.data.tags.get(Tags.DEVICE) or r.data.params[Params.DEVICE]  # what ran
        rows.setdefault(key, {})[device] = r.data.metrics[Metrics.SAMPLES_PER_S]
    return crossover_table(rows, layers)


def crossover_table(rows: dict[tuple[int, int], dict[str, float]], layers: int) -> dict:
    """Plain data in (throughput by (hidden, batch) and device), plain data out."""
    ordered = sorted(rows, key=lambda k: workload_flops(k[1], k[0], layers))
    device_names = sorted({d for r in rows.values() for d in r}, key=lambda d: (d != "cpu", d))
    table = []
    for hidden, batch in ordered:
        speeds = rows[(hidden, batch)]
        cpu = speeds.get("cpu")
        table.append(
            {
                "hidden": hidden,
                "batch_size": batch,
                "flops_per_batch": workload_flops(batch, hidden, layers),
                "samples_per_s": speeds,
                "speedup_vs_cpu": {d: s / cpu for d, s in speeds.items() if d != "cpu" and cpu},
            }
        )
    crossovers = {}
    for device in device_names:
        if device == "cpu":
            continue
        first = next((r for r in table if r["speedup_vs_cpu"].get(device, 0) > 1), None)
        crossovers[device] = (
            {
                "hidden": first["hidden"],
                "batch_size": first["batch_size"],
                "speedup_vs_cpu": first["speedup_vs_cpu"][device],
            }
            if first
            else "never in the range swept"
        )
    return {"devices": device_names, "rows": table, "crossover": crossovers}


def _log_summary(parent: tracking.Run, summary: dict, quiet: bool) -> None:
    if not quiet:
        console.out.print(render.sweep_table(summary))
    for line in render.crossover_lines(summary) or ["no accelerator in this sweep"]:
        console.out.print(line)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sweep.md").write_text(render.sweep_markdown(summary))
        (folder / "sweep.json").write_text(json.dumps(summary, indent=2))
        plots.plot_sweep(summary, folder / "throughput.png")
        parent.log_artifacts(folder)
    parent.set_tags(
        {
            Tags.NOTE: f"Sweep finished {time.strftime('%Y-%m-%d %H:%M')}. "
            + " ".join(render.crossover_lines(summary))
        }
    )
