"""doctor: when a device's results are wrong, name the operation that is broken.

Each check runs one operation on the device and, as the reference, on the CPU, with the same
seeded inputs, and compares the two. The reference takes another code path wherever one
exists: floating-point inputs are upcast to float64 (exactly), so on the CPU itself the float32
kernels are checked against the float64 ones. Integer and boolean results must match exactly;
floating-point ones within a tolerance fit for the op:

    |device - reference| <= tolerance * max(1, |reference|)     element by element

A check whose operation raises on the device (not implemented there) is `unsupported`; the
others go on. The checks cover the operations behind every silent wrong-result bug reported
against PyTorch's accelerator back ends that touches this workload: each names its report.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline import devices, model

Inputs = tuple[torch.Tensor, ...]
TRACKER = "https://github.com/pytorch/pytorch/issues/"
ROCM_TRACKER = "https://github.com/ROCm/pytorch/issues/"


@dataclass(frozen=True)
class Check:
    """One operation at one shape, dtype and layout."""

    name: str
    family: str
    shape: str
    dtype: str
    layout: str
    reference: str  # the public report it guards against
    inputs: Callable[[torch.Generator], Inputs]  # made on the CPU, from the seed
    op: Callable[..., torch.Tensor | Sequence[torch.Tensor]]  # run on each side
    tolerance: float = 0.0  # 0: exact


@dataclass
class Result:
    name: str
    family: str
    shape: str
    dtype: str
    layout: str
    max_abs_diff: float | None
    mismatch_fraction: float | None
    tolerance: float
    status: str  # pass | fail | unsupported
    reference: str
    detail: str = ""  # what went wrong, in a few words


@dataclass(frozen=True)
class Target:
    """Where the checks run: a device, or a stand-in for one (tests). `place` moves a CPU
    tensor there."""

    name: str
    place: Callable[[torch.Tensor], torch.Tensor]
    synchronize: Callable[[], None] = field(default=lambda: None)


def on(device: torch.device) -> Target:
    return Target(str(device), lambda t: t.to(device), lambda: devices.synchronize(device))


# --- running a check -----------------------------------------------------------------------


def upcast(t: torch.Tensor) -> torch.Tensor:
    """The reference path's input: float64 for floating-point tensors, exactly."""
    return t.double() if t.is_floating_point() else t


def as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, list | tuple) else [out]


def run_check(check: Check, target: Target, seed: int = 0) -> Result:
    inputs = check.inputs(torch.Generator().manual_seed(seed))
    expected = as_list(check.op(*(upcast(t) for t in inputs)))
    try:
        got = as_list(check.op(*(target.place(t) for t in inputs)))
        target.synchronize()
        got = [g.detach().cpu().as_subclass(torch.Tensor) for g in got]
    except Exception as e:  # not implemented there, or the back end failed
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return _result(check, None, None, "unsupported", reason)
    worst, mismatched, total, detail = 0.0, 0, 0, ""
    for g, e in zip(got, expected, strict=True):
        if g.shape != e.shape:
            return _result(check, None, 1.0, "fail", f"shape {tuple(g.shape)} != {tuple(e.shape)}")
        g, e = g.detach().double(), e.detach().double()
        diff = (g - e).abs()
        diff = torch.where(torch.isnan(g) & torch.isnan(e), 0.0, diff.nan_to_num(nan=torch.inf))
        bad = diff > check.tolerance * e.abs().clamp(min=1.0)
        if diff.numel():
            worst = max(worst, float(diff.max()))
        if bad.any() and not detail:
            i = int(bad.flatten().nonzero()[0])
            detail = f"{g.flatten()[i].item():.4g} instead of {e.flatten()[i].item():.4g}"
        mismatched += int(bad.sum())
        total += bad.numel()
    fraction = mismatched / total if total else 0.0
    return _result(check, worst, fraction, "fail" if mismatched else "pass", detail)


def _result(check, worst, fraction, status, detail="") -> Result:
    return Result(
        check.name,
        check.family,
        check.shape,
        check.dtype,
        check.layout,
        worst,
        fraction,
        check.tolerance,
        status,
        check.reference,
        detail,
    )


