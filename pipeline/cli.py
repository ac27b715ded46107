"""The command line: `python -m pipeline train | test | devices | compare`."""

import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table
from typer._click.exceptions import ClickException, NoArgsIsHelpError

from pipeline import launch
from pipeline.console import out
from pipeline.errors import UserError

app = typer.Typer(
    help="Train one PyTorch workload on each device, track it in MLflow, "
    "flag slow or wrong devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Options every command takes the same way.
TrackingUri = Annotated[
    str | None,
    typer.Option(
        envvar="MLFLOW_TRACKING_URI",
        show_envvar=True,
        help="MLflow tracking URI [default: MLflow's own, sqlite:///mlflow.db in this folder]",
    ),
]
Experiment = Annotated[
    str, typer.Option(envvar="MLFLOW_EXPERIMENT_NAME", show_envvar=True, help="MLflow experiment")
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")]
Host = Annotated[
    str | None,
    typer.Option(
        envvar="PIPELINE_HOST", show_envvar=True, help="Host name to record [default: hostname]"
    ),
]
RunName = Annotated[str | None, typer.Option(help="Run name [default: device-dataset-model-batch]")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-epoch lines")]
DataDir = Annotated[
    Path, typer.Option(help="Where data sets are stored or downloaded (torchvision layout)")
]


def positive_float(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be greater than 0, not {value}")
    return value


@app.command()
def train(
    device: Device = "auto",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size")] = 64,
    lr: Annotated[float, typer.Option(callback=positive_float, help="SGD learning rate")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed for the weights (and the synthetic data)")] = 0,
    dataset: Annotated[
        Literal["fashion-mnist", "mnist", "synthetic"], typer.Option(help="Data set")
    ] = "fashion-mnist",
    data_dir: DataDir = Path("data"),
    train_size: Annotated[
        int | None,
        typer.Option(min=1, help="Training images [default: all; synthetic: 60000]"),
    ] = None,
    test_size: Annotated[
        int | None, typer.Option(min=1, help="Test images [default: all; synthetic: 10000]")
    ] = None,
    loader: Annotated[
        Literal["tensors", "dataloader"],
        typer.Option(
            help="tensors: data held on the device, sliced; dataloader: the quickstart's "
            "DataLoader + ToTensor",
        ),
    ] = "tensors",
    hidden: Annotated[int, typer.Option(min=1, help="Width of each hidden layer")] = 512,
    layers: Annotated[int, typer.Option(min=1, help="Number of hidden layers")] = 2,
    target_accuracy: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Log time_to_target_s, the training time to this test accuracy"
        ),
    ] = None,
    system_metrics: Annotated[
        bool, typer.Option(help="Log MLflow's system metrics (CPU, memory, GPU)")
    ] = True,
    system_metrics_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between system-metrics samples")
    ] = 1.0,
    experiment: Experiment = "device-comparison",
    run_name: RunName = None,
    tracking_uri: TrackingUri = None,
    host: Host = None,
    quiet: Quiet = False,
) -> None:
    """Train on one device, testing after every epoch; log one MLflow run."""
    launch.start("train", locals())  # every option, as Typer parsed and checked it


@app.command()
def test(
    model_uri: Annotated[
        str, typer.Option(help="A model logged by train, e.g. runs:/<run id>/model")
    ],
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size")] = 64,
    data_dir: DataDir = Path("data"),
    experiment: Experiment = "device-comparison",
    run_name: RunName = None,
    tracking_uri: TrackingUri = None,
    host: Host = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate a logged model on a device (perhaps not the one it was trained on)."""
    launch.start("test", locals())


@app.command("compare")
def compare_runs(
    experiment: Annotated[
        str | None,
        typer.Option(
            envvar="MLFLOW_EXPERIMENT_NAME",
            show_envvar=True,
            help="MLflow experiment [default: device-comparison, unless --run-id is given]",
        ),
    ] = None,
    run_id: Annotated[
        list[str] | None, typer.Option(help="Judge only these runs (repeat the option)")
    ] = None,
    filter_string: Annotated[
        str, typer.Option("--filter", help="MLflow search filter, e.g. params.batch_size = '64'")
    ] = "",
    latest: Annotated[
        bool, typer.Option(help="Judge only the latest run of each group, device and host")
    ] = False,
    speed_tolerance: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Allowed slowdown, a fraction")
    ] = 0.10,
    accuracy_tolerance: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Allowed accuracy difference, absolute")
    ] = 0.02,
    history: Annotated[
        int, typer.Option(min=1, help="Earlier runs that make a run's baseline")
    ] = 5,
    output_json: Annotated[Path | None, typer.Option(help="Write the findings as JSON")] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Also write report.md and the plots here")
    ] = None,
    no_fail: Annotated[
        bool, typer.Option("--no-fail", help="Exit 0 even when something is flagged")
    ] = False,
    tracking_uri: TrackingUri = None,
    host: Host = None,
) -> None:
    """Compare finished runs; flag slow devices and wrong accuracies. Exit 1 when flagged."""
    from pipeline import compare

    opts = compare.CompareOptions(
        experiment=experiment or (None if run_id else "device-comparison"),
        run_ids=tuple(run_id or ()),
        filter_string=filter_string,
        latest_only=latest,
        tolerances=compare.Tolerances(speed_tolerance, accuracy_tolerance, history),
        output_json=output_json,
        output_dir=output_dir,
    )
    findings = compare.run(opts, tracking_uri, host)
    if findings and not no_fail:
        raise typer.Exit(1)


def int_list(value: str) -> str:
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated whole numbers, not {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise typer.BadParameter(f"expected comma-separated numbers of 1 or more, not {value!r}")
    return value


@app.command()
def sweep(
    devices: Annotated[
        str, typer.Option(help="Comma-separated devices; those this machine lacks are skipped")
    ] = "cpu,cuda,mps",
    batch_sizes: Annotated[
        str, typer.Option(callback=int_list, help="Comma-separated batch sizes")
    ] = "64,256,1024",
    hidden: Annotated[
        str, typer.Option(callback=int_list, help="Comma-separated hidden-layer widths")
    ] = "512,2048",
    layers: Annotated[int, typer.Option(min=1, help="Number of hidden layers")] = 2,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of each child run")] = 2,
    lr: Annotated[float, typer.Option(callback=positive_float, help="SGD learning rate")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed")] = 0,
    dataset: Annotated[
        Literal["fashion-mnist", "mnist", "synthetic"], typer.Option(help="Data set")
    ] = "fashion-mnist",
    data_dir: DataDir = Path("data"),
    train_size: Annotated[int | None, typer.Option(min=1, help="Training images")] = None,
    test_size: Annotated[int | None, typer.Option(min=1, help="Test images")] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="A listed device this machine lacks is an error")
    ] = False,
    resume: Annotated[
        str | None, typer.Option(help="Parent run id of a sweep to finish; its grid is reused")
    ] = None,
    experiment: Experiment = "device-comparison",
    run_name: RunName = None,
    tracking_uri: TrackingUri = None,
    host: Host = None,
) -> None:
    """Every device against every batch size and width, as child runs of one parent run."""
    from pipeline import data, stages
    from pipeline import sweep as sweeping

    grid = sweeping.Grid(
        tuple(d.strip() for d in devices.split(",") if d.strip()),
        tuple(int(b) for b in batch_sizes.split(",") if b.strip()),
        tuple(int(h) for h in hidden.split(",") if h.strip()),
    )
    base = stages.TrainConfig(
        data=data.DataSpec(dataset, data_dir, seed, train_size, test_size),
        layers=layers,
        epochs=epochs,
        lr=lr,
        seed=seed,
    )
    target = stages.Target(experiment, tracking_uri, run_name, host)
    code = launch.exit_status(lambda: sweeping.run(grid, base, target, strict, resume))
    if code:
        raise typer.Exit(code)


@app.command("devices")
def list_devices(
    experiment: Experiment = "device-comparison", tracking_uri: TrackingUri = None
) -> None:
    """List this machine's devices and what the installed torch was built with."""
    from pipeline import devices

    table = Table("device", "name", title="Devices")
    for device, name in devices.describe():
        table.add_row(device, name)
    out.print(table)
    out.print("  ".join(f"{k}={v}" for k, v in devices.build_info().items()))


def main() -> None:
    """Entry point: usage errors and UserError are one line on stderr and exit code 2."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as e:
        e.show()
        code = 0
    except (ClickException, UserError) as e:
        message = e.format_message() if isinstance(e, ClickException) else str(e)
        typer.echo(f"error: {message}", err=True)
        code = 2
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
