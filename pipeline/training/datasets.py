"""The data sets, each read by torchvision: fashion-mnist, mnist and cifar10 (torchvision's own
classes, downloaded and checked by them), `synthetic` of any shape (generated once, written in
the on-disk format users' data of that shape takes), `imagefolder:PATH` (torchvision's
ImageFolder), or `package.module:factory` (a callable returning (train, test) Datasets).

Shape and number of classes are read from the data (`describe`)."""

import functools
import math
import os
import shutil
import struct
import tempfile
import urllib.error
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from pipeline.config import DataSpec
from pipeline.errors import UserError
from pipeline.training.imports import named_callable

DEFAULT_SHAPE = (1, 28, 28)  # the IDX data sets' images, and the synthetic default
DEFAULT_CLASSES = 10
CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}  # image modes kept as they are; others become RGB
MODES = {n: mode for mode, n in CHANNELS.items()}


class SyntheticFashionMNIST(datasets.FashionMNIST):
    """FashionMNIST's loader pointed at generated IDX files; it never downloads."""

    mirrors: ClassVar[list[str]] = []


TORCHVISION = {
    "fashion-mnist": datasets.FashionMNIST,
    "mnist": datasets.MNIST,
    "cifar10": datasets.CIFAR10,
}


def load(spec: DataSpec, train: bool, transform=None) -> Dataset:
    """One split as a torchvision data set (downloaded or generated when missing). Without a
    transform, images stay bytes: IDX and CIFAR data sets as loaded, image folders as uint8
    tensors; with one (ToTensor), each item as that transform gives it."""
    size = spec.train_size if train else spec.test_size
    if spec.name == "synthetic":
        dataset = _synthetic(spec, train, transform)
    elif spec.name in TORCHVISION:
        dataset = _open(TORCHVISION[spec.name], spec.data_dir, train, transform, download=True)
    elif spec.name.startswith("imagefolder:"):
        dataset = _image_folder(Path(spec.name.removeprefix("imagefolder:")), train, spec)
        dataset.transform = _image_transform(spec.input_shape, transform)
    else:
        dataset = _factory_splits(spec.name)[0 if train else 1]
    if size is not None and size < len(dataset):
        dataset = Subset(dataset, range(size))
    return dataset


def shuffles_by_default(name: str) -> bool:
    """Off for the data sets every run recorded so far used (in their files' order), on for
    the others (an image folder is sorted by class)."""
    return name not in ("fashion-mnist", "mnist", "synthetic")


def _open(cls, root: Path, train: bool, transform, download: bool):
    try:
        return cls(root=str(root), train=train, transform=transform, download=download)
    except urllib.error.URLError:
        raise _no_download(cls, root) from None
    except OSError as e:
        raise UserError(f"cannot write to data folder {root}: {e.strerror or e}") from None
    except RuntimeError as e:
        if "download" in str(e).lower() or "not found" in str(e).lower():
            raise _no_download(cls, root) from None
        raise UserError(f"corrupt or truncated {_files(cls)} under {root}: {e}") from None
    except (AssertionError, ValueError, IndexError, EOFError) as e:
        reason = str(e) or type(e).__name__
        raise UserError(f"corrupt or truncated {_files(cls)} under {root}: {reason}") from None


def _files(cls) -> str:
    return "IDX file" if issubclass(cls, datasets.MNIST) else f"{cls.__name__} file"


def _no_download(cls, root: Path) -> UserError:
    return UserError(
        f"could not download {cls.__name__} into {root} (no internet?); either pass "
        f"--data-dir pointing to a folder holding {cls.__name__} in torchvision's layout, or "
        "use --dataset synthetic"
    )


# --- image folders ----------------------------------------------------------------------------


def image(path: str) -> Image.Image:
    """An image as stored: greyscale, RGB and RGBA keep their channels; other modes become RGB."""
    with Image.open(path) as img:
        return img.copy() if img.mode in CHANNELS else img.convert("RGB")


