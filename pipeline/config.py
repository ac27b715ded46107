"""The option set, defined once: each option's type, check and help as a Typer annotation, the
stage configurations the commands build from them, and the command line that gives back a
configuration (what a sweep starts its children with). `MLproject` passes its parameters to
these options; tests/test_docs.py checks that every parameter there names an option here."""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

import typer

from pipeline.data_options import (  # the data-set options, re-exported for cli
    DATASETS,
    Classes,
    DataDir,
    Dataset,
    DataSpec,
    InputShape,
    Loader,
    PinMemory,
    Shuffle,
    TestSize,
    TrainSize,
    Workers,
    data_spec,
    dataset_list,
    shuffles_by_default,
    split,
)
from pipeline.run_options import (  # where runs go and what is printed, re-exported
    TRACKING_PANEL,
    Experiment,
    Host,
    ProfileBatches,
    ProfileTrace,
    Quiet,
    RegisterModel,
    RunName,
    SystemMetrics,
    SystemMetricsInterval,
    TrackingUri,
)
from pipeline.schema import Params

__all__ = [
    "DATASETS",
    "TRACKING_PANEL",
    "Classes",
    "DataDir",
    "DataSpec",
    "Dataset",
    "Experiment",
    "Host",
    "InputShape",
    "Loader",
    "PinMemory",
    "ProfileBatches",
    "ProfileTrace",
    "Quiet",
    "RegisterModel",
    "RunName",
    "Shuffle",
    "SystemMetrics",
    "SystemMetricsInterval",
    "TestSize",
    "TrackingUri",
    "TrainSize",
    "Workers",
    "data_spec",
    "dataset_list",
    "shuffles_by_default",
    "split",
]


