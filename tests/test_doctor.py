"""doctor: every check passes on the CPU; on a stand-in device (the CPU with its operations
deliberately broken, and labelled so) every check can fail, and says what came back; statuses
and exit codes. That one broken operation fails exactly the checks that run it:
test_doctor_specificity.py."""

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager

import pytest
import torch
from mlflow import MlflowClient
from test_compare import compare_json, log_run
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from pipeline import devices
from pipeline.doctor import battery, replay
from pipeline.doctor import checks as doctor
from pipeline.schema import Stages, Tags

CPU = torch.device("cpu")


def cpu_precision(precision: str):
    """A stand-in device runs each precision as the CPU does (autocast there)."""
    return devices.Precision(precision, CPU).context()


class StandIn(torch.Tensor):
    """A tensor on a stand-in device: the CPU, with `fault` applied to every result."""

    fault: Callable | None = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        result = super().__torch_function__(func, types, args, kwargs or {})
        return cls.fault(func, args, kwargs or {}, result)


def plain(t):
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


def stand_in(what: str, fault: Callable) -> doctor.Target:
    """A stand-in device whose results pass through fault(func, args, kwargs, result)."""
    device = type("StandInDevice", (StandIn,), {"fault": staticmethod(fault)})
    return doctor.Target(
        f"cpu (stand-in: {what})",
        lambda t: doctor.replicate(t, CPU).as_subclass(device),
        context=cpu_precision,
    )


def broken(funcs, wrong: Callable, when: Callable = lambda args, kwargs, result: True):
    """A fault: the results of `funcs` are replaced by wrong(plain args, plain result) when
    `when` holds."""

    def fault(func, args, kwargs, result):
        if func not in funcs or not isinstance(result, torch.Tensor):
            return result
        args = [plain(a) for a in args]
        kwargs = {k: plain(v) for k, v in kwargs.items()}
        if not when(args, kwargs, plain(result)):
            return result
        return wrong(args, kwargs, plain(result)).as_subclass(type(result))

    return fault


CASTS = {torch.Tensor.to, torch.Tensor.type, torch.Tensor.float}
# A device whose bool->float32 cast turns true into a denormal (as mps's did, pytorch#77835).
DENORMAL_TRUE = broken(
    CASTS,
    lambda a, k, r: torch.where(r != 0, torch.tensor(9e-41), r),
    lambda a, k, r: a[0].dtype == torch.bool and r.dtype == torch.float32,
)


WORKLOADS = {m: {"model": m, "hidden": 512, "layers": 2} for m in ("mlp", "cnn", "vit")}


def test_every_check_passes_on_the_cpu():
    checks = [*battery.CHECKS, *(c for w in WORKLOADS.values() for c in replay.checks_of(w))]
    results = doctor.run_all(doctor.on(CPU), checks)
    wrong = [r for r in results if r.status not in ("pass", "skipped")]
    assert wrong == []
    skipped = {r.name for r in results if r.status == "skipped"}
    assert skipped == {"aten::bernoulli_ 64x9216 float32", "aten::bernoulli_ 64x128 float32"}
    assert {r.family for r in results} == {
        "casts",
        "reductions",
        "argmax",
        "comparisons",
        "linear",
        "conv2d",
        "loss",
        "optimizer",
        "workload",
        "model",
    }
    names = [c.name for c in battery.CHECKS]
    assert len(set(names)) == len(names)  # names are unique
    for workload in WORKLOADS.values():
        names = [c.name for c in replay.checks_of(workload)]
        assert len(set(names)) == len(names)


