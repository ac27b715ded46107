"""The train and test loops, with honest timers and no host synchronisation per batch."""

import contextlib
import copy
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from pipeline import devices
from pipeline.devices import Precision
from pipeline.errors import UserError


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


@torch.no_grad()
def warm_up(model: nn.Module, batches: Iterable, precision: Precision | None = None) -> None:
    """One untimed evaluation batch: the one-time costs of the evaluation path (cuBLAS and
    cuDNN set-up, Metal shader compilation) fall outside the timed evaluation."""
    model.eval()
    autocast = precision.autocast if precision else contextlib.nullcontext
    for x, _ in itertools.islice(batches, 1):
        with autocast():
            model(x)


def timed_evaluation(
    model: nn.Module, batches: Iterable, device: torch.device, precision: Precision | None = None
) -> tuple[float, float, float, float]:
    """(test loss, accuracy, warm-up seconds, evaluation seconds): a warm-up batch, then the
    evaluation, each timed between device synchronisations."""
    devices.synchronize(device)
    t0 = time.perf_counter()
    warm_up(model, batches, precision)
    devices.synchronize(device)
    t1 = time.perf_counter()
    loss, accuracy = evaluate(model, batches, precision)
    devices.synchronize(device)
    return loss, accuracy, t1 - t0, time.perf_counter() - t1


@dataclass
class Epoch:
    epoch: int  # from 1
    train_time_s: float
    eval_time_s: float
    test_loss: float
    test_accuracy: float
    warm_up_s: float = 0.0  # the first epoch's untimed evaluation batch
    compile_s: float = 0.0  # compiled, the first epoch: the compilation before it (warm_compiled)

    @property
    def time_s(self) -> float:
        return self.train_time_s + self.warm_up_s + self.eval_time_s


def optimizer(
    params,
    lr: float,
    device: torch.device | None = None,
    name: str = "sgd",
    weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """The optimizer `train` builds: SGD (the quickstart's) or AdamW; on CUDA torch's fused
    kernel (one launch for all parameters, and a GradScaler that needs no host
    synchronisation per step); elsewhere torch's own choice for the device."""
    fused = True if device is not None and device.type == "cuda" else None
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """The model as `--compile` says: itself (none) or torch.compile's module in that mode,
    sharing its parameters (compilation happens at the first call of each graph)."""
    return model if mode == "none" else torch.compile(model, mode=mode)


def check_compile(mode: str, device: torch.device) -> None:
    """UserError (one line) when torch.compile cannot compile for the device here: tried on a
    tiny function before anything is logged."""
    if mode == "none":
        return
    try:
        torch.compile(lambda x: x * 2 + 1, mode=mode)(torch.ones(4, device=device))
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"--compile {mode}: torch.compile does not work on {device}: {reason}"
        ) from None


def shapes_of(batches: Iterable) -> list:
    """One batch of each shape a split gives: its first batch and, when the last batch is
    smaller, the first cut to that size (the shape, dtype and layout the last one has)."""
    first = next(iter(batches), None)
    if first is None:
        return []
    x, y = first
    total = getattr(batches, "num_samples", None)
    if total is None:
        total = sum(len(labels) for _, labels in batches)
    last = total % len(y) if total > len(y) else 0
    return [first] + ([(x[:last], y[:last])] if last else [])


