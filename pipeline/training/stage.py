"""The train and test stages: data + model + loops, each logged as one MLflow run from the
process that does the work."""

import gc
import math
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline import devices, plots
from pipeline.config import RunTarget, TrainConfig, workload
from pipeline.console import err, out
from pipeline.errors import UserError
from pipeline.schema import Metrics, Params, Stages, Tags
from pipeline.tracking import process
from pipeline.tracking import runs as tracking
from pipeline.tracking.lifecycle import Diverged, interrupts_requested, run_closed
from pipeline.training import artifact, data, fingerprint, loops, model
from pipeline.training.costs import Costs
from pipeline.training.record import default_run_name, describe_run, train_params


def math_tags(precision: devices.Precision) -> dict[str, str]:
    """Set the run's fp32 math once (devices.Precision.apply) and say what is in effect; a
    variable that overrides it is recorded, and said on stderr."""
    settings = precision.apply()
    if settings["override"] != "none" and precision.device.type == "cuda":
        err.print(
            f"warning: {settings['override']} is set: cuBLAS runs fp32 matmuls as TF32 "
            "whatever the precision says"
        )
    return {
        Tags.FP32_MATMUL: settings["matmul"],
        Tags.FP32_CONV: settings["conv"],
        Tags.TF32_OVERRIDE: settings["override"],
    }


def device_tags(
    device: torch.device, stage: str, host: str | None, allocator: str | None = None
) -> dict[str, str]:
    tags = {
        Tags.STAGE: stage,
        Tags.DEVICE: str(device),
        Tags.DEVICE_TYPE: device.type,
        Tags.DEVICE_NAME: devices.name(device),
        Tags.HOST: tracking.host_name(host),
        Tags.TORCH_VERSION: torch.__version__,
        Tags.TORCH_CUDA: torch.version.cuda or "none",
    }
    if driver := devices.driver_version(device):
        tags[Tags.GPU_DRIVER] = driver
    if cudnn := devices.cudnn_version(device):
        tags[Tags.CUDNN_VERSION] = cudnn
    if allocator:
        tags[Tags.HOST_ALLOCATOR] = allocator
    return tags