class Corrupt(TorchDispatchMode):
    """A stand-in device's fault: the results of `ops` (every operation when None) come back
    off by 10x the check's tolerance at the result's own scale (one ulp for an exact check);
    integers off by one, a boolean flipped. In-place operations are corrupted in place."""

    def __init__(self, check: doctor.Check, ops=None):
        super().__init__()
        self.check, self.ops = check, ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if self.ops is not None and func not in self.ops:
            return result
        named = dict(zip((a.name for a in func._schema.arguments), args, strict=False))
        named |= kwargs or {}
        written = [
            named[arg.name]
            for arg in func._schema.arguments
            if arg.alias_info is not None and arg.alias_info.is_write and arg.name in named
        ]
        if written:
            for t in doctor.tensors_of(written):
                t.copy_(self.wrong(t))
            return result
        return tree_map(lambda r: self.wrong(r) if isinstance(r, torch.Tensor) else r, result)

    def wrong(self, t: torch.Tensor) -> torch.Tensor:
        if t.numel() == 0:
            return t
        if t.dtype == torch.bool:
            flat = t.clone().flatten()
            flat[0] = ~flat[0]
            return flat.view(t.shape)
        if not t.is_floating_point():
            flat = t.clone().flatten()
            flat[0] += 1
            return flat.view(t.shape)
        bounds = doctor.tolerance(self.check, t.dtype)
        if bounds is None:  # an exact check: one ulp off is wrong
            flat = t.clone().flatten()
            flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf"), dtype=t.dtype))
            return flat.view(t.shape)
        atol, rtol = bounds
        return t * (1 + 10 * (atol + rtol))


def corrupting(check: doctor.Check, ops=None) -> doctor.Target:
    """The CPU, with `ops` (or every operation) of the device side corrupted."""

    @contextmanager
    def context(precision):
        with cpu_precision(precision), Corrupt(check, ops):
            yield

    return doctor.Target(
        "cpu (stand-in: results off by 10x the tolerance)", copy_on_cpu, context=context
    )


def copy_on_cpu(t: torch.Tensor) -> torch.Tensor:
    return doctor.replicate(t, CPU)


@pytest.mark.parametrize("check", battery.CHECKS, ids=lambda c: c.name)
def test_every_battery_check_fails_under_its_own_corruption(check):
    """Each check, its operation's results off by 10x its tolerance: a check that cannot
    fail checks nothing."""
    assert doctor.run_check(check, doctor.on(CPU)).status == "pass"
    result = doctor.run_check(check, corrupting(check))
    assert result.status == "fail", result


def test_a_small_output_is_checked_at_its_own_scale():
    """An SGD update of about 1e-6 that is 10% wrong fails; the same update right passes.
    NaN must meet NaN, an infinity the same infinity."""
    check = next(c for c in battery.CHECKS if c.name == "SGD step, as train builds it")
    update = torch.full((100,), 1e-6)
    assert doctor.compare(check, [update * 1.1], [update.double()]).status == "fail"
    assert doctor.compare(check, [update.clone()], [update.double()]).status == "pass"
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    assert doctor.compare(check, [special.clone()], [special.double()]).status == "pass"
    for wrong in (
        [0.0, float("inf"), -float("inf"), 1.0],
        [float("nan"), -float("inf"), -float("inf"), 1.0],
    ):
        assert doctor.compare(check, [torch.tensor(wrong)], [special.double()]).status == "fail"


