"""doctor's check engine: when a device's results are wrong, name the operation that is broken.

A check runs one operation on the device and, as the reference, on the CPU, with the same
inputs, and compares the two element by element, the way PyTorch's own cross-device tests
do (torch.testing.assert_close; test_mps.py's consistency tests):

    |device - reference| <= atol * s + rtol * |reference|

with (atol, rtol) by the device result's dtype (TOLERANCES; ACCUMULATING for convolutions,
matmuls and normalisations, which sum many terms; TF32 for those under tf32), and s the
output's own scale, max |reference| (1 for an all-zero output): torch's atol is meant for
values of order 1, and an SGD update of 1e-6 must be checked at its own scale, not passed by
any atol. NaN must meet NaN and an infinity the same infinity; nothing else passes.
Integer and boolean results must be equal.

The fixed battery (battery.py) takes the reference in float64 (an exact upcast: the
CPU's float32 kernels are checked too), but for a whole training step under bf16 or fp16
autocast, where a ReLU whose input rounds across zero changes a gradient outright, it takes
the CPU in the same precision, as a workload's own operations (replay.py) do.

Each result is `pass`, `fail`, `error` (the device, or the CPU reference, raised), `skipped`
(a random operation that cannot be replayed) or `unsupported` (only for "not implemented on
this device": NotImplementedError and the back ends' own wording). `fail` and `error` are
failures: doctor exits 1 and names them.
"""

import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from pipeline import devices

Inputs = tuple[torch.Tensor, ...]
TRACKER = "https://github.com/pytorch/pytorch/issues/"
ROCM_TRACKER = "https://github.com/ROCm/pytorch/issues/"

# (atol, rtol) by the result's dtype: torch.testing.assert_close's defaults.
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1.3e-6),
    torch.float16: (1e-5, 1e-3),
    torch.bfloat16: (1e-5, 1.6e-2),
}
# Operations that accumulate many products (convolution, matmul, linear, layer norm):
# test_mps.py's TestConsistency bounds (FP32_LOW_PRECISION_LIST; addmm/matmul/linear in half).
ACCUMULATING = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-4, 3e-5),
    torch.float16: (5e-2, 5e-2),
    torch.bfloat16: (5e-2, 1e-1),
}
# The same under TF32 (10-bit mantissa): PyTorch's tests run them with tf32_on_and_off(0.005).
TF32 = (5e-3, 0.0)

PASS, FAIL, ERROR, SKIPPED, UNSUPPORTED = "pass", "fail", "error", "skipped", "unsupported"
FAILURES = (FAIL, ERROR)
ORDER = {FAIL: 0, ERROR: 1, UNSUPPORTED: 2, SKIPPED: 3, PASS: 4}
# What back ends say when an operation is not implemented for them (CUDA: '"addmm_cuda" not
# implemented for 'Bool''; MPS: 'not currently implemented for the MPS device', 'The operator
# ... is not currently supported on the MPS backend', 'MPS does not support ...'). A runtime
# error is never one of them, whatever its words ('CUDA error: operation not supported' is
# cudaErrorNotSupported): anything else a device raises is an error, never a pass.
NOT_IMPLEMENTED = re.compile(
    r"not (currently )?implemented|not currently supported|(does not|doesn't) support",
    re.IGNORECASE,
)
RUNTIME_ERROR = re.compile(r"\b(CUDA|HIP|cuDNN|MPS|Metal) error\b|CUBLAS_STATUS|CUDNN_STATUS")


@dataclass(frozen=True)
class Check:
    """One operation at one shape, dtype and layout."""

    name: str
    family: str
    shape: str
    dtype: str
    layout: str
    reference: str  # the public report it guards against, or what it ties to
    inputs: Callable[[torch.Generator], Inputs]  # made on the CPU, from the seed
    op: Callable[..., object]  # run on each side; returns a tensor or several
    accumulates: bool = False  # conv, matmul, norm: ACCUMULATING bounds
    upcast: bool = True  # the reference in float64; False: the CPU, same dtypes and precision
    precision: str = "fp32"  # the device side runs in this precision's context
    skip: str = ""  # why it is not run (a random operation), listed as skipped
    exact: bool = False  # floating-point results must be equal too (a conversion, a copy)
    # what is compared, made on the CPU from the inputs and each side's results (None: the
    # results): indices seen through the values they point at, where ties make them differ
    results: Callable[[Inputs, list[torch.Tensor]], list[torch.Tensor]] | None = None


