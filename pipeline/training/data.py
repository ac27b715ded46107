"""Data sets (through torchvision) and the two ways of feeding batches to a device."""

import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import ToTensor

from pipeline.config import DataSpec
from pipeline.errors import UserError

NUM_CLASSES = 10


class SyntheticFashionMNIST(datasets.FashionMNIST):
    """FashionMNIST's loader pointed at generated IDX files; it never downloads."""

    mirrors: ClassVar[list[str]] = []


TORCHVISION = {
    "fashion-mnist": datasets.FashionMNIST,
    "mnist": datasets.MNIST,
    "synthetic": SyntheticFashionMNIST,
}


def load(spec: DataSpec, train: bool, transform=None) -> torch.utils.data.Dataset:
    """One split as a torchvision data set (downloaded or generated when missing)."""
    size = spec.train_size if train else spec.test_size
    if spec.name == "synthetic":
        root = write_synthetic(
            spec.data_dir, spec.seed, spec.train_size or 60_000, spec.test_size or 10_000
        )
        return _open(SyntheticFashionMNIST, root, train, transform, download=False)
    dataset = _open(TORCHVISION[spec.name], spec.data_dir, train, transform, download=True)
    if size is not None and size < len(dataset):
        dataset = Subset(dataset, range(size))
    return dataset


def _open(cls, root: Path, train: bool, transform, download: bool):
    try:
        return cls(root=str(root), train=train, transform=transform, download=download)
    except OSError as e:
        raise UserError(f"cannot write to data folder {root}: {e.strerror or e}") from None
    except RuntimeError as e:
        if "download" in str(e).lower() or "not found" in str(e).lower():
            raise UserError(
                f"could not download {cls.__name__} into {root} (no internet?); either pass "
                f"--data-dir pointing to a folder holding {cls.__name__}/raw/ in torchvision's "
                "layout, or use --dataset synthetic"
            ) from None
        raise UserError(f"corrupt or truncated IDX file under {root}: {e}") from None
    except (AssertionError, ValueError, IndexError, EOFError) as e:
        reason = str(e) or type(e).__name__
        raise UserError(f"corrupt or truncated IDX file under {root}: {reason}") from None


def as_tensors(dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as (images N×1×28×28 uint8, labels N) on the device.

    Kept as bytes (a quarter of the memory of floats); TensorBatches scales each batch.
    """
    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, list(dataset.indices)
    images, labels = dataset.data, dataset.targets
    if indices is not None:
        images, labels = images[indices], labels[indices]
    return images.to(device).unsqueeze(1), labels.to(device)


# ToTensor's own arithmetic on the CPU, byte by byte: the values every device must see.
BYTE_TO_FLOAT = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)
_tables: dict[torch.device, torch.Tensor] = {}


def to_float(x: torch.Tensor, table: bool | None = None) -> torch.Tensor:
    """uint8 images as ToTensor's floats in [0, 1], bit for bit on every device: on the CPU by
    ToTensor's own arithmetic (a division by 255); elsewhere by looking each byte up in
    BYTE_TO_FLOAT, since a GPU divides by a scalar as a multiplication by its reciprocal,
    one ulp off for 126 of the 256 values. `table` picks the lookup (True) or the division
    (False) on any device: the tests run the accelerators' path on the CPU."""
    if table is None:
        table = x.device.type != "cpu"
    if not table:
        return x.float().div_(255)
    if x.device not in _tables:
        _tables[x.device] = BYTE_TO_FLOAT.to(x.device)
    return torch.take(_tables[x.device], x.long())


class TensorBatches:
    """Batches sliced from tensors already on the device: no host work per batch.

    Images stored as uint8 are scaled to [0, 1] per batch, on the device (to_float): exactly
    the values ToTensor gives.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.y), self.batch_size):
            x = self.x[i : i + self.batch_size]
            yield (to_float(x) if x.dtype == torch.uint8 else x), self.y[i : i + self.batch_size]

    def with_cpu_inputs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(batch on the device, the same batch made on the CPU from the same bytes, labels):
        what the parity probe compares, so that a wrong conversion on the device shows."""
        for i in range(0, len(self.y), self.batch_size):
            x = self.x[i : i + self.batch_size]
            on_cpu = x.cpu()
            if x.dtype == torch.uint8:
                x, on_cpu = to_float(x), to_float(on_cpu)
            yield x, on_cpu, self.y[i : i + self.batch_size]

    @property
    def num_samples(self) -> int:
        return len(self.y)


class LoaderBatches:
    """The quickstart's path: DataLoader + ToTensor on the host, each batch copied to the device."""

    def __init__(self, dataset, batch_size: int, device: torch.device):
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device), y.to(self.device)

    def with_cpu_inputs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(batch on the device, ToTensor's batch on the host, labels)."""
        for x, y in self.loader:
            yield x.to(self.device), x, y.to(self.device)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)


def batches(spec: DataSpec, train: bool, loader: str, batch_size: int, device: torch.device):
    """The batches of one split, in a fixed order (no shuffling), fed the way `loader` says."""
    if loader == "dataloader":
        return LoaderBatches(load(spec, train, transform=ToTensor()), batch_size, device)
    return TensorBatches(*as_tensors(load(spec, train), device), batch_size)


# --- the synthetic data set -------------------------------------------------------------------


def write_synthetic(data_dir: Path, seed: int, train_size: int, test_size: int) -> Path:
    """Write the synthetic data set as IDX files once; return the root torchvision reads from.

    Each class is a smooth 28×28 prototype; each image is its class's prototype, scaled,
    plus heavy noise. The quickstart's MLP learns it gradually (at lr 1e-3, batch 64: test
    accuracy 24% after the first epoch, 87% after the fourth, 99% after the ninth).
    """
    root = Path(data_dir) / f"synthetic-seed{seed}-{train_size}-{test_size}"
    raw = root / SyntheticFashionMNIST.__name__ / "raw"
    files = {
        "train-images-idx3-ubyte": None,
        "train-labels-idx1-ubyte": None,
        "t10k-images-idx3-ubyte": None,
        "t10k-labels-idx1-ubyte": None,
    }
    if all((raw / f).exists() for f in files):
        return root
    rng = np.random.default_rng(seed)
    prototypes = _prototypes(rng)
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for prefix, n in (("train", train_size), ("t10k", test_size)):
            images, labels = _sample(rng, prototypes, n)
            _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
            _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    except OSError as e:
        raise UserError(f"cannot write to data folder {data_dir}: {e.strerror or e}") from None
    return root


def _prototypes(rng: np.random.Generator) -> np.ndarray:
    coarse = rng.random((NUM_CLASSES, 7, 7))
    return np.kron(coarse, np.ones((4, 4)))  # 10 × 28 × 28, blocky shapes in [0, 1]


SAMPLE_CHUNK = 5_000  # images made at once: about 100 MiB of float64 work, whatever n is


def _sample(rng: np.random.Generator, prototypes: np.ndarray, n: int):
    labels = rng.integers(0, NUM_CLASSES, n).astype(np.uint8)
    scale = rng.uniform(0.5, 1.0, (n, 1, 1))
    images = np.empty((n, 28, 28), np.uint8)
    for i in range(0, n, SAMPLE_CHUNK):  # the same numbers as one draw of n × 28 × 28
        j = min(i + SAMPLE_CHUNK, n)
        noise = rng.normal(0.0, 0.8, (j - i, 28, 28))
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
