"""doctor is specific: a stand-in device (the CPU, labelled so) that breaks exactly one ATen
operation fails the checks that run it, and no other; the report names the operation.

Which operations a check runs is read once, in process, from the device side of each check
(a TorchDispatchMode that records every operation), and the recordings of the workloads'
steps are shared by every test here. A check that runs the broken operation must fail,
unless its output cannot see the fault (MASKED, with the reason); a check that does not run
it is left untouched by construction, and the tests hold the exact set of checks that run
each operation, so a check that starts running another operation shows."""

from contextlib import contextmanager
from functools import cache

import pytest
import torch
from test_doctor import WORKLOADS, copy_on_cpu, corrupting, cpu_precision
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.doctor import battery, replay
from pipeline.doctor import checks as doctor

aten = torch.ops.aten


class Traced(TorchDispatchMode):
    """Records every operation the device side runs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func)
        return func(*args, **(kwargs or {}))


def runs(check: doctor.Check) -> frozenset:
    """The operations a check runs on the device side (which passes on the CPU)."""
    mode = Traced()

    @contextmanager
    def context(precision):
        with cpu_precision(precision), mode:
            yield

    result = doctor.run_check(check, doctor.Target("cpu (traced)", copy_on_cpu, context=context))
    assert result.status == "pass", result
    return frozenset(mode.ops)


@cache
def traced(workload: str) -> dict[str, tuple[doctor.Check, frozenset]]:
    """Each check of the battery ("battery") or of a workload's recorded step, by name, with the
    operations it runs; random operations (skipped) left out."""
    checks = battery.CHECKS if workload == "battery" else replay.checks_of(WORKLOADS[workload])
    return {c.name: (c, runs(c)) for c in checks if not c.skip}


def failing_when_broken(workload: str, op) -> tuple[set[str], set[str]]:
    """(the checks that run `op`, those of them that fail when the device breaks `op` alone)."""
    users = {name: c for name, (c, ops) in traced(workload).items() if op in ops}
    failed = {
        n for n, c in users.items() if doctor.run_check(c, corrupting(c, {op})).status != "pass"
    }
    return set(users), failed


# (check, operation): why the check cannot see that operation broken.
MASKED = {
    ("conv2d backward, MNIST's second layer", "aten::convolution"): "it returns the gradients "
    "of the output's sum, which do not depend on the forward's values",
    ("aten::expand 1x1x64 float32", "aten::expand"): "the class token starts at zero, and an "
    "all-zero output is the same off by any factor",
}


def masked(name: str, op) -> bool:
    return (name, op_name(op)) in MASKED


def op_name(op) -> str:
    """'aten::addmm' for aten.addmm.default."""
    return f"aten::{op.name().split('::')[1].split('.')[0]}"


# One ATen operation for each family of the battery, and every check that runs it.
BATTERY = {
    "casts": (
        aten._to_copy.default,
        {
            "cast bool->float32",
            "cast bool->float32, strided",
            "cast bool->int64",
            "cast bool->int64, strided",
            "uint8->float32 scaling, as ToTensor",
            "cast int64->float32",
            "cast float32->int64",
            "the quickstart's accuracy line",
            "cumsum of int8",
            *(f"linear, the quickstart's first layer, {p} autocast" for p in ("bf16", "fp16")),
            *(f"conv2d forward, MNIST's first layer, {p} autocast" for p in ("bf16", "fp16")),
            *(f"the workload: forward, backward, SGD step, {p} autocast" for p in ("bf16", "fp16")),
        },
    ),
    "reductions": (aten.cumsum.default, {"cumsum of bool", "cumsum of int8"}),
    "argmax": (
        aten.argmax.default,
        {f"argmax of {d} rows of {w}" for d in ("float32", "int64") for w in (10, 1000)}
        | {"the quickstart's accuracy line"},
    ),
    "comparisons": (
        aten.eq.Tensor,
        {"== on contiguous int64", "== on sliced view int64", "the quickstart's accuracy line"},
    ),
    "linear": (
        aten.bmm.default,
        {"batched matmul, batch 16"},
    ),
    "conv2d": (
        aten.convolution.default,
        {
            "conv2d forward, MNIST's first layer",
            "conv2d backward, MNIST's second layer",
            "conv2d forward, MNIST's first layer, bf16 autocast",
            "conv2d forward, MNIST's first layer, fp16 autocast",
        },
    ),
    "loss": (
        aten._log_softmax.default,
        {
            "log_softmax",
            "cross_entropy forward and backward",
            "the workload: forward, backward, SGD step",
            "the workload: forward, backward, SGD step, bf16 autocast",
            "the workload: forward, backward, SGD step, fp16 autocast",
        },
    ),
    "optimizer": (
        aten.addcdiv_.default,
        {"Adam steps (addcdiv_)", "Adam steps, non-contiguous parameter"},
    ),
    "workload": (
        aten.threshold_backward.default,
        {
            "the workload: forward, backward, SGD step",
            "the workload: forward, backward, SGD step, bf16 autocast",
            "the workload: forward, backward, SGD step, fp16 autocast",
        },
    ),
}


def test_every_family_of_the_battery_is_covered():
    assert set(BATTERY) == {c.family for c in battery.CHECKS}


@pytest.mark.parametrize("family", BATTERY)
def test_a_broken_operation_fails_the_battery_checks_that_run_it_and_no_others(family):
    op, expected = BATTERY[family]
    users, failed = failing_when_broken("battery", op)
    assert users == expected
    assert failed == {name for name in users if not masked(name, op)}
    assert any(traced("battery")[name][0].family == family for name in failed)


# A listed sample of vit's operations (those of its step that mlp's and cnn's lack).
VIT_SAMPLE = [
    aten._safe_softmax.default,
    aten._softmax_backward_data.default,
    aten.native_layer_norm.default,
    aten.native_layer_norm_backward.default,
    aten.bmm.default,
    aten.cat.default,
    aten.expand.default,
    aten.unfold.default,
    aten.select_backward.default,
    aten.mul.Scalar,
    aten.permute.default,
    aten.transpose.int,
]


def recorded_ops(workload: str) -> list:
    return sorted({call[0] for call in replay.record_step(WORKLOADS[workload], "fp32")}, key=str)


CASES = [
    *((w, op) for w in ("mlp", "cnn") for op in recorded_ops(w)),
    *(("vit", op) for op in VIT_SAMPLE),
]


@pytest.mark.parametrize(("workload", "op"), CASES, ids=lambda v: str(v))
def test_a_broken_operation_fails_the_models_checks_that_run_it_and_no_others(workload, op):
    """Each check of a recorded step runs its one operation: breaking it fails exactly the
    checks of that operation, whose names name it."""
    users, failed = failing_when_broken(workload, op)
    own = {n for n, (c, _) in traced(workload).items() if c.reference.endswith(f"({op.name()})")}
    assert users == own
    if torch.Tag.nondeterministic_seeded in op.tags:  # random: skipped, its consumers checked
        assert not users and any(c.skip for c in replay.checks_of(WORKLOADS[workload]))
        return
    assert users
    assert failed == {name for name in users if not masked(name, op)}
    assert all(name.startswith(f"{op_name(op)} ") for name in users)