def _image_folder(root: Path, train: bool, spec: DataSpec) -> datasets.ImageFolder:
    """PATH/train and PATH/test (or PATH/val), each a folder per class, as ImageFolder reads them;
    without --input-shape, every image must have the same size and channels."""
    where = f"imagefolder:{root}"
    if not root.is_dir():
        raise UserError(f"{where}: no such folder")
    names = ("train",) if train else ("test", "val")
    split = next((root / n for n in names if (root / n).is_dir()), None)
    if split is None:
        raise UserError(
            f"{where}: expected {root}/train and {root}/test (or val), a folder per class"
        )
    try:
        folder = datasets.ImageFolder(str(split), loader=image)
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"{where}: {e}") from None
    if spec.input_shape is None:
        kinds = set()
        for path, _ in folder.samples:
            try:
                with Image.open(path) as img:
                    kinds.add((CHANNELS.get(img.mode, 3), *reversed(img.size)))
            except OSError as e:
                raise UserError(f"{where}: cannot read {path}: {e}") from None
        if len(kinds) > 1:
            shapes = ", ".join(sorted("x".join(map(str, k)) for k in kinds)[:3])
            raise UserError(f"{where}: images of mixed shapes ({shapes}); pass --input-shape")
    return folder


def _image_transform(shape: tuple[int, ...] | None, transform):
    """Resized (shorter side) and centre-cropped to `shape` when given; as bytes or `transform`."""
    steps = []
    if shape is not None:
        channels, height, width = shape
        steps += [
            lambda img: img.convert(MODES[channels]),
            transforms.Resize(min(height, width)),
            transforms.CenterCrop((height, width)),
        ]
    return transforms.Compose([*steps, transform or transforms.PILToTensor()])


# --- a factory --------------------------------------------------------------------------------


@functools.cache
def _factory_splits(reference: str) -> tuple[Dataset, Dataset]:
    """(train, test) from the user's factory, checked: map-style data sets of (tensor, label)."""
    make = named_callable(reference, "data set")
    try:
        splits = make()
    except Exception as e:
        raise UserError(f"data set '{reference}' could not be built: {e}") from None
    if not (isinstance(splits, tuple | list) and len(splits) == 2):
        raise UserError(f"data set '{reference}': the factory must return (train, test)")
    for split in splits:
        if not (hasattr(split, "__getitem__") and hasattr(split, "__len__")) or not len(split):
            got = type(split).__name__
            raise UserError(f"data set '{reference}': {got} is not a non-empty map-style Dataset")
        item = split[0]
        if not (
            isinstance(item, tuple | list)
            and len(item) == 2
            and isinstance(item[0], torch.Tensor)
            and isinstance(item[1], int | torch.Tensor)
        ):
            raise UserError(
                f"data set '{reference}': items must be (tensor, label), not {item!r:.80}"
            )
    return tuple(splits)


# --- the synthetic data set -------------------------------------------------------------------


def _synthetic(spec: DataSpec, train: bool, transform) -> Dataset:
    shape = spec.input_shape or DEFAULT_SHAPE
    classes = spec.num_classes or DEFAULT_CLASSES
    sizes = spec.train_size or 60_000, spec.test_size or 10_000
    if shape == DEFAULT_SHAPE:
        root = write_synthetic(spec.data_dir, spec.seed, *sizes, classes)
        return _open(SyntheticFashionMNIST, root, train, transform, download=False)
    if shape[0] not in MODES:
        raise UserError(
            f"--input-shape {'x'.join(map(str, shape))}: synthetic images are written as PNG, "
            "which holds 1, 3 or 4 channels"
        )
    root = write_synthetic_folder(spec.data_dir, spec.seed, *sizes, classes, shape)
    folder = datasets.ImageFolder(str(root / ("train" if train else "test")), loader=image)
    folder.transform = transform or transforms.PILToTensor()
    return folder