def raising(error: Exception) -> doctor.Target:
    class Raise(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            raise error

    @contextmanager
    def context(precision):
        with Raise():
            yield

    return doctor.Target(
        f"cpu (stand-in: every operation raises {error!r})", copy_on_cpu, context=context
    )


def test_a_device_that_raises_is_an_error_not_a_pass(cli, client, tmp_path, monkeypatch):
    """A sticky CUDA error makes every operation raise: every check that runs is an error,
    doctor exits 1, and its note and compare say so."""
    sticky = RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(doctor, "on", lambda device: raising(sticky))
    out = tmp_path / "doctor.json"
    result = cli("doctor", "--device", "cpu", "--model", "cnn", "--output-json", str(out))
    assert result.code == 1
    statuses = {c["status"] for c in json.loads(out.read_text())["checks"]}
    assert statuses == {"error", "skipped"}
    assert "nothing could be checked on cpu: 0 unsupported, " in result.stderr
    assert "truncated" not in result.stderr  # the run's description fits a tag
    (run,) = client.search_runs(["0"])
    assert "illegal memory access" in run.data.tags[Tags.NOTE]
    assert "illegal memory access" in run.data.tags[Tags.DOCTOR_FAILURES]
    assert run.data.metrics["checks_error"] > 0 and run.data.metrics["checks_pass"] == 0
    log_run(client, "cpu", host=run.data.tags[Tags.HOST], accuracy=[0.7], test_loss=[0.79])
    log_run(client, "cpu", host=run.data.tags[Tags.HOST], accuracy=[0.0], test_loss=[0.79])
    _, report = compare_json(cli, tmp_path)
    message = next(
        f["message"] for f in report["findings"] if f["kind"] == "accuracy-inconsistent-with-loss"
    )
    assert f"doctor run {run.info.run_id[:8]} on this host found: " in message
    assert "error: CUDA error: an illegal memory access" in message


def test_a_device_that_lacks_every_operation_checks_nothing(cli, client, tmp_path, monkeypatch):
    """Nothing passed: exit 1 (even though nothing failed) with one line saying so."""
    missing = NotImplementedError("not implemented for this device")
    monkeypatch.setattr(doctor, "on", lambda device: raising(missing))
    out = tmp_path / "doctor.json"
    result = cli("doctor", "--device", "cpu", "--output-json", str(out))
    assert result.code == 1
    checks = json.loads(out.read_text())["checks"]
    assert {c["status"] for c in checks} == {"unsupported"}
    assert (
        result.stderr.strip()
        == f"nothing could be checked on cpu: {len(checks)} unsupported, 0 errors"
    )
    (run,) = client.search_runs(["0"])
    assert "no check could run" in run.data.tags[Tags.NOTE]
    assert f"doctor run {run.info.run_id} logged" in result.stdout


def listed(stdout: str) -> Counter:
    """The statuses of the rows of doctor's table, as printed."""
    return Counter(re.findall(r"^│ (\w+) +│", stdout, re.MULTILINE))


def test_doctor_lists_what_needs_a_look_and_with_verbose_every_check(cli, tmp_path, monkeypatch):
    """A device whose bool->float32 cast is broken: the short output lists the checks that
    failed (not the passing ones) above its summary line; --verbose lists every check."""
    monkeypatch.setattr(doctor, "on", lambda device: stand_in("cast broken", DENORMAL_TRUE))
    out = tmp_path / "doctor.json"
    short = cli("doctor", "--device", "cpu", "--output-json", str(out))
    statuses = Counter(c["status"] for c in json.loads(out.read_text())["checks"])
    assert short.code == 1 and statuses["fail"] and statuses["pass"]
    assert listed(short.stdout) == {"fail": statuses["fail"]}
    total = sum(statuses.values())
    assert f"the {statuses['fail']} of {total} checks that failed, raised" in short.stdout
    summary = f"cpu: {statuses['pass']} of {total} checks passed; {statuses['fail']} failed: "
    assert summary in short.stdout
    verbose = cli("doctor", "--device", "cpu", "--verbose")
    assert listed(verbose.stdout) == statuses and summary in verbose.stdout
    assert "checks that failed, raised" not in verbose.stdout


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ("\"addmm_cuda\" not implemented for 'Bool'", "unsupported"),
        ("aten::isin is not currently implemented for the MPS device", "unsupported"),
        ("The operator 'aten::x' is not currently supported on the MPS backend", "unsupported"),
        ("MPS does not support cumsum op with int64 input", "unsupported"),
        ("CUDA error: operation not supported", "error"),
        ("CUDA error: operation not supported when stream is capturing", "error"),
        ("HIP error: operation not supported", "error"),
        ("operation not supported", "error"),
        ("CUDA error: an illegal memory access was encountered", "error"),
    ],
)
def test_only_a_missing_operation_is_unsupported(message, status):
    assert doctor.status_of(RuntimeError(message)) == status
    assert doctor.status_of(NotImplementedError(message)) == "unsupported"