def run_all(target: Target, checks: Sequence[Check] | None = None) -> list[Result]:
    """Every check, failures first."""
    results = [run_check(c, target) for c in (checks or CHECKS)]
    order = {"fail": 0, "unsupported": 1, "pass": 2}
    return sorted(results, key=lambda r: order[r.status])


# --- the checks ----------------------------------------------------------------------------


def rand(*shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randn(*shape, generator=g)


def ints(high: int, *shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randint(0, high, shape, generator=g)


def made(*makers) -> Callable[[torch.Generator], Inputs]:
    return lambda g: tuple(m(g) for m in makers)


def cast_checks() -> list[Check]:
    ref = f"{TRACKER}77835, {TRACKER}79286"
    return [
        Check(
            f"cast bool->{str(dtype).removeprefix('torch.')}" + ("" if step == 1 else ", strided"),
            "casts",
            "128" if step == 1 else "64 of 128",
            f"bool->{str(dtype).removeprefix('torch.')}",
            layout,
            ref,
            made(ints(2, 128)),
            (lambda x, d=dtype, s=step: (x[::s] == 1).to(d)),
        )
        for dtype in (torch.float32, torch.int64)
        for layout, step in (("contiguous", 1), ("strided", 2))
    ] + [
        Check(
            "cast int64->float32",
            "casts",
            "1000",
            "int64->float32",
            "contiguous",
            ref,
            made(ints(1 << 20, 1000)),
            lambda x: x.to(torch.float32),
        ),
        Check(
            "cast float32->int64",
            "casts",
            "1000",
            "float32->int64",
            "contiguous",
            ref,
            made(lambda g: torch.randn(1000, generator=g) * 1000),
            lambda x: x.float().to(torch.int64),
        ),
        Check(
            "the quickstart's accuracy line",
            "casts",
            "64x10",
            "bool->float32",
            "contiguous",
            ref,
            made(rand(64, 10), ints(10, 64)),
            lambda pred, y: (pred.argmax(1) == y).type(torch.float).sum(),
        ),
    ]


def reduction_checks() -> list[Check]:
    return [
        Check(
            "sum of bool",
            "reductions",
            "10000",
            "bool",
            "contiguous",
            f"{TRACKER}79849",
            made(ints(2, 10000)),
            lambda x: (x == 1).sum(),
        ),
        Check(
            "mean of float32",
            "reductions",
            "4096",
            "float32",
            "contiguous",
            f"{TRACKER}79849",
            made(rand(4096)),
            lambda x: x.mean(),
            1e-5,
        ),
        Check(
            "sum of int64",
            "reductions",
            "10000",
            "int64",
            "contiguous",
            f"{TRACKER}132732",
            made(ints(1 << 30, 10000)),
            lambda x: x.sum(),
        ),
        Check(
            "sum along dim -1 of a slice",
            "reductions",
            "64x10 of 64x20",
            "float32",
            "strided",
            f"{TRACKER}94753",
            made(rand(64, 20)),
            lambda x: x[:, 5:15].sum(-1),
            1e-5,
        ),
        Check(
            "cumsum of bool",
            "reductions",
            "1000",
            "bool->int64",
            "contiguous",
            f"{TRACKER}96614",
            made(ints(2, 1000)),
            lambda x: (x == 1).cumsum(0),
        ),
        Check(
            "cumsum of int8",
            "reductions",
            "1000",
            "int8->int64",
            "contiguous",
            f"{TRACKER}96614",
            made(ints(3, 1000)),
            lambda x: x.to(torch.int8).cumsum(0, dtype=torch.int64),
        ),
    ]


def argmax_checks() -> list[Check]:
    ref = f"{TRACKER}92311, {TRACKER}112186, {TRACKER}90273"
    checks = [
        Check(
            f"argmax of {dtype} rows of {width}",
            "argmax",
            f"64x{width}",
            dtype,
            "contiguous",
            ref,
            made(rand(64, width) if dtype == "float32" else ints(1000, 64, width)),
            lambda x: x.argmax(1),
        )
        for dtype in ("float32", "int64")
        for width in (10, 1000)
    ]
    return [
        *checks,
        Check(
            "max of float32 rows of 10",
            "argmax",
            "64x10",
            "float32",
            "contiguous",
            ref,
            made(rand(64, 10)),
            lambda x: x.max(1).values,
        ),
        Check(
            "argmax with ties",
            "argmax",
            "64x10",
            "float32",
            "contiguous",
            ref,
            made(ints(3, 64, 10)),
            lambda x: x.float().argmax(1),
        ),
    ]


def comparison_checks() -> list[Check]:
    ref = f"{TRACKER}77750, {TRACKER}78107"
    ops = {"==": torch.eq, "<=": torch.le, ">": torch.gt}
    return [
        Check(
            f"{symbol} on {layout} int64",
            "comparisons",
            "64x10" if step == 1 else "64x10 of 64x20",
            "int64",
            layout,
            ref,
            made(ints(4, 64, 10 * step), ints(4, 64, 10 * step)),
            (lambda a, b, f=fn, s=step: f(a[:, ::s], b[:, ::s])),
        )
        for symbol, fn in ops.items()
        for layout, step in (("contiguous", 1), ("sliced view", 2))
    ]


def matmul_checks() -> list[Check]:
    tol = 1e-4
    return [
        Check(
            "linear, the quickstart's first layer",
            "linear",
            "64x784 @ 784x512",
            "float32",
            "contiguous",
            f"{TRACKER}109457",
            made(rand(64, 784), rand(512, 784), rand(512)),
            nn.functional.linear,
            tol,
        ),
        Check(
            "linear, batch 1",
            "linear",
            "1x512 @ 512x10",
            "float32",
            "contiguous",
            f"{TRACKER}111634",
            made(rand(1, 512), rand(10, 512), rand(10)),
            nn.functional.linear,
            tol,
        ),
        Check(
            "batched matmul, batch 16",
            "linear",
            "16x(32x64 @ 64x32)",
            "float32",
            "contiguous",
            f"{TRACKER}111634",
            made(rand(16, 32, 64), rand(16, 64, 32)),
            torch.bmm,
            tol,
        ),
        Check(
            "matmul, inner dim 32768",
            "linear",
            "8x32768 @ 32768x16",
            "float32",
            "contiguous",
            f"{TRACKER}116769",
            made(rand(8, 32768), rand(32768, 16)),
            torch.matmul,
            1e-3,
        ),
        Check(
            "matmul, 40000 output columns",
            "linear",
            "4x64 @ 64x40000",
            "float32",
            "contiguous",
            f"{TRACKER}162730",
            made(rand(4, 64), rand(64, 40000)),
            torch.matmul,
            tol,
        ),
        Check(
            "linear, non-contiguous weight",
            "linear",
            "64x784 @ (784x512)^T",
            "float32",
            "transposed weight",
            f"{TRACKER}104832",
            made(rand(64, 784), rand(784, 512)),
            lambda x, w: nn.functional.linear(x, w.t()),
            tol,
        ),
        Check(
            "matmul into a strided out=",
            "linear",
            "64x32 @ 32x16",
            "float32",
            "strided out",
            f"{TRACKER}104832",
            made(rand(64, 32), rand(32, 16)),
            _matmul_strided_out,
            tol,
        ),
    ]


def _matmul_strided_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(16, a.shape[0], dtype=a.dtype, device=a.device).t()  # 64x16, strided
    torch.matmul(a, b, out=out)
    return out


def conv_checks() -> list[Check]:
    ref = f"{ROCM_TRACKER}102968 (ROCm)"

    def backward(x, w):
        x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = nn.functional.conv2d(x, w)
        return torch.autograd.grad(out.sum(), (x, w))

    return [
        Check(
            "conv2d forward, MNIST's first layer",
            "conv2d",
            "16x1x28x28 * 32x1x3x3",
            "float32",
            "contiguous",
            ref,
            made(rand(16, 1, 28, 28), rand(32, 1, 3, 3)),
            nn.functional.conv2d,
            1e-4,
        ),
        Check(
            "conv2d backward, MNIST's second layer",
            "conv2d",
            "8x32x26x26 * 64x32x3x3",
            "float32",
            "contiguous",
            ref,
            made(rand(8, 32, 26, 26), rand(64, 32, 3, 3)),
            backward,
            1e-3,
        ),
    ]


def loss_checks() -> list[Check]:
    def cross_entropy_backward(logits, y):
        logits = logits.clone().requires_grad_()
        loss = nn.functional.cross_entropy(logits, y)
        return loss, torch.autograd.grad(loss, logits)[0]

    return [
        Check(
            "log_softmax",
            "loss",
            "64x10",
            "float32",
            "contiguous",
            "the loss path of every workload",
            made(rand(64, 10)),
            lambda x: nn.functional.log_softmax(x, dim=1),
            1e-5,
        ),
        Check(
            "cross_entropy forward and backward",
            "loss",
            "64x10",
            "float32",
            "contiguous",
            "the loss path of every workload",
            made(rand(64, 10), ints(10, 64)),
            cross_entropy_backward,
            1e-5,
        ),
    ]


def optimizer_checks() -> list[Check]:
    def step(optimizer, p, g, transposed=False, steps=1):
        """`steps` steps of the optimizer on a copy of p (in a transposed memory layout when
        asked: the same values, non-contiguous), with gradient g."""
        p = p.t().contiguous().t() if transposed else p.clone()
        p.requires_grad_()
        p.grad = g.clone()
        opt = optimizer([p], lr=0.1, foreach=False)
        for _ in range(steps):
            opt.step()
        return p.detach()

    ref = f"{TRACKER}118115"
    pair = made(rand(512, 784), rand(512, 784))
    # Adam's second step runs addcdiv_ with non-zero state.
    return [
        Check("SGD step", "optimizer", "512x784", "float32", "contiguous", ref, pair,
              lambda p, g: step(torch.optim.SGD, p, g), 1e-5),
        Check("SGD step, non-contiguous parameter", "optimizer", "512x784", "float32",
              "transposed", ref, pair, lambda p, g: step(torch.optim.SGD, p, g, True), 1e-5),
        Check("Adam steps (addcdiv_)", "optimizer", "512x784", "float32", "contiguous", ref,
              pair, lambda p, g: step(torch.optim.Adam, p, g, steps=2), 1e-4),
        Check("Adam steps, non-contiguous parameter", "optimizer", "512x784", "float32",
              "transposed", ref, pair, lambda p, g: step(torch.optim.Adam, p, g, True, 2), 1e-4),
    ]  # fmt: skip


def workload_check() -> Check:
    """One forward, backward and SGD step of the pipeline's own MLP from the same weights."""
    config = {"model": "mlp", "hidden": 512, "layers": 2}

    def inputs(g: torch.Generator) -> Inputs:
        net = model.initialised(config, 0, torch.device("cpu"))
        weights = [p.detach() for p in net.parameters()]
        x = torch.rand(64, 1, 28, 28, generator=g)
        return (x, torch.randint(0, 10, (64,), generator=g), *weights)

    def step(x, y, *weights):
        net = model.build(**config)
        names = [n for n, _ in net.named_parameters()]
        params = {n: w.clone().requires_grad_() for n, w in zip(names, weights, strict=True)}
        logits = torch.func.functional_call(net, params, (x,))
        loss = nn.functional.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, list(params.values()))
        updated = [p.detach() - 1e-3 * g for p, g in zip(params.values(), grads, strict=True)]
        return [logits.detach(), loss.detach(), *grads, *updated]

    return Check(
        "the workload: forward, backward, SGD step",
        "workload",
        "64x1x28x28, MLP 784-512-512-10",
        "float32",
        "contiguous",
        "ties the operations to the runs compare judges",
        inputs,
        step,
        1e-4,
    )


CHECKS: list[Check] = [
    *cast_checks(),
    *reduction_checks(),
    *argmax_checks(),
    *comparison_checks(),
    *matmul_checks(),
    *conv_checks(),
    *loss_checks(),
    *optimizer_checks(),
    workload_check(),
]
FAMILIES = tuple(dict.fromkeys(c.family for c in CHECKS))


def family_scores(results: list[Result]) -> dict[str, float]:
    """Each family's fraction of checks passed."""
    return {
        family: sum(r.status == "pass" for r in members) / len(members)
        for family in FAMILIES
        if (members := [r for r in results if r.family == family])
    }


def describe_failure(r: Result) -> str:
    """'cast bool->float32 wrong: 9.1e-41 instead of 1'."""
    if r.status == "unsupported":
        return f"{r.name} unsupported: {r.detail}"
    return f"{r.name} wrong" + (f": {r.detail}" if r.detail else "")
