"""The two ways of feeding a data set's batches to a device (the data sets: datasets.py), in a
seeded order that is the same on every device."""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import ToTensor

from pipeline.config import DataSpec
from pipeline.errors import UserError
from pipeline.training.datasets import (
    DEFAULT_CLASSES,
    DEFAULT_SHAPE,
    SyntheticFashionMNIST,
    load,
    write_synthetic,
)

__all__ = ["DataSpec", "SyntheticFashionMNIST", "batches", "load", "write_synthetic"]


def host_tensors(dataset: Dataset, stored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split on the host as (images N×C×H×W, labels N): IDX and CIFAR files as their
    bytes (`stored`: whatever transform the data set has), other data sets item by item
    (image folders as bytes, factories as they give)."""
    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, list(dataset.indices)
    data = getattr(dataset, "data", None)
    untransformed = stored or getattr(dataset, "transform", 0) is None
    if isinstance(data, torch.Tensor | np.ndarray) and untransformed:
        images = torch.as_tensor(data)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        labels = torch.as_tensor(dataset.targets)
        if indices is not None:
            images, labels = images[indices], labels[indices]
        return images.contiguous(), labels
    items = [dataset[i] for i in (indices if indices is not None else range(len(dataset)))]
    shapes = {tuple(x.shape) for x, _ in items}
    if len(shapes) > 1:
        listed = ", ".join(sorted("x".join(map(str, s)) for s in shapes)[:3])
        raise UserError(f"the data set's images have mixed shapes ({listed})")
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def free_memory(device: torch.device) -> int | None:
    """Bytes the device can still hold, where torch says (cuda, mps); None elsewhere."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    return None


def as_tensors(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as (images, labels) on the device. Image bytes stay bytes (a quarter of the
    memory of floats); TensorBatches scales each batch. UserError, before any image is read
    beyond the first, when it does not fit."""
    first = dataset[0][0]
    per_image = first.nbytes if isinstance(first, torch.Tensor) else np.asarray(first).nbytes
    free, size = free_memory(device), len(dataset) * (per_image + 8)  # and an int64 label
    if free is not None and size > free:
        raise UserError(
            f"the data set ({size / 2**30:.1f} GiB) does not fit in {device}'s free memory "
            f"({free / 2**30:.1f} GiB) with --loader tensors; use --loader dataloader"
        )
    images, labels = host_tensors(dataset)
    return images.to(device), labels.to(device)


def classes_of(dataset: Dataset, labels: torch.Tensor | None = None) -> int:
    """The number of classes, read from the data: its `classes` where it lists them
    (torchvision's data sets), else the largest label + 1."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if getattr(base, "classes", None):
        return len(base.classes)
    if labels is None:
        labels = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
    return int(labels.max()) + 1


KNOWN = {
    "fashion-mnist": ((1, 28, 28), 10),
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
}


def input_of(spec: DataSpec) -> dict:
    """The data set's image shape and classes (what a model is built for): known for the
    built-in data sets, read from the data for image folders and factories."""
    if spec.name == "synthetic":
        shape, classes = spec.input_shape or DEFAULT_SHAPE, spec.num_classes or DEFAULT_CLASSES
    elif spec.name in KNOWN:
        shape, classes = KNOWN[spec.name]
    else:
        dataset = load(spec, True, transform=ToTensor())
        shape, classes = tuple(dataset[0][0].shape), classes_of(dataset)
    return {"input_shape": list(shape), "num_classes": classes}


class Order(torch.utils.data.Sampler):
    """The order of one epoch's samples: as stored, or (shuffled) a permutation drawn on the
    CPU from the seed and the epoch, the same on every device and for both loaders."""

    def __init__(self, size: int, shuffle: bool, seed: int):
        self.size, self.shuffle, self.seed, self.epoch = size, shuffle, seed, 1

    def indices(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.size


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
    the values ToTensor gives. Shuffled, each batch is gathered by the epoch's indices.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, order: Order | None = None
    ):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.order = order or Order(len(y), False, 0)

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.order.epoch = epoch

    def _slices(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.order.shuffle:
            for i in range(0, len(self.y), self.batch_size):
                yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
            return
        indices = self.order.indices().to(self.y.device)
        for i in range(0, len(self.y), self.batch_size):
            chosen = indices[i : i + self.batch_size]
            yield self.x[chosen], self.y[chosen]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self._slices():
            yield (to_float(x) if x.dtype == torch.uint8 else x), y

    def with_cpu_inputs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(batch on the device, the same batch made on the CPU from the same bytes, labels):
        what the parity probe compares, so that a wrong conversion on the device shows."""
        for x, y in self._slices():
            on_cpu = x.cpu()
            if x.dtype == torch.uint8:
                x, on_cpu = to_float(x), to_float(on_cpu)
            yield x, on_cpu, y

    @property
    def num_samples(self) -> int:
        return len(self.y)


class LoaderBatches:
    """The quickstart's path: DataLoader + ToTensor on the host (in `workers` processes), each
    batch copied to the device (from pinned memory with `pin_memory`)."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        device: torch.device,
        order: Order | None = None,
        workers: int = 0,
        pin_memory: bool = False,
    ):
        self.order = order or Order(len(dataset), False, 0)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.order,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
        )
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.order.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def with_cpu_inputs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(batch on the device, ToTensor's batch on the host, labels)."""
        for x, y in self.loader:
            yield x.to(self.device), x, y.to(self.device)

    @property
    def num_samples(self) -> int:
        return len(self.loader.dataset)


def batches(
    spec: DataSpec,
    train: bool,
    loader: str,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    pin_memory: bool = False,
):
    """The batches of one split, fed the way `loader` says; the training split in the order
    spec.shuffle says (the test split as stored). Their `input_shape` and `num_classes` are
    read from the data."""
    shuffle = bool(spec.shuffle) and train
    if loader == "dataloader":
        dataset = load(spec, train, transform=ToTensor())
        order = Order(len(dataset), shuffle, spec.seed)
        found = LoaderBatches(dataset, batch_size, device, order, workers, pin_memory)
        found.input_shape, found.num_classes = tuple(dataset[0][0].shape), classes_of(dataset)
        return found
    dataset = load(spec, train)
    x, y = as_tensors(dataset, device)
    found = TensorBatches(x, y, batch_size, Order(len(y), shuffle, spec.seed))
    found.input_shape, found.num_classes = tuple(x.shape[1:]), classes_of(dataset, y)
    return found