def test_the_cpu_reference_raising_is_an_error():
    def reference_only(*tensors):
        if tensors[0].dtype == torch.float64:
            raise RuntimeError("reference broke")
        return tensors[0]

    check = doctor.Check(
        "x", "casts", "1", "float32", "contiguous", "", lambda g: (torch.ones(1),), reference_only
    )
    result = doctor.run_check(check, doctor.on(CPU))
    assert result.status == "error" and "the CPU reference raised" in result.detail


def test_the_failure_says_what_came_back():
    fault = DENORMAL_TRUE
    results = doctor.run_all(stand_in("bool->float32 cast broken", fault), battery.CHECKS)
    first = results[0]  # failures first
    assert first.status == "fail" and first.family == "casts"
    assert doctor.describe_failure(first).startswith(f"{first.name} wrong: 9e-41 instead of 1")
    assert first.mismatch_fraction > 0 and first.max_abs_diff == pytest.approx(1.0)


def test_an_operation_the_device_lacks_is_unsupported_and_the_rest_go_on():
    def missing(func, args, kwargs, result):
        if func is torch.Tensor.cumsum:
            raise NotImplementedError("cumsum is not implemented for this device")
        return result

    results = doctor.run_all(stand_in("no cumsum", missing), battery.CHECKS)
    unsupported = {r.name for r in results if r.status == "unsupported"}
    assert unsupported == {"cumsum of bool", "cumsum of int8"}
    assert all(r.status == "pass" for r in results if r.name not in unsupported)
    assert "not implemented" in next(r.detail for r in results if r.status == "unsupported")


USER_MODEL = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.embed = nn.Linear(49, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width * 16, 10)

    def forward(self, x):
        patches = x.unfold(2, 7, 7).unfold(3, 7, 7).reshape(x.shape[0], 16, 49)
        h = nn.functional.gelu(self.norm(self.embed(patches)))
        return self.head(h.flatten(1))


def make(width=32):
    return Tiny(width)