def to_host(state):
    """A copy of a state (dicts, lists and tuples of tensors and values), its tensors on the
    host."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: to_host(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(to_host(v) for v in state)
    return copy.deepcopy(state)


def warm_compiled(
    runner: nn.Module,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train_batches: Iterable,
    test_batches: Iterable,
    device: torch.device,
    precision: Precision | None = None,
) -> float:
    """Compile before the first epoch, timed on its own between device synchronisations: a
    training step on each batch shape of the training split (a full batch and the last,
    partial one) and an evaluation batch of each shape of the test split, so that no
    compilation, the partial batch's recompile included, falls inside an epoch. The weights,
    buffers, optimizer and gradient-scaler state and random state are then put back: the run
    trains from where an eager run starts. Returns the seconds."""
    precision = precision or Precision("fp32", torch.device("cpu"))
    # Kept on the host: a copy on the device could be what runs it out of memory.
    saved = to_host((model.state_dict(), opt.state_dict()))
    scaler = precision.scaler.state_dict() if precision.scaler is not None else None
    forked = [] if device.type == "cpu" else [device.index or 0]

    def random_state_kept():
        return torch.random.fork_rng(forked, device_type=device.type if forked else None)

    with random_state_kept():  # read before the clock starts: loading is not compilation
        train_shapes, test_shapes = shapes_of(train_batches), shapes_of(test_batches)
    devices.synchronize(device)
    t0 = time.perf_counter()
    with random_state_kept():
        train_epoch(runner, train_shapes, opt, LossBuffer(2, device), precision=precision)
        evaluate(runner, test_shapes, precision)
    devices.synchronize(device)
    seconds = time.perf_counter() - t0
    model.load_state_dict(saved[0])
    opt.load_state_dict(saved[1])
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        precision.scaler.load_state_dict(scaler)
    return seconds


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
    optimizer_options: dict | None = None,
    compile_mode: str = "none",
    on_epoch_start: Callable[[], None] = lambda: None,
) -> Iterator[Epoch]:
    """Train for `epochs`, testing after each; yield each epoch's figures.

    The device is synchronised before every clock read, so times include all queued work.
    Per-batch losses go into `losses`; the caller drains them (after each epoch, or when
    interrupted). Shuffled batches are told their epoch (set_epoch). Compiled, compilation
    comes first, timed apart (warm_compiled): the first epoch's compile_s. `on_epoch_start`
    is called just before each epoch's clock starts.
    """
    opt = optimizer(model.parameters(), lr, device, **(optimizer_options or {}))
    runner = compiled(model, compile_mode)
    compile_s = 0.0
    if compile_mode != "none":
        compile_s = warm_compiled(
            runner, model, opt, train_batches, test_batches, device, precision
        )
    for epoch in range(1, epochs + 1):
        if hasattr(train_batches, "set_epoch"):
            train_batches.set_epoch(epoch)
        on_epoch_start()
        devices.synchronize(device)
        t0 = time.perf_counter()
        train_epoch(runner, train_batches, opt, losses, on_batch, precision)
        devices.synchronize(device)
        t1 = time.perf_counter()
        if epoch == 1:  # the cold costs stay in the first epoch's time, not eval_time_s
            loss, accuracy, warm, evaluation = timed_evaluation(
                runner, test_batches, device, precision
            )
            yield Epoch(epoch, t1 - t0, evaluation, loss, accuracy, warm, compile_s)
            continue
        loss, accuracy = evaluate(runner, test_batches, precision)
        devices.synchronize(device)
        yield Epoch(epoch, t1 - t0, time.perf_counter() - t1, loss, accuracy)


PARITY_BATCHES = 10


@dataclass
class Parity:
    max_abs_logit_diff: float
    argmax_agreement: float  # fraction of inputs whose argmax agrees
    input_mismatch: float  # fraction of input values that differ between the two sides


@torch.no_grad()
def parity(
    device_model: nn.Module,
    cpu_model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    num_batches: int = PARITY_BATCHES,
    precision: Precision | None = None,
) -> Parity:
    """Same weights, same bytes, on the device (in its precision) and on the CPU (in fp32):
    `batches` gives each batch as the device made it and as the CPU makes it from the same
    source, so a device that converts the images wrongly shows in `input_mismatch` (which
    must be 0: the conversion is exact) and in the logits. The argmax of each side is taken
    on its own device, so a broken argmax shows up too."""
    device_model.eval()
    cpu_model.eval()
    autocast = precision.autocast if precision else contextlib.nullcontext
    max_diff, agree, total, mismatched, values = 0.0, 0, 0, 0, 0
    for x, x_cpu, _ in itertools.islice(batches, num_batches):
        mismatched += int((x.cpu() != x_cpu).sum())
        values += x_cpu.numel()
        with autocast():
            on_device = device_model(x).float()
        on_cpu = cpu_model(x_cpu)
        max_diff = max(max_diff, float((on_device.cpu() - on_cpu).abs().max()))
        agree += int((on_device.argmax(1).cpu() == on_cpu.argmax(1)).sum())
        total += len(x)
    return Parity(max_diff, agree / total, mismatched / values)
