"""doctor: every check passes on the CPU; on a stand-in device (the CPU with one operation
deliberately broken, and labelled so) the broken family's checks fail, by name, and only the
checks that share the broken operation fail with them."""

import json
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from mlflow import MlflowClient
from test_compare import compare_json, log_run

from pipeline import doctor
from pipeline.schema import Stages, Tags


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
    return doctor.Target(f"cpu (stand-in: {what})", lambda t: t.clone().as_subclass(device))


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


def failing(target: doctor.Target) -> set[str]:
    return {r.name for r in doctor.run_all(target) if r.status != "pass"}


CASTS = {torch.Tensor.to, torch.Tensor.type, torch.Tensor.float}
FAULTS = {
    "casts": (
        broken(
            CASTS,
            lambda a, k, r: torch.where(r != 0, torch.tensor(9e-41), r),
            lambda a, k, r: a[0].dtype == torch.bool and r.dtype == torch.float32,
        ),
        {"cast bool->float32", "cast bool->float32, strided", "the quickstart's accuracy line"},
        set(),
    ),
    "reductions": (
        broken(
            {torch.Tensor.sum},
            lambda a, k, r: r * 0.5,
            lambda a, k, r: not a[0].is_contiguous() and -1 in (*a[1:], k.get("dim")),
        ),
        {"sum along dim -1 of a slice"},
        set(),
    ),
    "argmax": (
        broken({torch.Tensor.argmax}, lambda a, k, r: torch.zeros_like(r)),
        {
            "argmax of float32 rows of 10",
            "argmax of float32 rows of 1000",
            "argmax of int64 rows of 10",
            "argmax of int64 rows of 1000",
            "argmax with ties",
        },
        {"the quickstart's accuracy line"},  # it takes an argmax
    ),
    "comparisons": (
        broken(
            {torch.eq, torch.Tensor.__eq__, torch.Tensor.eq},
            lambda a, k, r: ~r,
            lambda a, k, r: not a[0].is_contiguous(),
        ),
        {"== on sliced view int64"},
        {"cast bool->float32, strided", "cast bool->int64, strided"},  # they compare a slice
    ),
    "linear": (
        broken(
            {torch.matmul},
            lambda a, k, r: torch.cat([r[..., :32768], torch.zeros_like(r[..., 32768:])], -1),
            lambda a, k, r: r.shape[-1] > 32768,
        ),
        {"matmul, 40000 output columns"},
        set(),
    ),
    "linear, layout": (  # a non-contiguous weight read as if it were contiguous
        broken(
            {torch.nn.functional.linear},
            lambda a, k, r: torch.nn.functional.linear(
                a[0], torch.as_strided(a[1], a[1].shape, (a[1].shape[1], 1)), *a[2:]
            ),
            lambda a, k, r: not a[1].is_contiguous(),
        ),
        {"linear, non-contiguous weight"},
        set(),
    ),
    "conv2d": (
        broken({torch.nn.functional.conv2d}, lambda a, k, r: r * 1.01),
        {"conv2d forward, MNIST's first layer", "conv2d backward, MNIST's second layer"},
        set(),
    ),
    "loss": (
        broken({torch.nn.functional.cross_entropy}, lambda a, k, r: r * 1.01),
        {"cross_entropy forward and backward"},
        {"the workload: forward, backward, SGD step"},  # its loss is a cross entropy
    ),
    "optimizer": (
        broken({torch.Tensor.addcdiv_}, lambda a, k, r: r.mul_(1.001)),
        {"Adam steps (addcdiv_)", "Adam steps, non-contiguous parameter"},
        set(),
    ),
    "workload": (
        broken({torch.relu, torch.nn.functional.relu}, lambda a, k, r: r * 1.01),
        {"the workload: forward, backward, SGD step"},
        set(),
    ),
}


def test_every_check_passes_on_the_cpu():
    results = doctor.run_all(doctor.on(torch.device("cpu")))
    assert {r.status for r in results} == {"pass"}, [r for r in results if r.status != "pass"]
    assert set(doctor.FAMILIES) == {
        "casts",
        "reductions",
        "argmax",
        "comparisons",
        "linear",
        "conv2d",
        "loss",
        "optimizer",
        "workload",
    }
    assert len({r.name for r in results}) == len(results)  # names are unique


@pytest.mark.parametrize("family", FAULTS)
def test_a_broken_operation_fails_its_checks_and_no_others(family):
    fault, expected, sharers = FAULTS[family]
    found = failing(stand_in(f"{family} broken", fault))
    assert expected <= found, f"missed: {expected - found}"
    assert found <= expected | sharers, f"also failed: {found - expected - sharers}"


def test_the_failure_says_what_came_back():
    fault = FAULTS["casts"][0]
    results = doctor.run_all(stand_in("bool->float32 cast broken", fault))
    first = results[0]  # failures first
    assert first.status == "fail" and first.family == "casts"
    assert doctor.describe_failure(first).startswith(f"{first.name} wrong: 9e-41 instead of 1")
    assert first.mismatch_fraction > 0 and first.max_abs_diff == pytest.approx(1.0)


def test_an_operation_the_device_lacks_is_unsupported_and_the_rest_go_on():
    def missing(func, args, kwargs, result):
        if func is torch.Tensor.cumsum:
            raise NotImplementedError("cumsum is not implemented for this device")
        return result

    results = doctor.run_all(stand_in("no cumsum", missing))
    unsupported = {r.name for r in results if r.status == "unsupported"}
    assert unsupported == {"cumsum of bool", "cumsum of int8"}
    assert all(r.status == "pass" for r in results if r.name not in unsupported)
    assert "not implemented" in next(r.detail for r in results if r.status == "unsupported")


def test_the_doctor_command_logs_a_run_and_writes_json(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "doctor.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "doctor", "--device", "cpu", "--output-json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**_env(), "MLFLOW_TRACKING_URI": store},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and len(report["checks"]) == len(doctor.CHECKS)
    fields = {"name", "family", "shape", "dtype", "layout", "max_abs_diff", "mismatch_fraction"}
    assert fields | {"tolerance", "status", "reference"} <= set(report["checks"][0])
    assert f"{len(doctor.CHECKS)} of {len(doctor.CHECKS)} checks passed" in proc.stdout
    client = MlflowClient(store)
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FINISHED" and run.data.tags[Tags.STAGE] == Stages.DOCTOR
    assert run.data.tags[Tags.DEVICE] == "cpu"
    assert {f"passed_{f}" for f in doctor.FAMILIES} <= set(run.data.metrics)
    assert "doctor.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "every check passed" in run.data.tags[Tags.NOTE]


def test_a_device_this_machine_lacks_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "doctor", "--device", "cuda:7"],
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