def progress_bar(enabled: bool):
    if not enabled:
        return nullcontext(None)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def train(cfg: TrainConfig, target: RunTarget, quiet: bool = False) -> str:
    """Train and test on one device, log one run; return the run's id.

    Raises UserError before anything is logged when the device, the tracking store or the
    data is not usable. Once the run exists it always ends FINISHED, FAILED or KILLED.
    """
    device, device_line = devices.choose(cfg.device)
    precision = devices.precision(cfg.precision, device)
    devices.set_deterministic(cfg.deterministic)
    allocator = devices.keep_freed_host_memory()
    # A store that does not answer: one line, before any data is read or made.
    client, experiment_id = tracking.open_experiment(target.tracking_uri, target.experiment)
    # Bad data, a bad --model or a --compile the device cannot run: one line, before anything
    # is logged. The model is built for the data's shape; the probe's FLOPs on the CPU.
    train_batches, test_batches = workload_data(cfg, device)
    model_config = cfg.model_config | {
        "input_shape": list(train_batches.input_shape),
        "num_classes": train_batches.num_classes,
    }
    flops = model.forward_flops(model.checked(model_config), train_batches.input_shape)
    loops.check_compile(cfg.compile, device)
    net = model.initialised(model_config, cfg.seed, device)
    losses = loops.LossBuffer(len(train_batches), device)
    inputs = [
        fingerprint.dataset_input(cfg.data.name, cfg.data.data_dir, split, context)
        for split, context in ((train_batches, "train"), (test_batches, "test"))
    ]

    sizes = train_batches.num_samples, test_batches.num_samples
    params = train_params(cfg, device, *sizes, net, model_config)
    tags = device_tags(device, Stages.TRAIN, target.host, allocator) | math_tags(precision)
    tags[Tags.WORKLOAD] = workload(params)
    tags[Tags.OPTIMIZER_IMPL] = "fused" if device.type == "cuda" else "torch's default"
    tags[Tags.DETERMINISTIC] = str(cfg.deterministic).lower()
    if target.parent_run_id:
        tags[Tags.PARENT] = target.parent_run_id
    name = target.run_name or tracking.unique_run_name(
        client, experiment_id, default_run_name(cfg, device)
    )
    costs = Costs(device)
    with interrupts_requested() as stop:
        run = tracking.Run.start(client, experiment_id, name, tags, join=not target.parent_run_id)
        with run_closed(run, stop, before_kill=lambda: _flush_losses(run, losses)):
            if cfg.system_metrics:
                run.start_system_metrics(cfg.system_metrics)
            run.log_params(params)
            run.log_datasets(inputs)
            if not quiet:  # what runs, once the store has taken the run
                err.print(device_line, markup=False, highlight=False)
            # Everything made so far lives to the end: out of the collector's way, so that
            # its passes during training scan only what training makes.
            gc.freeze()
            with devices.fallbacks_recorded() as fallbacks:
                summary, epochs, all_losses = _train_loop(
                    cfg, device, net, train_batches, test_batches, losses, run, quiet, stop,
                    precision, costs,
                )  # fmt: skip
                summary |= parity_probe(net, model_config, device, test_batches, precision)
            summary[Metrics.FORWARD_FLOPS] = flops
            # energy covers each epoch's training and test passes and the first epoch's
            # warm-up evaluation batch: so do the samples
            passes = train_batches.num_samples + test_batches.num_samples
            warm_up = min(cfg.batch_size, test_batches.num_samples)
            summary |= costs.metrics(passes * cfg.epochs + warm_up)
            summary[Metrics.CPU_FALLBACKS] = len(fallbacks)
            run.set_tags(costs.tags(fallbacks))
            costs.log(run)
            example = next(iter(test_batches))[0]
            final = [Metrics.TEST_ACCURACY, Metrics.TEST_LOSS]
            test_data = inputs[1]["name"], inputs[1]["digest"]
            steps = len(train_batches) * cfg.epochs
            # The training data is done with: freed before the model's export, which imports
            # torch's compiler stack, so that the run's peak memory is one or the other's.
            del train_batches
            artifact.log(
                run, net, cfg, device, model_config, steps, example, final, test_data,
                target.register_model,
            )  # fmt: skip
            _log_curves(run, all_losses, epochs, name)
            run.set_tags({Tags.NOTE: describe_run(params, tags, summary, epochs[-1])})
            run.log_metrics(summary)
            summary[Metrics.WALL_TIME_S] = process.seconds_since_start()
            run.log_metrics({Metrics.WALL_TIME_S: summary[Metrics.WALL_TIME_S]})
    _print_summary(run.run_id, summary)  # the outcome, quiet or not
    return run.run_id


def workload_data(cfg: TrainConfig, device: torch.device):
    """(training batches, test batches) of the data set, read the way --loader says; UserError
    when the two splits' images differ in shape."""
    load = (cfg.loader, cfg.batch_size, device, cfg.workers, cfg.pin_memory)
    train_batches = data.batches(cfg.data, True, *load)
    test_batches = data.batches(cfg.data, False, *load)
    if train_batches.input_shape != test_batches.input_shape:
        shapes = [s.input_shape for s in (train_batches, test_batches)]
        raise UserError(
            "the data set's training and test images differ in shape: {} and {}".format(
                *("x".join(map(str, s)) for s in shapes)
            )
        )
    return train_batches, test_batches


def _log_curves(run: tracking.Run, losses: list[float], epochs: list[loops.Epoch], title: str):
    """curves.png: every batch's loss, and each epoch's test accuracy and loss."""
    with tempfile.TemporaryDirectory() as tmp:
        points = [(e.epoch, e.test_accuracy, e.test_loss) for e in epochs]
        plots.plot_run(losses, points, title, Path(tmp) / "curves.png")
        run.log_artifacts(Path(tmp))


def _flush_losses(run: tracking.Run, losses: loops.LossBuffer) -> list[float]:
    first_step, values = losses.drain()
    if values:
        run.log_series(Metrics.TRAIN_LOSS, first_step, values)
    return values