"""


def test_your_own_models_operations_are_checked(tmp_path):
    (tmp_path / "mymodels.py").write_text(USER_MODEL)
    out = tmp_path / "doctor.json"
    model = ["--model", "mymodels:make", "--model-option", "width=24"]
    command = ["doctor", "--device", "cpu", *model, "--output-json", str(out), "--quiet"]
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    checks = json.loads(out.read_text())["checks"]
    model_ops = {c["name"].split(" ")[0] for c in checks if c["family"] == "model"}
    assert {
        "aten::native_layer_norm",
        "aten::native_layer_norm_backward",
        "aten::gelu",
    } <= model_ops
    assert {"aten::gelu_backward", "aten::addmm", "aten::add_"} <= model_ops
    assert any(c["name"] == "aten::native_layer_norm 64x16x24 float32" for c in checks)
    assert {c["status"] for c in checks} == {"pass"}
    families = [c["family"] for c in checks if c["status"] == "pass"]
    assert families.index("model") > families.index("workload")  # after the battery


def test_the_doctor_command_logs_a_run_and_writes_json(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "doctor.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "doctor", "--device", "cpu", "--output-json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**_env(), "MLFLOW_TRACKING_URI": store},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    n = len(report["checks"])
    assert report["device"] == "cpu" and n == len(battery.CHECKS) + len(
        replay.checks_of(WORKLOADS["mlp"])
    )
    fields = {"name", "family", "shape", "dtype", "layout", "max_abs_diff", "mismatch_fraction"}
    assert fields | {"atol", "rtol", "status", "reference"} <= set(report["checks"][0])
    client = MlflowClient(store)
    (run,) = client.search_runs(["0"])
    # every check passed: the summary, no table (--verbose lists them)
    assert proc.stdout.splitlines() == [
        f"cpu: {n} of {n} checks passed",
        f"doctor run {run.info.run_id} logged",
    ]
    assert run.info.status == "FINISHED" and run.data.tags[Tags.STAGE] == Stages.DOCTOR
    assert run.data.tags[Tags.DEVICE] == "cpu"
    assert {f"passed_{c['family']}" for c in report["checks"]} <= set(run.data.metrics)
    assert run.data.metrics["checks_pass"] == n
    assert "doctor.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert f"all {n} checks that ran passed" in run.data.tags[Tags.NOTE]


def test_a_device_this_machine_lacks_is_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "doctor",
            "--device",
            f"cuda:{torch.cuda.device_count()}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "not available here" in proc.stderr


def _env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def test_an_accuracy_finding_names_the_doctor_runs_failures(cli, client, tmp_path):
    log_run(client, "cpu", host="mac", accuracy=[0.7], test_loss=[0.79])
    mps = log_run(client, "mps", host="mac", accuracy=[0.0], test_loss=[0.79])
    result, report = compare_json(cli, tmp_path)
    message = next(f["message"] for f in report["findings"] if f["kind"] == "accuracy-mismatch")
    assert "run `python -m pipeline doctor --device mps` on mac" in message
    doctor_run = client.create_run("0", run_name="doctor-mps")
    failure = "cast bool->float32 wrong: 9e-41 instead of 1"
    for key, value in {
        Tags.STAGE: Stages.DOCTOR,
        Tags.DEVICE: "mps",
        Tags.HOST: "mac",
        Tags.DOCTOR_FAILURES: failure,
    }.items():
        client.set_tag(doctor_run.info.run_id, key, value)
    client.set_terminated(doctor_run.info.run_id)
    result, report = compare_json(cli, tmp_path, "--run-id", mps)
    message = next(f["message"] for f in report["findings"] if f["kind"] == "accuracy-mismatch")
    assert f"doctor run {doctor_run.info.run_id[:8]} on this host found: {failure}" in message
    assert result.code == 1


class PoolIndices(TorchDispatchMode):
    """A stand-in device's max_pool2d_with_indices: the CPU's maxima, the given indices."""

    def __init__(self, indices: list):
        super().__init__()
        self.indices = torch.tensor(indices).view(1, 1, 2, 2)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.max_pool2d_with_indices.default:
            return result[0], self.indices.clone()
        return result


def pooled(x: torch.Tensor) -> doctor.Check:
    """The replayed check of a 2x2 max-pool with indices of x (1x1x4x4)."""
    recorder = replay.Recorder()
    with recorder:
        torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    (check,) = replay.checks_from(list(recorder.calls.values()), "a 2x2 max-pool")
    return check


def picking(indices: list) -> doctor.Target:
    @contextmanager
    def context(precision):
        with PoolIndices(indices):
            yield

    return doctor.Target("cpu (stand-in: max-pool indices as given)", copy_on_cpu, context=context)


def test_max_pool_indices_are_checked_without_ties():
    """All-zero windows (ReLU's zeros): the CPU picks each window's first index, a device may
    pick its last; an index outside its window, or at a smaller value, is wrong."""
    ties = pooled(torch.zeros(1, 1, 4, 4))
    assert doctor.run_check(ties, picking([0, 2, 8, 10])).status == "pass"  # the CPU's
    assert doctor.run_check(ties, picking([5, 7, 13, 15])).status == "pass"  # the last of each
    assert doctor.run_check(ties, picking([15, 2, 8, 10])).status == "fail"  # outside its window
    assert doctor.run_check(ties, picking([99, 2, 8, 10])).status == "fail"  # outside the input
    distinct = pooled(torch.arange(16.0).view(1, 1, 4, 4))  # maxima at 5, 7, 13, 15
    assert doctor.run_check(distinct, picking([5, 7, 13, 15])).status == "pass"
    assert doctor.run_check(distinct, picking([4, 7, 13, 15])).status == "fail"
