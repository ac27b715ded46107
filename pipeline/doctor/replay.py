"""Your model's own operations: the distinct ATen operations one training step of a workload
executes on the CPU, each replayed on the device from the same inputs as a doctor check.

One step (forward, loss, backward, optimizer step, in the run's precision as `train` runs
it) runs on the CPU under a TorchDispatchMode that keeps, for each distinct (operation,
input shapes, dtypes, strides), a copy of its real inputs taken before the call, with their
layout (a transposed weight stays transposed). Each becomes a Check whose reference is the
CPU running the same operation on the same inputs. Random operations (dropout's bernoulli_,
native_dropout) are listed as skipped: what follows them consumes the recorded mask, so it
is checked; operations whose output is uninitialised memory (empty_like) and those with no
tensor input (constants) are left out. max_pool2d_with_indices's indices are compared through
the values they point at and their windows, not as numbers: among equal values (ReLU's zeros)
a correct device may pick another. Attention is recorded through its math path, whose
parts exist on every device (each device has fused kernels of its own).
"""

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from pipeline import devices
from pipeline.doctor.checks import Check
from pipeline.training import loops, model

UNINITIALISED = {"empty_like", "new_empty", "new_empty_strided", "empty_strided", "empty"}
# Operations that sum many terms, held to test_mps.py's looser bounds (checks.py).
ACCUMULATING = ("conv", "mm", "matmul", "linear", "norm", "attention", "softmax", "sum", "mean",
                "var", "std", "nll_loss", "prod", "dot")  # fmt: skip
BATCH = 64


