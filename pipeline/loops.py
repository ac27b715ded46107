"""The train and test loops, with honest timers and no host synchronisation per batch."""

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from pipeline import devices
from pipeline.devices import Precision


class LossBuffer:
    """Per-batch losses kept on the device; read back to the host only when drained."""

    def __init__(self, capacity: int, device: torch.device):
        self.values = torch.empty(capacity, device=device)
        self.count = 0
        self.next_step = 0  # global batch index of the next value drained

    def add(self, loss: torch.Tensor) -> None:
        self.values[self.count] = loss.detach()  # a device-side copy, no sync
        self.count += 1

    def drain(self) -> tuple[int, list[float]]:
        """(global step of the first value, values) since the last drain; one sync."""
        start, values = self.next_step, self.values[: self.count].tolist()
        self.next_step += self.count
        self.count = 0
        return start, values


def train_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    losses: LossBuffer,
    on_batch: Callable[[], None] = lambda: None,
    precision: Precision | None = None,
) -> None:
    model.train()
    precision = precision or Precision("fp32", torch.device("cpu"))
    loss_fn = nn.functional.cross_entropy
    for x, y in batches:
        with precision.autocast():
            loss = loss_fn(model(x), y)
        precision.step(loss, optimizer)
        losses.add(loss)
        on_batch()


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable, precision: Precision | None = None
) -> tuple[float, float]:
    """(mean of the batches' losses, fraction correct), as the quickstart computes them."""
    model.eval()
    autocast = precision.autocast if precision else contextlib.nullcontext
    loss_sum, correct, samples, num_batches = 0.0, 0, 0, 0
    for x, y in batches:
        with autocast():
            logits = model(x)
            loss_sum = loss_sum + nn.functional.cross_entropy(logits, y)
        correct = correct + (logits.argmax(1) == y).sum()
        samples += len(y)
        num_batches += 1
    return float(loss_sum) / num_batches, int(correct) / samples


@dataclass
class Epoch:
    epoch: int  # from 1
    train_time_s: float
    eval_time_s: float
    test_loss: float
    test_accuracy: float

    @property
    def time_s(self) -> float:
        return self.train_time_s + self.eval_time_s


def optimizer(params, lr: float) -> torch.optim.Optimizer:
    """The optimizer `train` builds: the quickstart's SGD, with torch's own choice of
    implementation for the device the parameters are on (doctor checks the same)."""
    return torch.optim.SGD(params, lr=lr)


def fit(
    model: nn.Module,
    train_batches: Iterable,
    test_batches: Iterable,
    epochs: int,
    lr: float,
    device: torch.device,
    losses: LossBuffer,
    on_batch: Callable[[], None] = lambda: None,
    precision: Precision | None = None,
) -> Iterator[Epoch]:
    """Train for `epochs`, testing after each; yield each epoch's figures.

    The device is synchronised before every clock read, so times include all queued work.
    Per-batch losses go into `losses`; the caller drains them (after each epoch, or when
    interrupted).
    """
    opt = optimizer(model.parameters(), lr)
    for epoch in range(1, epochs + 1):
        devices.synchronize(device)
        t0 = time.perf_counter()
        train_epoch(model, train_batches, opt, losses, on_batch, precision)
        devices.synchronize(device)
        t1 = time.perf_counter()
        test_loss, test_accuracy = evaluate(model, test_batches, precision)
        devices.synchronize(device)
        t2 = time.perf_counter()
        yield Epoch(epoch, t1 - t0, t2 - t1, test_loss, test_accuracy)


PARITY_BATCHES = 10


@torch.no_grad()
def parity(
    device_model: nn.Module,
    cpu_model: nn.Module,
    batches: Iterable,
    num_batches: int = PARITY_BATCHES,
    precision: Precision | None = None,
) -> tuple[float, float]:
    """Same weights, same inputs, on the device (in its precision) and on the CPU (in fp32).

    Returns (largest absolute logit difference, fraction of inputs whose argmax agrees). The
    argmax of each side is taken on its own device, so a broken argmax shows up too.
    """
    device_model.eval()
    cpu_model.eval()
    autocast = precision.autocast if precision else contextlib.nullcontext
    max_diff, agree, total = 0.0, 0, 0
    for x, _ in itertools.islice(batches, num_batches):
        with autocast():
            on_device = device_model(x).float()
        on_cpu = cpu_model(x.cpu())
        max_diff = max(max_diff, float((on_device.cpu() - on_cpu).abs().max()))
        agree += int((on_device.argmax(1).cpu() == on_cpu.argmax(1)).sum())
        total += len(x)
    return max_diff, agree / total
