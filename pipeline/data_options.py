"""The data-set options, defined once (pipeline.config re-exports them): which data set, its
shape and classes, the training order, and how batches reach the device; and the DataSpec the
stages build from them."""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import typer

from pipeline.errors import UserError

DATA_PANEL = "Data"  # the --help panel of these options


def split(value: str, kind: type = str) -> tuple:
    return tuple(kind(v.strip()) for v in value.split(",") if v.strip())


DATASETS = ("fashion-mnist", "mnist", "cifar10", "synthetic")


def dataset_name(value: str) -> str:
    """A data set: one of DATASETS, imagefolder:PATH, or package.module:factory."""
    module, sep, name = value.partition(":")
    if value in DATASETS or (value.startswith("imagefolder:") and len(value) > 12):
        return value
    if sep and module and name and "/" not in module:
        return value
    raise typer.BadParameter(
        f"unknown data set {value!r}: expected one of {', '.join(DATASETS)}, imagefolder:PATH "
        "or package.module:factory"
    )


def dataset_list(value: str) -> str:
    if not split(value):
        raise typer.BadParameter("expected one or more data sets")
    for name in split(value):
        dataset_name(name)
    return value


def shape(value: str | None) -> str | None:
    """CxHxW, e.g. 3x32x32."""
    if value is not None:
        try:
            parts = [int(v) for v in value.lower().split("x")]
        except ValueError:
            parts = []
        if len(parts) != 3 or min(parts) < 1:
            raise typer.BadParameter(f"expected CxHxW, e.g. 3x32x32, not {value!r}")
    return value


def as_shape(value: str | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value.lower().split("x"))


def shuffles_by_default(dataset: str) -> bool:
    """Off for the data sets every earlier run used (in their files' order), on for the others
    (an image folder is sorted by class)."""
    return dataset not in ("fashion-mnist", "mnist", "synthetic")


Dataset = Annotated[
    str,
    typer.Option(
        rich_help_panel=DATA_PANEL,
        callback=dataset_name,
        help="fashion-mnist, mnist, cifar10, synthetic, imagefolder:PATH (PATH/train and "
        "PATH/test, a folder per class) or your own as package.module:factory (a callable "
        "returning (train, test) map-style Datasets of (tensor, label))",
    ),
]
InputShape = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=DATA_PANEL,
        callback=shape,
        help="CxHxW: synthetic's shape; imagefolder: resize and crop to it",
        show_default="synthetic: 1x28x28; imagefolder: the images' own",
    ),
]
Classes = Annotated[
    int | None,
    typer.Option(
        rich_help_panel=DATA_PANEL, min=2, help="synthetic: number of classes", show_default="10"
    ),
]
Shuffle = Annotated[
    bool | None,
    typer.Option(
        rich_help_panel=DATA_PANEL,
        help="Shuffle the training batches, a seeded order that is the same on every device",
        show_default="off for fashion-mnist, mnist and synthetic; on for the others",
    ),
]
DataDir = Annotated[
    Path,
    typer.Option(
        rich_help_panel=DATA_PANEL,
        help="Where data sets are stored or downloaded (torchvision layout)",
    ),
]
TrainSize = Annotated[
    int | None,
    typer.Option(
        rich_help_panel=DATA_PANEL,
        min=1,
        help="Training images",
        show_default="all; synthetic: 60000",
    ),
]
TestSize = Annotated[
    int | None,
    typer.Option(
        rich_help_panel=DATA_PANEL, min=1, help="Test images", show_default="all; synthetic: 10000"
    ),
]
Loader = Annotated[
    Literal["tensors", "dataloader"],
    typer.Option(
        rich_help_panel=DATA_PANEL,
        help="tensors: data held on the device, sliced; dataloader: the quickstart's "
        "DataLoader + ToTensor",
    ),
]
Workers = Annotated[
    int,
    typer.Option(rich_help_panel=DATA_PANEL, min=0, help="--loader dataloader: DataLoader workers"),
]
PinMemory = Annotated[
    bool,
    typer.Option(
        rich_help_panel=DATA_PANEL, help="--loader dataloader: copy batches from pinned host memory"
    ),
]


@dataclass(frozen=True)
class DataSpec:
    name: str = "fashion-mnist"
    data_dir: Path = Path("data")
    seed: int = 0
    train_size: int | None = None  # None: the whole data set (synthetic: 60,000)
    test_size: int | None = None  # None: the whole data set (synthetic: 10,000)
    input_shape: tuple[int, ...] | None = None  # synthetic's shape; an image folder's resize
    num_classes: int | None = None  # synthetic's classes (None: 10)
    shuffle: bool = False  # the training batches in a seeded order (train_config's default)


def data_spec(o: dict) -> DataSpec:
    """The data set from the options (a command's locals): --shuffle's default resolved."""
    shuffle, name = o.get("shuffle"), o["dataset"]
    if o.get("classes") is not None and name != "synthetic":
        raise UserError(f"--classes applies to --dataset synthetic, not {name}")
    if o.get("input_shape") is not None and not name.startswith(("synthetic", "imagefolder:")):
        raise UserError(f"--input-shape applies to synthetic and imagefolder:, not {name}")
    return DataSpec(
        o["dataset"],
        o["data_dir"],
        o["seed"],
        o["train_size"],
        o["test_size"],
        as_shape(o.get("input_shape")),
        o.get("classes"),
        shuffles_by_default(o["dataset"]) if shuffle is None else shuffle,
    )