@dataclass
class Result:
    name: str
    family: str
    shape: str
    dtype: str
    layout: str
    max_abs_diff: float | None
    mismatch_fraction: float | None
    atol: float | None  # at the output's scale; None: exact
    rtol: float | None
    status: str  # pass | fail | error | skipped | unsupported
    reference: str
    detail: str = ""  # what went wrong, in a few words


@dataclass(frozen=True)
class Target:
    """Where the checks run: a device, or a stand-in for one (tests). `place` copies a CPU
    tensor there, its layout kept; `context(precision)` is what the device side runs in."""

    name: str
    place: Callable[[torch.Tensor], torch.Tensor]
    synchronize: Callable[[], None] = field(default=lambda: None)
    context: Callable[[str], AbstractContextManager] = field(default=lambda p: nullcontext())


def on(device: torch.device) -> Target:
    return Target(
        str(device),
        lambda t: replicate(t, device),
        lambda: devices.synchronize(device),
        lambda precision: devices.Precision(precision, device).context(),
    )


def replicate(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A copy of t on the device with the same sizes, strides and storage offset (a
    transposed weight stays transposed, a slice stays a slice)."""
    storage = t.untyped_storage()
    flat = torch.empty(0, dtype=t.dtype).set_(storage, 0, (storage.nbytes() // t.element_size(),))
    return flat.to(device, copy=True).as_strided(t.shape, t.stride(), t.storage_offset())


# --- running a check -----------------------------------------------------------------------


def upcast(t):
    """The reference path's input: float64 for floating-point tensors, exactly."""
    return t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def tensors_of(out) -> list[torch.Tensor]:
    """The tensors an operation returned, in order (None and other values left out)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, list | tuple):
        return [t for o in out for t in tensors_of(o)]
    return []


HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def tolerance(check: Check, dtype: torch.dtype) -> tuple[float, float] | None:
    """(atol, rtol) for a result of this dtype; None: exact. Under bf16 or fp16 autocast every
    floating-point result carries that precision's error, float32 ones included."""
    if check.exact or not dtype.is_floating_point:
        return None
    dtype = HALF.get(check.precision, dtype)
    if check.accumulates and check.precision == "tf32":
        return TF32
    table = ACCUMULATING if check.accumulates else TOLERANCES
    return table.get(dtype, TOLERANCES[torch.float32])


def status_of(e: BaseException) -> str:
    """unsupported for 'not implemented on this device', error for anything else."""
    if isinstance(e, NotImplementedError):
        return UNSUPPORTED
    if NOT_IMPLEMENTED.search(str(e)) and not RUNTIME_ERROR.search(str(e)):
        return UNSUPPORTED
    return ERROR


def reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def run_check(check: Check, target: Target, seed: int = 0) -> Result:
    if check.skip:
        return _result(check, SKIPPED, detail=check.skip)
    inputs = check.inputs(torch.Generator().manual_seed(seed))
    try:  # on inputs of its own: in-place operations change them
        mine = check.inputs(torch.Generator().manual_seed(seed))
        if check.upcast:  # float64, outside any precision: the exact answer
            expected = tensors_of(check.op(*(upcast(t) for t in mine)))
        else:  # the CPU on the same dtypes, in the same precision
            with devices.Precision(check.precision, torch.device("cpu")).context():
                expected = tensors_of(check.op(*mine))
        expected = [t.detach() for t in expected]
        if check.results:
            expected = check.results(mine, expected)
    except Exception as e:
        return _result(check, ERROR, detail=f"the CPU reference raised: {reason(e)}")
    try:
        placed = [target.place(t) if isinstance(t, torch.Tensor) else t for t in inputs]
        with target.context(check.precision):
            out = check.op(*placed)
        target.synchronize()
        got = [t.detach().cpu().as_subclass(torch.Tensor) for t in tensors_of(out)]
    except Exception as e:
        return _result(check, status_of(e), detail=reason(e))
    try:
        got = check.results(inputs, got) if check.results else got
    except Exception as e:  # results the reference's reading cannot take: wrong
        return _result(check, FAIL, 1.0, detail=f"results unreadable: {reason(e)}")
    return compare(check, got, expected)


def compare(check: Check, got: list[torch.Tensor], expected: list[torch.Tensor]) -> Result:
    """The device's results against the reference's, element by element."""
    if len(got) != len(expected):
        return _result(check, FAIL, 1.0, detail=f"{len(got)} results, not {len(expected)}")
    worst, mismatched, total, detail, bounds = 0.0, 0, 0, "", None
    for g, e in zip(got, expected, strict=True):
        if g.shape != e.shape:
            detail = f"shape {tuple(g.shape)} != {tuple(e.shape)}"
            return _result(check, FAIL, 1.0, detail=detail)
        bounds = tolerance(check, g.dtype) or bounds
        bad, diff = mismatches(g, e, tolerance(check, g.dtype))
        if diff.numel():
            worst = max(worst, float(diff.max()))
        if bad.any() and not detail:
            i = int(bad.flatten().nonzero()[0])
            detail = came_back(g.flatten()[i].item(), e.flatten()[i].item())
        mismatched += int(bad.sum())
        total += bad.numel()
    fraction = mismatched / total if total else 0.0
    status = FAIL if mismatched else PASS
    return _result(check, status, fraction, worst, detail, bounds)


def mismatches(g: torch.Tensor, e: torch.Tensor, bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """(which elements are wrong, |g - e| with non-finite differences as inf)."""
    g, e = g.double(), e.double()
    diff = (g - e).abs()
    if bounds is None:
        bad = (g != e) & ~(g.isnan() & e.isnan())
        return bad, torch.where(bad, diff.nan_to_num(nan=torch.inf), 0.0)
    atol, rtol = bounds
    finite = e.isfinite()
    scale = float(e[finite].abs().max()) if finite.any() else 1.0
    scale = scale or 1.0
    close = diff <= atol * scale + rtol * e.abs()
    ok = torch.where(finite, close & g.isfinite(), (g.isnan() & e.isnan()) | (g == e))
    return ~ok, torch.where(ok, diff.nan_to_num(nan=0.0), diff.nan_to_num(nan=torch.inf))


def came_back(got: float, expected: float) -> str:
    """'9e-41 instead of 1', with the digits that tell the two apart (one ulp needs nine)."""
    for digits in (4, 9, 17):
        if f"{got:.{digits}g}" != f"{expected:.{digits}g}":
            break
    return f"{got:.{digits}g} instead of {expected:.{digits}g}"


def _result(check, status, fraction=None, worst=None, detail="", bounds=None) -> Result:
    atol, rtol = bounds if bounds else (None, None)
    return Result(
        check.name,
        check.family,
        check.shape,
        check.dtype,
        check.layout,
        worst,
        fraction,
        atol,
        rtol,
        status,
        check.reference,
        detail,
    )


def run_all(target: Target, checks: Sequence[Check]) -> list[Result]:
    """Every check; failures first, the order of the checks kept within a status."""
    results = [run_check(c, target) for c in checks]
    return sorted(results, key=lambda r: ORDER[r.status])


def family_scores(results: list[Result]) -> dict[str, float]:
    """Each family's fraction of the checks that ran (not skipped) that passed."""
    families = dict.fromkeys(r.family for r in results)
    scores = {}
    for family in families:
        ran = [r for r in results if r.family == family and r.status != SKIPPED]
        if ran:
            scores[family] = sum(r.status == PASS for r in ran) / len(ran)
    return scores


def counts(results: list[Result]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in ORDER}


def describe_failure(r: Result) -> str:
    """'cast bool->float32 wrong: 9.1e-41 instead of 1', 'mm error: CUDA error: ...'."""
    if r.status == FAIL:
        return f"{r.name} wrong" + (f": {r.detail}" if r.detail else "")
    return f"{r.name} {r.status}: {r.detail}"