def snapshot(t: torch.Tensor) -> torch.Tensor:
    """A copy with the same sizes, strides and storage offset."""
    storage = t.untyped_storage().clone()
    flat = torch.empty(0, dtype=t.dtype).set_(storage, 0, (storage.nbytes() // t.element_size(),))
    return flat.as_strided(t.shape, t.stride(), t.storage_offset())


def layout(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "contiguous"
    return "strided " + "x".join(map(str, t.stride()))


class Recorder(TorchDispatchMode):
    """Keeps the first call of each distinct (operation, input signature) with copies of its
    inputs; counts how often each operation ran."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[tuple, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        name = func.name().split("::")[-1].split(".")[0]
        if func.namespace == "aten" and tensors and name not in UNINITIALISED:
            key = (func, *(signature(a) for a in flat))
            if key not in self.calls:
                copies = [snapshot(a) if isinstance(a, torch.Tensor) else a for a in flat]
                self.calls[key] = (func, copies, spec)
        return func(*args, **kwargs)


def signature(value) -> tuple:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.stride())
    return ("value", repr(value))


def record_step(
    config: dict, precision: str, seed: int = 0, optimizer: dict | None = None
) -> list[tuple]:
    """The distinct calls of one training step of the workload on the CPU, on a batch of its
    input shape with its optimizer (loops.optimizer's options), in first-call order:
    (operation, flat arguments with tensor copies, their pytree spec)."""
    cpu = torch.device("cpu")
    net = model.initialised(config, seed, cpu)
    shape, classes = model.input_of(config)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, *shape, generator=generator)
    y = torch.randint(0, classes, (BATCH,), generator=generator)
    optimizer = loops.optimizer(net.parameters(), 1e-3, cpu, **(optimizer or {}))
    run_in = devices.Precision(precision, cpu)
    recorder = Recorder()
    # Attention through its math path: the fused kernels are each device's own (the CPU's
    # would not exist on the device), their parts run everywhere.
    with sdpa_kernel(SDPBackend.MATH), recorder:
        with run_in.context():
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
    return list(recorder.calls.values())


def checks_of(config: dict, precision: str = "fp32", optimizer: dict | None = None) -> list[Check]:
    """A check for each distinct operation call of one training step of the workload."""
    step = f"one training step of {model.describe(config)}"
    return checks_from(record_step(config, precision, optimizer=optimizer), step, precision)


def checks_from(calls: list[tuple], what: str, precision: str = "fp32") -> list[Check]:
    """A check for each recorded call (operation, flat arguments, their spec) of `what`."""
    checks, names = [], set()
    for func, flat, spec in calls:
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        first = tensors[0]
        op_name = f"aten::{func.name().split('::')[-1].split('.')[0]}"
        name = f"{op_name} {shape(first)} {dtype(first)}"
        if not first.is_contiguous():
            name += f" ({layout(first)})"
        if name in names:  # the same first input, other inputs: name them all
            name += " with " + ", ".join(shape(t) for t in tensors[1:])
        if name in names:
            name += f" #{sum(n.startswith(name) for n in names) + 1}"
        names.add(name)
        random = is_random(func, flat, spec)
        checks.append(
            Check(
                name=name,
                family="model",
                shape=", ".join(shape(t) for t in tensors),
                dtype=", ".join(dict.fromkeys(dtype(t) for t in tensors)),
                layout=", ".join(dict.fromkeys(layout(t) for t in tensors)),
                reference=f"{what} ({func.name()})",
                inputs=_inputs(tensors),
                op=_op(func, flat, spec),
                accumulates=any(word in op_name for word in ACCUMULATING),
                upcast=False,
                # recorded below autocast: each call runs in its recorded dtypes, no autocast
                precision="tf32" if precision == "tf32" else "fp32",
                skip="a random operation: its result cannot be replayed" if random else "",
                results=_through_indices(func, flat, spec),
            )
        )
    return checks


def shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def is_random(func, flat: list, spec) -> bool:
    """Whether the call draws random numbers: a seeded operation whose dropout probability,
    if it has one, is not zero (attention with dropout_p=0 is deterministic)."""
    if torch.Tag.nondeterministic_seeded not in func.tags:
        return False
    args, kwargs = tree_unflatten(flat, spec)
    named = dict(zip((a.name for a in func._schema.arguments), args, strict=False)) | kwargs
    return not any(named.get(p) == 0 for p in ("dropout_p", "p"))


def dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _inputs(tensors: list[torch.Tensor]):
    """The recorded tensors, copied afresh for each side (in-place operations change them)."""
    return lambda generator: tuple(snapshot(t) for t in tensors)


def _op(func, flat: list, spec):
    """The recorded call, with the given tensors in the recorded tensors' places."""

    def call(*tensors):
        given, device = iter(tensors), tensors[0].device
        values = [
            next(given)
            if isinstance(a, torch.Tensor)
            else device
            if isinstance(a, torch.device)
            else a
            for a in flat
        ]
        args, kwargs = tree_unflatten(values, spec)
        return func(*args, **kwargs)

    return call


def _through_indices(func, flat: list, spec):
    """For max_pool2d_with_indices, what is compared in place of its results (checks.py's
    `results`); None for any other operation."""
    if func is not torch.ops.aten.max_pool2d_with_indices.default:
        return None
    args, kwargs = tree_unflatten(flat, spec)
    named = dict(zip((a.name for a in func._schema.arguments), args, strict=False)) | kwargs
    return lambda inputs, results: through_indices(inputs[0], *results, named)


def through_indices(x: torch.Tensor, values, indices, named: dict) -> list[torch.Tensor]:
    """max_pool2d_with_indices without its ties: (the maxima, the input's value at each index,
    whether each index lies in its own window) in place of the indices, which a correct
    device may pick differently among equal values (ReLU's zeros fill whole windows)."""
    kernel = pair(named["kernel_size"])
    stride = pair(named.get("stride") or kernel)
    padding, dilation = pair(named.get("padding", 0)), pair(named.get("dilation", 1))
    height, width = x.shape[-2:]
    inside = (indices >= 0) & (indices < height * width)
    flat = indices.clamp(0, height * width - 1)
    at = x.flatten(-2).gather(-1, flat.flatten(-2)).view_as(indices)
    for i, position in enumerate((flat // width, flat % width)):  # the row, the column
        start = torch.arange(indices.shape[i - 2]) * stride[i] - padding[i]
        offset = position - (start.view(-1, 1) if i == 0 else start)
        inside &= (offset >= 0) & (offset % dilation[i] == 0) & (offset // dilation[i] < kernel[i])
    return [values, at, inside]


def pair(value) -> tuple[int, int]:
    """A pooling size as (height, width): an int or a list of one or two."""
    value = [value] if isinstance(value, int) else list(value)
    return (value[0], value[-1])