def _train_loop(
    cfg, device, net, train_batches, test_batches, losses, run, quiet, stop, precision, costs
):
    """Run the epochs, logging each one's figures as soon as it ends; between the first and
    the second, profile a window of batches (costs). Returns (the run's totals, the epochs,
    every batch's loss)."""
    epochs: list[loops.Epoch] = []
    all_losses: list[float] = []
    time_to_target = None
    optimizing = {"name": cfg.optimizer, "weight_decay": cfg.weight_decay, "momentum": cfg.momentum}
    with progress_bar(not quiet and err.is_terminal) as bar:
        on_batch = stop.check
        if bar is not None:
            epoch_task = bar.add_task("epochs", total=cfg.epochs)
            batch_task = bar.add_task("batches", total=len(train_batches))

            def on_batch():
                stop.check()
                bar.advance(batch_task)

        for ep in loops.fit(
            net,
            train_batches,
            test_batches,
            cfg.epochs,
            cfg.lr,
            device,
            losses,
            on_batch,
            precision,
            optimizing,
            cfg.compile,
            costs.resume,  # compilation, before the first epoch, is not an epoch's cost
        ):
            costs.pause()
            first_step = losses.next_step
            values = _flush_losses(run, losses)
            all_losses += values
            run.log_metrics(
                {
                    Metrics.TEST_LOSS: ep.test_loss,
                    Metrics.TEST_ACCURACY: ep.test_accuracy,
                    Metrics.EPOCH_TIME_S: ep.time_s,
                    Metrics.EPOCH_SAMPLES_PER_S: train_batches.num_samples / ep.train_time_s,
                },
                step=ep.epoch,
            )
            # The epoch's writes are done before the next epoch's clock starts: MLflow never
            # competes with the timed work for the CPU.
            stop.check()
            epochs.append(ep)
            bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
            if bad:
                raise Diverged(
                    f"diverged: train_loss became {values[bad[0]]} at step {first_step + bad[0]}"
                    f" (epoch {ep.epoch}); try a lower --lr"
                )
            if not math.isfinite(ep.test_loss):
                raise Diverged(f"diverged: test_loss became {ep.test_loss} at epoch {ep.epoch}")
            if (
                time_to_target is None
                and cfg.target_accuracy is not None
                and ep.test_accuracy >= cfg.target_accuracy
            ):
                time_to_target = sum(e.train_time_s for e in epochs)
            if bar is not None:
                bar.reset(batch_task)
                bar.advance(epoch_task)
            if not quiet:
                err.print(
                    f"epoch {ep.epoch}/{cfg.epochs}  train {ep.train_time_s:.2f} s  "
                    f"test {ep.eval_time_s:.2f} s  test loss {ep.test_loss:.4f}  "
                    f"accuracy {ep.test_accuracy:.1%}"
                )
            if ep.epoch == 1:
                trace = costs.trace_path if cfg.profile_trace else None
                costs.profile(
                    net, train_batches, cfg.lr, precision, cfg.profile_batches, trace,
                    optimizing, cfg.compile,
                )  # fmt: skip
    return _summary(epochs, train_batches.num_samples, time_to_target), epochs, all_losses


def _summary(epochs: list[loops.Epoch], samples: int, time_to_target: float | None) -> dict:
    """Run totals. Throughput is steady-state: the epochs after the first, when there are any."""
    steady = epochs[1:] or epochs
    summary = {
        Metrics.TRAIN_TIME_S: sum(e.train_time_s for e in epochs),
        Metrics.EVAL_TIME_S: sum(e.eval_time_s for e in epochs),
        Metrics.EVAL_WARM_UP_S: sum(e.warm_up_s for e in epochs),
        Metrics.FIRST_EPOCH_TIME_S: epochs[0].time_s,
        Metrics.SAMPLES_PER_S: samples * len(steady) / sum(e.train_time_s for e in steady),
    }
    if epochs[0].compile_s:
        summary[Metrics.COMPILE_TIME_S] = epochs[0].compile_s
    if time_to_target is not None:
        summary[Metrics.TIME_TO_TARGET_S] = time_to_target
    return summary


def _print_summary(run_id: str, summary: dict) -> None:
    out.print(
        f"run {run_id}: train {summary[Metrics.TRAIN_TIME_S]:.2f} s, "
        f"{summary[Metrics.SAMPLES_PER_S]:,.0f} samples/s, "
        f"wall {summary[Metrics.WALL_TIME_S]:.2f} s"
    )