def write_synthetic(
    data_dir: Path, seed: int, train_size: int, test_size: int, classes: int = DEFAULT_CLASSES
) -> Path:
    """Write the 1×28×28 synthetic data set as IDX files once; return the root torchvision reads.

    Each class is a smooth prototype; each image is its class's prototype, scaled, plus heavy
    noise. The quickstart's MLP learns it gradually (at lr 1e-3, batch 64: test accuracy 24%
    after the first epoch, 87% after the fourth, 99% after the ninth).
    """
    if classes > 256:
        raise UserError("--classes: an IDX label is one byte, at most 256 classes at 1x28x28")
    suffix = "" if classes == DEFAULT_CLASSES else f"-c{classes}"
    root = Path(data_dir) / f"synthetic-seed{seed}-{train_size}-{test_size}{suffix}"
    raw = root / SyntheticFashionMNIST.__name__ / "raw"
    files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    files += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if all((raw / f).exists() for f in files):
        return root
    rng = np.random.default_rng(seed)
    prototypes = _prototypes(rng, classes, DEFAULT_SHAPE)
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for prefix, n in (("train", train_size), ("t10k", test_size)):
            images, labels = _sample(rng, prototypes, n)
            _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:, 0])
            _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    except OSError as e:
        raise UserError(f"cannot write to data folder {data_dir}: {e.strerror or e}") from None
    return root


def write_synthetic_folder(
    data_dir: Path, seed: int, train_size: int, test_size: int, classes: int, shape: tuple
) -> Path:
    """The synthetic data set of another shape, as an image folder of PNGs (train/ and test/,
    a folder per class), written once by the same generator; return its root."""
    name = f"synthetic-seed{seed}-{train_size}-{test_size}-{'x'.join(map(str, shape))}-c{classes}"
    root = Path(data_dir) / name
    if root.is_dir():
        return root
    rng = np.random.default_rng(seed)
    prototypes = _prototypes(rng, classes, shape)
    digits = len(str(classes - 1))
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix=".writing-"))
        for split, n in (("train", train_size), ("test", test_size)):
            images, labels = _sample(rng, prototypes, n)
            for c in range(classes):  # every class has its folder, even if no image drew it
                (tmp / split / f"{c:0{digits}d}").mkdir(parents=True)
            for i, (img, label) in enumerate(zip(images, labels, strict=True)):
                pixels = img[0] if shape[0] == 1 else img.transpose(1, 2, 0)
                path = tmp / split / f"{label:0{digits}d}" / f"{i:06d}.png"
                Image.fromarray(pixels, MODES[shape[0]]).save(path)
        try:
            os.rename(tmp, root)  # whole or not at all: a concurrent run never reads half of it
        except OSError:
            shutil.rmtree(tmp)  # another process wrote it first
    except OSError as e:
        raise UserError(f"cannot write to data folder {data_dir}: {e.strerror or e}") from None
    return root


def _prototypes(rng: np.random.Generator, classes: int, shape: tuple) -> np.ndarray:
    """classes × C × H × W blocky shapes in [0, 1] (4×4 blocks)."""
    channels, height, width = shape
    coarse = rng.random((classes, channels, math.ceil(height / 4), math.ceil(width / 4)))
    return np.kron(coarse, np.ones((1, 1, 4, 4)))[:, :, :height, :width]


SAMPLE_CHUNK = 5_000  # images made at once: about 100 MiB of float64 work at 1×28×28


def _sample(rng: np.random.Generator, prototypes: np.ndarray, n: int):
    labels = rng.integers(0, len(prototypes), n)
    scale = rng.uniform(0.5, 1.0, (n, 1, 1, 1))
    images = np.empty((n, *prototypes.shape[1:]), np.uint8)
    for i in range(0, n, SAMPLE_CHUNK):  # the same numbers as one draw of n images
        j = min(i + SAMPLE_CHUNK, n)
        noise = rng.normal(0.0, 0.8, (j - i, *prototypes.shape[1:]))
        images[i:j] = (np.clip(prototypes[labels[i:j]] * scale[i:j] + noise, 0, 1) * 255).round()
    return images, labels


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format (as in the MNIST files): magic (0, 0, type 0x08 = ubyte, ndim), dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    # Write to a temporary name and rename: concurrent runs never read a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(array).data)
    os.replace(tmp, path)