def positive(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be greater than 0, not {value}")
    return value


def whole_numbers(value: str) -> str:
    """A comma-separated list of whole numbers of 1 or more."""
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated whole numbers, not {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise typer.BadParameter(f"expected comma-separated numbers of 1 or more, not {value!r}")
    return value


PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def choices(allowed: tuple[str, ...]):
    """A check of a comma-separated list of some of `allowed`."""

    def check(value: str) -> str:
        if not split(value) or set(split(value)) - set(allowed):
            raise typer.BadParameter(f"expected some of {', '.join(allowed)}, not {value!r}")
        return value

    return check


optimizer_list = choices(("sgd", "adamw"))
precision_list = choices(PRECISIONS)


# --- the workload ----------------------------------------------------------------------------
WORKLOAD_PANEL = "Workload"  # the --help panel of the workload's options

Device = Annotated[
    str, typer.Option(rich_help_panel=WORKLOAD_PANEL, help="auto, cpu, cuda, cuda:N or mps")
]
Epochs = Annotated[int, typer.Option(rich_help_panel=WORKLOAD_PANEL, min=1, help="Epochs")]
BatchSize = Annotated[int, typer.Option(rich_help_panel=WORKLOAD_PANEL, min=1, help="Batch size")]
Lr = Annotated[
    float, typer.Option(rich_help_panel=WORKLOAD_PANEL, callback=positive, help="Learning rate")
]
Seed = Annotated[
    int,
    typer.Option(
        rich_help_panel=WORKLOAD_PANEL, help="Seed of the weights (and of the synthetic data)"
    ),
]
Optimizer = Annotated[
    Literal["sgd", "adamw"], typer.Option(rich_help_panel=WORKLOAD_PANEL, help="Optimizer")
]
WeightDecay = Annotated[
    float, typer.Option(rich_help_panel=WORKLOAD_PANEL, min=0.0, help="Optimizer's weight decay")
]
Momentum = Annotated[
    float, typer.Option(rich_help_panel=WORKLOAD_PANEL, min=0.0, max=1.0, help="sgd: momentum")
]
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
compile_list = choices(COMPILE_MODES)
Compile = Annotated[
    Literal["none", "default", "reduce-overhead", "max-autotune"],
    typer.Option(rich_help_panel=WORKLOAD_PANEL, help="torch.compile mode (none: eager)"),
]
Patch = Annotated[
    int | None,
    typer.Option(
        rich_help_panel=WORKLOAD_PANEL,
        min=1,
        help="vit: patch side",
        show_default="the largest divisor of the side <= 8",
    ),
]
Model = Annotated[
    str,
    typer.Option(
        rich_help_panel=WORKLOAD_PANEL,
        help="mlp (the quickstart's), cnn, vit, or your own as package.module:factory "
        "(a callable returning an nn.Module that maps [N, C, H, W] to num_classes logits; "
        "given input_shape and num_classes when it takes them)",
    ),
]
ModelOption = Annotated[
    list[str] | None,
    typer.Option(
        rich_help_panel=WORKLOAD_PANEL,
        help="KEY=VALUE passed to your model's factory (repeat the option)",
    ),
]
Precision = Annotated[
    Literal["fp32", "tf32", "bf16", "fp16"],
    typer.Option(
        rich_help_panel=WORKLOAD_PANEL,
        help="fp32; tf32 (CUDA matmuls); bf16 or fp16 (autocast on the device)",
    ),
]
Hidden = Annotated[
    int, typer.Option(rich_help_panel=WORKLOAD_PANEL, min=1, help="mlp: width of each hidden layer")
]
Layers = Annotated[
    int, typer.Option(rich_help_panel=WORKLOAD_PANEL, min=1, help="mlp: number of hidden layers")
]
TargetAccuracy = Annotated[
    float | None,
    typer.Option(
        rich_help_panel=WORKLOAD_PANEL,
        min=0.0,
        max=1.0,
        help="Log time_to_target_s, the training time to this test accuracy",
    ),
]
Deterministic = Annotated[
    bool,
    typer.Option(
        "--deterministic",
        rich_help_panel=WORKLOAD_PANEL,
        help="cuDNN's deterministic kernels and torch's deterministic algorithms (no "
        "autotuning): runs repeat exactly, some convolutions run slower",
    ),
]
AllowCpuFallback = Annotated[
    bool,
    typer.Option(
        "--allow-cpu-fallback",
        rich_help_panel=WORKLOAD_PANEL,
        help="mps: run operations the MPS back end lacks on the CPU (torch's MPS fallback) "
        "instead of failing; compare flags them",
    ),
]


@dataclass(frozen=True)
class TrainConfig:
    """What `train` does, as its options say."""

    device: str = "auto"
    data: DataSpec = field(default_factory=DataSpec)
    model: str = "mlp"
    hidden: int = 512
    layers: int = 2
    model_options: tuple[tuple[str, str], ...] = ()  # KEY=VALUE for a factory
    precision: str = "fp32"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    loader: str = "tensors"
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    momentum: float = 0.0
    compile: str = "none"  # a torch.compile mode, or none
    workers: int = 0  # DataLoader workers
    pin_memory: bool = False
    patch: int | None = None  # vit's patch side; None: the largest divisor of the side <= 8
    target_accuracy: float | None = None
    system_metrics: float = 10.0  # seconds between system-metrics samples; 0: none
    deterministic: bool = False  # cuDNN's deterministic kernels, torch's deterministic algorithms
    profile_batches: int = 20  # training batches profiled after the first epoch; 0: none
    profile_trace: bool = False  # log the profiled window's trace (trace.json)

    @property
    def model_config(self) -> dict:
        """What model.build takes (and what a logged model's config.json holds)."""
        options = {k: number_or_text(v) for k, v in self.model_options}
        return (
            {"model": self.model, "hidden": self.hidden, "layers": self.layers}
            | ({"options": options} if options else {})
            | ({"patch": self.patch} if self.patch else {})
        )


def number_or_text(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def key_values(pairs: list[str] | None) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE options as pairs (typer.BadParameter for one without '=')."""
    out = []
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, not {pair!r}")
        out.append((key, value))
    return tuple(out)


@dataclass(frozen=True)
class RunTarget:
    """Where a run is logged."""

    experiment: str | None = None  # None: MLFLOW_EXPERIMENT_ID (mlflow run's), else Default
    tracking_uri: str | None = None
    run_name: str | None = None
    host: str | None = None  # None: this machine's host name
    parent_run_id: str | None = None  # a sweep's parent run
    register_model: str | None = None  # a registered model to add the trained model to


# What a workload is, whoever launched it: the fields of the params `train` resolves (the data
# set and its sizes as loaded, the model with its resolved shape, precision, optimizer, batch
# size, lr, epochs, seed, loader). `mlflow run` logs its -P values first, defaults included
# (`model=mlp`, `hidden=512` for a cnn, `device=auto`), and MLflow keeps a param's first value,
# so runs are grouped by this, recorded as the tag pipeline.workload, not by their params.
WORKLOAD = (
    Params.DATASET,
    Params.TRAIN_SIZE,
    Params.TEST_SIZE,
    Params.MODEL,
    Params.MODEL_OPTIONS,
    Params.PRECISION,
    Params.OPTIMIZER,
    Params.BATCH_SIZE,
    Params.LR,
    Params.EPOCHS,
    Params.SEED,
    Params.LOADER,
    Params.INPUT_SHAPE,
    Params.NUM_CLASSES,
    Params.PATCH,
    Params.SHUFFLE,
    Params.WEIGHT_DECAY,
    Params.MOMENTUM,
    Params.COMPILE,
    Params.WORKERS,
    Params.PIN_MEMORY,
)
# The values the keys added later had in every run recorded before them: a workload at these
# leaves the key out of its tag, so that it groups with those runs (a new key splits nothing).
WORKLOAD_DEFAULTS = {
    Params.INPUT_SHAPE: "1x28x28",
    Params.NUM_CLASSES: "10",
    Params.PATCH: "7",
    Params.SHUFFLE: "false",
    Params.WEIGHT_DECAY: "0.0",
    Params.MOMENTUM: "0.0",
    Params.COMPILE: "none",
    Params.WORKERS: "0",
    Params.PIN_MEMORY: "false",
}


def workload(params: Mapping[str, object]) -> str:
    """The tag pipeline.workload of a run with these resolved params: JSON, keys sorted."""
    found = {k: str(params[k]) for k in WORKLOAD if k in params}
    found = {k: v for k, v in found.items() if WORKLOAD_DEFAULTS.get(k) != v}
    return json.dumps(found, sort_keys=True, separators=(",", ":"))


def train_config(options: dict) -> TrainConfig:
    """The configuration from `train`'s options (as Typer parsed and checked them)."""
    o = options
    return TrainConfig(
        device=o["device"],
        data=data_spec(o),
        model=o["model"],
        hidden=o["hidden"],
        layers=o["layers"],
        model_options=key_values(o["model_option"]),
        precision=o["precision"],
        epochs=o["epochs"],
        batch_size=o["batch_size"],
        lr=o["lr"],
        seed=o["seed"],
        loader=o["loader"],
        optimizer=o["optimizer"],
        weight_decay=o["weight_decay"],
        momentum=o["momentum"],
        compile=o["compile"],
        workers=o["workers"],
        pin_memory=o["pin_memory"],
        patch=o["patch"],
        target_accuracy=o["target_accuracy"],
        system_metrics=o["system_metrics"] and o["system_metrics_interval"],
        deterministic=o["deterministic"],
        profile_batches=o["profile_batches"],
        profile_trace=o["profile_trace"],
    )


def train_args(cfg: TrainConfig) -> list[str]:
    """The `train` options that give back `cfg` (train_config's inverse)."""
    args = {
        "--device": cfg.device,
        "--dataset": cfg.data.name,
        "--data-dir": str(cfg.data.data_dir),
        "--train-size": cfg.data.train_size,
        "--test-size": cfg.data.test_size,
        "--model": cfg.model,
        "--precision": cfg.precision,
        "--hidden": cfg.hidden,
        "--layers": cfg.layers,
        "--epochs": cfg.epochs,
        "--batch-size": cfg.batch_size,
        "--lr": repr(cfg.lr),
        "--seed": cfg.seed,
        "--loader": cfg.loader,
        "--input-shape": "x".join(map(str, cfg.data.input_shape or ())) or None,
        "--classes": cfg.data.num_classes,
        "--optimizer": cfg.optimizer,
        "--weight-decay": repr(cfg.weight_decay),
        "--momentum": repr(cfg.momentum),
        "--compile": cfg.compile,
        "--workers": cfg.workers,
        "--patch": cfg.patch,
        "--target-accuracy": cfg.target_accuracy,
        "--profile-batches": cfg.profile_batches,
    }
    out = [a for k, v in args.items() if v is not None for a in (k, str(v))]
    out += [a for k, v in cfg.model_options for a in ("--model-option", f"{k}={v}")]
    out += ["--shuffle" if cfg.data.shuffle else "--no-shuffle"]
    out += ["--pin-memory"] if cfg.pin_memory else []
    out += ["--deterministic"] if cfg.deterministic else []
    out += ["--profile-trace"] if cfg.profile_trace else []
    if cfg.system_metrics:
        return [*out, "--system-metrics-interval", repr(cfg.system_metrics)]
    return [*out, "--no-system-metrics"]
