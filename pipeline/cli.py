"""The command line: `python -m pipeline train | test | compare | sweep | devices`.

Each command parses its options (pipeline.config), runs its stage in this process, and
`main` turns what went wrong into one line and an exit code."""

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline import command_options as o
from pipeline import config as c
from pipeline.console import err, out
from pipeline.errors import UserError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def program(version: o.Version = False) -> None:
    """Train one PyTorch workload on each device, track it in MLflow, flag slow or wrong devices."""


@app.command()
def train(
    device: c.Device = "auto",
    epochs: c.Epochs = 10,
    batch_size: c.BatchSize = 64,
    lr: c.Lr = 1e-3,
    seed: c.Seed = 0,
    dataset: c.Dataset = "fashion-mnist",
    data_dir: c.DataDir = Path("data"),
    train_size: c.TrainSize = None,
    test_size: c.TestSize = None,
    input_shape: c.InputShape = None,
    classes: c.Classes = None,
    shuffle: c.Shuffle = None,
    loader: c.Loader = "tensors",
    workers: c.Workers = 0,
    pin_memory: c.PinMemory = False,
    model: c.Model = "mlp",
    model_option: c.ModelOption = None,
    precision: c.Precision = "fp32",
    hidden: c.Hidden = 512,
    layers: c.Layers = 2,
    patch: c.Patch = None,
    optimizer: c.Optimizer = "sgd",
    weight_decay: c.WeightDecay = 0.0,
    momentum: c.Momentum = 0.0,
    compile: c.Compile = "none",
    target_accuracy: c.TargetAccuracy = None,
    deterministic: c.Deterministic = False,
    allow_cpu_fallback: c.AllowCpuFallback = False,
    parent_run_id: Annotated[
        str | None,
        typer.Option(
            help="Log the run as a child of this run (a sweep's parent)",
            rich_help_panel=c.TRACKING_PANEL,
        ),
    ] = None,
    experiment: c.Experiment = None,
    run_name: c.RunName = None,
    register_model: c.RegisterModel = None,
    tracking_uri: c.TrackingUri = None,
    host: c.Host = None,
    system_metrics_interval: c.SystemMetricsInterval = 10.0,
    system_metrics: c.SystemMetrics = True,
    profile_batches: c.ProfileBatches = 20,
    profile_trace: c.ProfileTrace = False,
    quiet: c.Quiet = False,
) -> None:
    """Train on one device, testing after every epoch; log one MLflow run."""
    if allow_cpu_fallback:  # read once, when torch is imported: before the stage imports it
        os.environ["PYTORCH_ENABLE_MPS_FALLBACK"] = "1"
    from pipeline.training import stage as training

    target = c.RunTarget(
        experiment, tracking_uri, run_name, host, parent_run_id, register_model or None
    )
    training.train(c.train_config(locals()), target, quiet)


@app.command()
def test(
    model_uri: o.ModelUri,
    device: c.Device = "auto",
    batch_size: c.BatchSize = 64,
    data_dir: c.DataDir = Path("data"),
    loader: c.Loader = "tensors",
    experiment: c.Experiment = None,
    run_name: c.RunName = None,
    tracking_uri: c.TrackingUri = None,
    host: c.Host = None,
    quiet: c.Quiet = False,
) -> None:
    """Evaluate a logged model on a device (perhaps not the one it was trained on)."""
    from pipeline.training import stage as training

    target = c.RunTarget(experiment, tracking_uri, run_name, host)
    training.test(model_uri, device, data_dir, batch_size, target, quiet, loader)


@app.command("compare")
def compare_runs(
    run_id: o.RunIds = None,
    filter_string: o.Filter = "",
    latest: o.Latest = False,
    speed_tolerance: o.SpeedTolerance = 0.10,
    accuracy_tolerance: o.AccuracyTolerance = 0.02,
    history: o.History = 5,
    fail_on: o.FailOn = "warning",
    no_fail: o.NoFail = False,
    experiment: c.Experiment = None,
    tracking_uri: c.TrackingUri = None,
    host: c.Host = None,
    output_json: o.OutputJson = None,
    output_junit: o.OutputJunit = None,
    output_dir: o.OutputDir = None,
    plots: o.Plots = True,
    quiet: c.Quiet = False,
) -> None:
    """Compare finished runs; flag slow devices and wrong accuracies. Exit 1 when flagged
    (at --fail-on's level).

    Without --experiment or --run-id, the runs of the experiment that train logs to."""
    from pipeline.compare import stage as compare

    opts = compare.CompareOptions(
        experiment=experiment,
        run_ids=tuple(run_id or ()),
        filter_string=filter_string,
        latest_only=latest,
        tolerances=compare.Tolerances(speed_tolerance, accuracy_tolerance, history),
        output_json=output_json,
        output_junit=output_junit,
        output_dir=output_dir,
        plots=plots,
        fail_on="never" if no_fail else fail_on,
    )
    findings = compare.run_compare(opts, tracking_uri, host, quiet)
    if compare.fails(findings, opts.fail_on):
        raise typer.Exit(1)


