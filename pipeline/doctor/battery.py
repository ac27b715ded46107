"""The fixed battery: the operations and shapes behind the silent wrong-result bugs reported
against PyTorch's accelerator back ends that touch these workloads, each check naming its
report; the optimizer as `train` builds it on the device; bf16 and fp16 variants of the
families the precisions use, under autocast as `train` runs them; and one training step of
the quickstart's MLP. Each reference is the CPU in float64 (checks.py).

One table: CHECKS, with the makers of its rows; over 400 lines for that alone, which is
why tests/test_design.py lets it be."""

from collections.abc import Callable

import torch
from torch import nn

from pipeline.doctor.checks import ROCM_TRACKER, TRACKER, Check, Inputs
from pipeline.training import data, loops, model


def rand(*shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randn(*shape, generator=g)


def ints(high: int, *shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randint(0, high, shape, generator=g)


def bytes_(*shape: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


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
            "uint8->float32 scaling, as ToTensor",
            "casts",
            "256 bytes; 64x1x28x28",
            "uint8->float32",
            "contiguous",
            "every byte as ToTensor makes it, bit for bit (how the pipeline feeds every device)",
            made(lambda g: torch.arange(256, dtype=torch.uint8), bytes_(64, 1, 28, 28)),
            lambda every, images: [data.to_float(every), data.to_float(images)],
            exact=True,
            upcast=False,
        ),
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
    """Rows without ties (floats from randn; integers as permutations): which of equal
    values wins is not defined, so a tie proves nothing."""
    ref = f"{TRACKER}92311, {TRACKER}112186, {TRACKER}90273"
    checks = [
        Check(
            f"argmax of {dtype} rows of {width}",
            "argmax",
            f"64x{width}",
            dtype,
            "contiguous",
            ref,
            made(rand(64, width) if dtype == "float32" else permutations(64, width)),
            lambda x: x.argmax(1),
        )
        for dtype in ("float32", "int64")
        for width in (10, 1000)
    ]
    return checks + [
        Check(f"{what} of float32 rows of 10", "argmax", "64x10", "float32", "contiguous", ref,
              made(rand(64, 10)), op)
        for what, op in (("max", lambda x: x.max(1)), ("sort", lambda x: x.sort(1)))
    ]  # fmt: skip


def permutations(rows: int, width: int) -> Callable[[torch.Generator], torch.Tensor]:
    return lambda g: torch.stack([torch.randperm(width, generator=g) for _ in range(rows)])


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
    """(name, shape, layout, report, inputs, op): every one accumulates."""
    table = [
        ("linear, the quickstart's first layer", "64x784 @ 784x512", "contiguous", "109457",
         made(rand(64, 784), rand(512, 784), rand(512)), nn.functional.linear),
        ("linear, batch 1", "1x512 @ 512x10", "contiguous", "111634",
         made(rand(1, 512), rand(10, 512), rand(10)), nn.functional.linear),
        ("batched matmul, batch 16", "16x(32x64 @ 64x32)", "contiguous", "111634",
         made(rand(16, 32, 64), rand(16, 64, 32)), torch.bmm),
        ("matmul, inner dim 32768", "8x32768 @ 32768x16", "contiguous", "116769",
         made(rand(8, 32768), rand(32768, 16)), torch.matmul),
        ("matmul, 40000 output columns", "4x64 @ 64x40000", "contiguous", "162730",
         made(rand(4, 64), rand(64, 40000)), torch.matmul),
        ("linear, non-contiguous weight", "64x784 @ (784x512)^T", "transposed weight", "104832",
         made(rand(64, 784), rand(784, 512)), lambda x, w: nn.functional.linear(x, w.t())),
        ("matmul into a strided out=", "64x32 @ 32x16", "strided out", "104832",
         made(rand(64, 32), rand(32, 16)), _matmul_strided_out),
    ]  # fmt: skip
    return [
        Check(name, "linear", shape, "float32", layout, f"{TRACKER}{report}", inputs, op, True)
        for name, shape, layout, report, inputs, op in table
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
            accumulates=True,
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
            accumulates=True,
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
        ),
    ]


def optimizer_checks() -> list[Check]:
    """The optimizer as `train` builds it on the device (torch picks its foreach or fused
    path there, the single-tensor one for the CPU reference). Each check returns the update,
    p after the steps minus p before: an SGD update at lr 1e-3 is about 1e-6 against weights
    of 0.03, and only the update itself shows whether it is right."""

    def update(optimizer, p, g, transposed=False, steps=1, lr=1e-3):
        before = p.t().contiguous().t() if transposed else p.clone()
        p = before.clone().requires_grad_()
        p.grad = g.clone()
        opt = optimizer([p], lr=lr)
        for _ in range(steps):
            opt.step()
        return p.detach() - before

    ref = f"{TRACKER}118115"
    pair = made(lambda g: torch.randn(512, 784, generator=g) * 0.03, rand(512, 784))

    def sgd(params, lr):  # as train builds it for the parameters' device
        return loops.optimizer(params, lr, params[0].device)

    adam = torch.optim.Adam  # its second step runs addcdiv_ with state
    return [
        Check("SGD step, as train builds it", "optimizer", "512x784", "float32", "contiguous",
              ref, pair, lambda p, g: update(sgd, p, g)),
        Check("SGD step, non-contiguous parameter", "optimizer", "512x784", "float32",
              "transposed", ref, pair, lambda p, g: update(sgd, p, g, True)),
        Check("Adam steps (addcdiv_)", "optimizer", "512x784", "float32", "contiguous", ref,
              pair, lambda p, g: update(adam, p, g, steps=2)),
        Check("Adam steps, non-contiguous parameter", "optimizer", "512x784", "float32",
              "transposed", ref, pair, lambda p, g: update(adam, p, g, True, 2)),
    ]  # fmt: skip


# The workload step's learning rate: large enough that the update stands well above a
# float32 weight's rounding (at 1e-3 it is about 1e-7 against weights of 0.03, whose ulp is
# 2e-9), so that a wrong update shows.
LR = 0.1


def workload_check(precision: str = "fp32") -> Check:
    """One forward, backward and SGD step of the pipeline's own MLP from the same weights,
    the optimizer as `train` builds it; in bf16 or fp16 under autocast, as `train` runs it,
    against the CPU in the same precision."""
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
        with torch.autocast(x.device.type, enabled=False):
            for p, g in zip(params.values(), grads, strict=True):
                p.grad = g
            loops.optimizer(list(params.values()), LR, x.device).step()
        updates = [p.detach() - w for p, w in zip(params.values(), weights, strict=True)]
        return [logits.detach(), loss.detach(), *grads, *updates]

    suffix = "" if precision == "fp32" else f", {precision} autocast"
    return Check(
        f"the workload: forward, backward, SGD step{suffix}",
        "workload",
        "64x1x28x28, MLP 784-512-512-10",
        "float32" if precision == "fp32" else f"float32, {precision} autocast",
        "contiguous",
        "ties the operations to the runs compare judges",
        inputs,
        step,
        accumulates=True,
        upcast=precision == "fp32",
        precision=precision,
    )


def autocast_checks() -> list[Check]:
    """The families bf16 and fp16 runs take through autocast: the quickstart's first layer,
    MNIST's first convolution, and the workload's step."""
    checks = []
    for precision in ("bf16", "fp16"):
        checks += [
            Check(
                f"linear, the quickstart's first layer, {precision} autocast",
                "linear",
                "64x784 @ 784x512",
                f"float32, {precision} autocast",
                "contiguous",
                f"{TRACKER}109457",
                made(rand(64, 784), rand(512, 784), rand(512)),
                nn.functional.linear,
                accumulates=True,
                precision=precision,
            ),
            Check(
                f"conv2d forward, MNIST's first layer, {precision} autocast",
                "conv2d",
                "16x1x28x28 * 32x1x3x3",
                f"float32, {precision} autocast",
                "contiguous",
                f"{ROCM_TRACKER}102968 (ROCm)",
                made(rand(16, 1, 28, 28), rand(32, 1, 3, 3)),
                nn.functional.conv2d,
                accumulates=True,
                precision=precision,
            ),
            workload_check(precision),
        ]
    return checks


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
    *autocast_checks(),
]