def parity_probe(
    net: torch.nn.Module,
    config: dict,
    device: torch.device,
    batches,
    precision: devices.Precision | None = None,
) -> dict:
    """On a non-CPU device: the trained weights on the device, in its precision, against the
    CPU in fp32, each side making its inputs from the same bytes. For bf16 and fp16 also the
    gap the precision alone explains: the CPU in that precision against the CPU in fp32."""
    if device.type == "cpu":
        return {}
    cpu_net = model.build(**config)
    cpu_net.load_state_dict({k: v.cpu() for k, v in net.state_dict().items()})
    found = loops.parity(net, cpu_net, batches.with_cpu_inputs(), precision=precision)
    metrics = {
        Metrics.PARITY_MAX_ABS_LOGIT_DIFF: found.max_abs_logit_diff,
        Metrics.PARITY_ARGMAX_AGREEMENT: found.argmax_agreement,
        Metrics.PARITY_INPUT_MISMATCH: found.input_mismatch,
    }
    if precision is not None and precision.name in devices.AUTOCAST:
        on_cpu = devices.Precision(precision.name, torch.device("cpu"))
        cpu_batches = ((x_cpu, x_cpu, y) for _, x_cpu, y in batches.with_cpu_inputs())
        gap = loops.parity(cpu_net, cpu_net, cpu_batches, precision=on_cpu)
        metrics |= {
            Metrics.PARITY_PRECISION_MAX_ABS_LOGIT_DIFF: gap.max_abs_logit_diff,
            Metrics.PARITY_PRECISION_ARGMAX_AGREEMENT: gap.argmax_agreement,
        }
    return metrics


def test(
    model_uri: str,
    device_spec: str,
    data_dir: Path,
    batch_size: int,
    target: RunTarget,
    quiet: bool = False,
    loader: str = "tensors",
) -> str:
    """Evaluate a logged model on a device, its test split fed the way `loader` says; log a
    run of stage `test` pointing at its source."""
    device = devices.resolve(device_spec)
    allocator = devices.keep_freed_host_memory()
    client, experiment_id = tracking.open_experiment(target.tracking_uri, target.experiment)
    with tempfile.TemporaryDirectory() as tmp:
        net, config = artifact.load(model_uri, Path(tmp), device)
    recorded = config["data"] | {"data_dir": data_dir}
    if recorded.get("input_shape"):
        recorded["input_shape"] = tuple(recorded["input_shape"])
    spec = data.DataSpec(**recorded)
    test_batches = data.batches(spec, False, loader, batch_size, device)
    test_input = fingerprint.dataset_input(spec.name, spec.data_dir, test_batches, "test")

    source_id = config["run_id"]
    # the source run may be in another store: its config says enough then
    params, source_tags = tracking.recorded(client, source_id)
    params[Params.DEVICE], params[Params.LOADER] = str(device), loader
    tags = device_tags(device, Stages.TEST, target.host, allocator)
    tags |= math_tags(devices.Precision("fp32", device))
    tags[Tags.SOURCE_RUN_ID] = source_id
    if Tags.WORKLOAD in source_tags:
        tags[Tags.WORKLOAD] = source_tags[Tags.WORKLOAD]
    name = target.run_name or tracking.unique_run_name(
        client, experiment_id, f"test-{device}-of-{config['trained_on']}-{source_id[:8]}"
    )
    with interrupts_requested() as stop:
        run = tracking.Run.start(client, experiment_id, name, tags)
        with run_closed(run, stop):
            run.log_params(params)
            run.log_datasets([test_input])
            test_loss, test_accuracy, warm_up, eval_time = loops.timed_evaluation(
                net, test_batches, device
            )
            run.log_metrics(
                {Metrics.TEST_LOSS: test_loss, Metrics.TEST_ACCURACY: test_accuracy},
                step=int(config["epochs"]),
            )
            run.log_metrics(
                {
                    **parity_probe(net, config["model"], device, test_batches),
                    Metrics.EVAL_TIME_S: eval_time,
                    Metrics.EVAL_WARM_UP_S: warm_up,
                }
            )
            run.log_metrics({Metrics.WALL_TIME_S: process.seconds_since_start()})
    if not quiet:
        out.print(
            f"run {run.run_id}: model of run {source_id} on {device}: "
            f"test loss {test_loss:.4f}, accuracy {test_accuracy:.1%}"
        )
    return run.run_id