@app.command()
def sweep(
    devices: o.Devices = "cpu,cuda,mps",
    batch_sizes: o.BatchSizes = "64,256,1024",
    hidden: o.Widths = "512,2048",
    models: o.Models = "mlp",
    precisions: o.Precisions = "fp32",
    dataset: o.Datasets = "fashion-mnist",
    optimizer: o.Optimizers = "sgd",
    compile: o.CompileModes = "none",
    repeats: o.Repeats = 1,
    strict: o.Strict = False,
    layers: c.Layers = 2,
    epochs: c.Epochs = 2,
    lr: c.Lr = 1e-3,
    seed: c.Seed = 0,
    weight_decay: c.WeightDecay = 0.0,
    momentum: c.Momentum = 0.0,
    data_dir: c.DataDir = Path("data"),
    train_size: c.TrainSize = None,
    test_size: c.TestSize = None,
    input_shape: c.InputShape = None,
    classes: c.Classes = None,
    resume: o.Resume = None,
    experiment: c.Experiment = None,
    run_name: c.RunName = None,
    tracking_uri: c.TrackingUri = None,
    host: c.Host = None,
    quiet: c.Quiet = False,
) -> None:
    """Every device against every batch size and width, each a child run in a process of its
    own, under one parent run."""
    from pipeline.sweep import stage as sweeping

    grid = sweeping.Grid(
        c.split(devices),
        c.split(batch_sizes, int),
        c.split(hidden, int),
        c.split(models),
        c.split(precisions),
        repeats,
        c.split(dataset),
        c.split(optimizer),
        c.split(compile),
    )
    target = c.RunTarget(experiment, tracking_uri, run_name, host)
    failed = sweeping.sweep(grid, sweeping.base_config(locals()), target, strict, resume, quiet)
    if failed:
        err.print(f"error: {failed} of the sweep's runs failed (lines above)")
        raise typer.Exit(1)


@app.command()
def doctor(
    device: c.Device = "auto",
    model: c.Model = "mlp",
    model_option: c.ModelOption = None,
    hidden: c.Hidden = 512,
    layers: c.Layers = 2,
    patch: c.Patch = None,
    precision: c.Precision = "fp32",
    dataset: c.Dataset = "fashion-mnist",
    data_dir: c.DataDir = Path("data"),
    input_shape: c.InputShape = None,
    classes: c.Classes = None,
    optimizer: c.Optimizer = "sgd",
    weight_decay: c.WeightDecay = 0.0,
    momentum: c.Momentum = 0.0,
    no_fail: o.DoctorNoFail = False,
    experiment: c.Experiment = None,
    run_name: c.RunName = None,
    tracking_uri: c.TrackingUri = None,
    host: c.Host = None,
    output_json: o.ChecksJson = None,
    verbose: o.Verbose = False,
    quiet: c.Quiet = False,
) -> None:
    """Check a device's operations against the CPU's: the fixed battery, then every operation
    of one training step of the model (eager: compiled kernels are not replayed), on the data
    set's input shape, with its optimizer. Exit 1 when a check fails or raises."""
    from pipeline.doctor import stage as doctor_stage

    options = locals() | {"seed": 0, "train_size": None, "test_size": None}
    workload = c.TrainConfig(
        model=model,
        hidden=hidden,
        layers=layers,
        patch=patch,
        model_options=c.key_values(model_option),
    )
    optimizing = {"name": optimizer, "weight_decay": weight_decay, "momentum": momentum}
    target = c.RunTarget(experiment, tracking_uri, run_name, host)
    failed = doctor_stage.run(
        device,
        target,
        workload.model_config,
        precision,
        output_json,
        quiet,
        c.data_spec(options),
        optimizing,
        verbose,
    )
    if failed and not no_fail:
        raise typer.Exit(1)


@app.command("devices")
def list_devices() -> None:
    """List this machine's devices and what the installed torch was built with."""
    from rich.table import Table

    from pipeline import devices

    table = Table("device", "name", "state", title="Devices")
    for device, name, state in devices.describe():
        table.add_row(device, name, state, style="red" if state != "usable" else None)
    out.print(table)
    out.print("  ".join(f"{k}={v}" for k, v in devices.build_info().items()))


def main() -> None:
    """The program: run the command, then leave at once. Python's own teardown of torch and
    MLflow takes a second or more after the run has ended; a run's wall_time_s would miss it."""
    code = execute(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def execute(args: list[str]) -> int:
    """Run one command line; return its exit code. The one place where outcomes become exit
    codes: 0 done; 1 compare flagged something, a run diverged, or the tracking store failed
    mid-run; 2 a usage error (one line, nothing logged); 130/143 interrupted by SIGINT/SIGTERM
    (the run ends KILLED)."""
    from pipeline.tracking.lifecycle import Diverged, Interrupted

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        code = app(args or ["--help"], prog_name="pipeline", standalone_mode=False)
    except UserError as e:
        code = _fail(f"error: {e}", 2)
        _fail_joined_run(str(e))
    except Interrupted as e:
        code = _fail(f"{e}: run ended as KILLED, metrics logged so far kept", e.code)
    except Diverged as e:
        code = _fail(f"error: {e}; run ended as FAILED", 1)
    except typer.Abort:  # Ctrl-C before any run existed
        code = 130
    except typer.TyperException as e:  # a usage error found while parsing
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        code = _fail(f"error: {message}", 2)
    except Exception as e:
        if type(e).__module__.split(".")[0] != "mlflow":
            raise
        from pipeline.tracking.store import redact_text, refusal

        if refusal(e):  # the server let this account in but not to do this: nothing was logged
            code = _fail(f"error: the MLflow tracking server {refusal(e)}", 2)
        else:
            first = redact_text(str(e)).strip().splitlines() or [type(e).__name__]
            code = _fail(f"error: the tracking store failed: {first[0]}", 1)
    return code if isinstance(code, int) else 0


def _fail_joined_run(reason: str) -> None:
    """Under `mlflow run`, which creates the run before the command starts (and hands it over
    with MLFLOW_RUN_ID and MLFLOW_TRACKING_URI), a usage error, say a device listed but
    unusable, still leaves that run: end it FAILED with the reason, so that the UI says why.
    Best effort, within seconds: the store may be what failed."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from pipeline.tracking.runs import fail_run

    fail_run(run_id, reason)


def _fail(message: str, code: int) -> int:
    err.print(message, markup=False, highlight=False)
    return code
