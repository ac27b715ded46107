"""The data-set options, defined once (pipeline.config re-exports them): which data set, its
shape and classes, the training order, and how batches reach the device; and the DataSpec the
stages build from them."""

from dataclasses import dataclass, replace
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
        "--pin-memory",
        rich_help_panel=DATA_PANEL,
        help="--loader dataloader: copy batches from pinned host memory",
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


def takes_shape(name: str) -> bool:
    """Whether --input-shape means something for the data set: synthetic's shape, an image
    folder's resize. --classes means something for synthetic alone."""
    return name == "synthetic" or name.startswith("imagefolder:")


def data_spec(o: dict, names: tuple[str, ...] = ()) -> DataSpec:
    """The data set from the options (a command's locals): --shuffle's default resolved. A
    sweep's data sets (`names`): the first, --classes and --input-shape refused only when
    none of them takes it (for_dataset gives each its own)."""
    shuffle, names = o.get("shuffle"), names or (o["dataset"],)
    name = ", ".join(names)
    if o.get("classes") is not None and "synthetic" not in names:
        raise UserError(f"--classes applies to --dataset synthetic, not {name}")
    if o.get("input_shape") is not None and not any(map(takes_shape, names)):
        raise UserError(f"--input-shape applies to synthetic and imagefolder:, not {name}")
    return DataSpec(
        names[0],
        o["data_dir"],
        o["seed"],
        o["train_size"],
        o["test_size"],
        as_shape(o.get("input_shape")),
        o.get("classes"),
        shuffles_by_default(names[0]) if shuffle is None else shuffle,
    )


def for_dataset(spec: DataSpec, name: str) -> DataSpec:
    """The spec for one of a sweep's data sets, in its default order, with --input-shape and
    --classes where they apply to it: every other data set's shape and classes are read from
    its data."""
    return replace(
        spec,
        name=name,
        shuffle=shuffles_by_default(name),
        input_shape=spec.input_shape if takes_shape(name) else None,
        num_classes=spec.num_classes if name == "synthetic" else None,
    )
