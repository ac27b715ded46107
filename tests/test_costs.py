"""Why a device is slower and what it costs: the profiled window of operations on every train
run (outside the timed epochs, on a copy of the model), compare naming the operations behind
a slowdown, CPU fallbacks counted, and peak memory. Stand-in devices are the CPU, labelled so."""

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from conftest import SMALL, pipeline_in
from mlflow import MlflowClient
from test_compare import compare_json, kinds, log_run

from pipeline import devices
from pipeline.schema import Metrics, Tags


def train(folder, data_dir, *extra: str) -> None:
    pipeline_in(folder, "train", "--device", "cpu", *SMALL, "--data-dir", str(data_dir), *extra)


def runs(folder):
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    return client, sorted(client.search_runs(["0"]), key=lambda r: r.info.start_time)


def test_a_train_run_logs_its_operations_without_changing_its_training(tmp_path, data_dir):
    train(tmp_path, data_dir, "--epochs", "2", "--profile-batches", "5")
    train(tmp_path, data_dir, "--epochs", "2", "--profile-batches", "0")
    client, (profiled, plain) = runs(tmp_path)
    path = client.download_artifacts(profiled.info.run_id, "operations.json", str(tmp_path))
    logged = json.loads(Path(path).read_text())
    rows = [dict(zip(logged["columns"], row, strict=True)) for row in logged["data"]]
    names = {r["operation"] for r in rows}
    assert {"aten::addmm", "aten::mm", "aten::relu"} <= names
    assert all(r["batches"] == 5 and r["calls"] > 0 for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert profiled.data.metrics[Metrics.PROFILE_BATCHES] == 5
    assert profiled.data.tags[Tags.PROFILE_NOTE] == "cpu: self time on the host"
    assert "operations.json" not in {a.path for a in client.list_artifacts(plain.info.run_id)}
    # the window trains a copy: the run's own losses and results are those of an unprofiled run
    for key in (Metrics.TRAIN_LOSS, Metrics.TEST_ACCURACY, Metrics.TEST_LOSS):
        a = [m.value for m in client.get_metric_history(profiled.info.run_id, key)]
        b = [m.value for m in client.get_metric_history(plain.info.run_id, key)]
        assert a == b, key


def test_peak_memory_is_measured_and_plausible(tmp_path, data_dir):
    train(tmp_path, data_dir, "--epochs", "1", "--profile-batches", "0")
    _, (run,) = runs(tmp_path)
    peak = run.data.metrics[Metrics.PEAK_MEMORY_MB]
    weights = int(run.data.params["parameters"]) * 4 / 2**20  # the model's size, MiB
    assert weights < peak < 8 * 1024  # above the weights, below a plausible process (8 GiB)
    assert run.data.tags[Tags.PEAK_MEMORY_SOURCE] == "process peak resident set (VmHWM)"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_memory_is_the_allocators():
    device = torch.device("cuda")
    memory = devices.PeakMemory(device)
    block = torch.empty(64 << 20, dtype=torch.uint8, device=device)
    found = memory.metrics()
    assert found[Metrics.PEAK_MEMORY_MB] >= 64 and found[Metrics.RESERVED_MEMORY_MB] >= 64
    del block


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs an mps device")
def test_mps_peak_memory_is_sampled_allocated_memory():
    memory = devices.PeakMemory(torch.device("mps"))
    block = torch.empty(64 << 20, dtype=torch.uint8, device="mps")
    memory.sample()
    assert memory.metrics()[Metrics.PEAK_MEMORY_MB] >= 64
    del block


FALLING_BACK = """
import warnings
from torch import nn

TEXT = ("The operator '{}' is not currently supported on the MPS backend and will fall back to "
        "run on the CPU. This may have performance implications.")


class StandIn(nn.Module):
    '''NOT an MPS device: the CPU, warning through Python's warnings (as DirectML's fallbacks
    do) when two operations fall back; torch's warn-once path: the test after this one.'''

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x):
        warnings.warn(TEXT.format("aten::_linalg_eigh"))
        y = self.net(x)
        warnings.warn(TEXT.format("aten::isin.Tensor_Tensor_out"))
        return y


def make():
    return StandIn()
"""


def test_every_fallback_is_recorded(tmp_path, data_dir):
    (tmp_path / "fallback.py").write_text(FALLING_BACK)
    train(tmp_path, data_dir, "--epochs", "2", "--model", "fallback:make")
    _, (run,) = runs(tmp_path)
    assert run.data.metrics[Metrics.CPU_FALLBACKS] == 2
    assert run.data.tags[Tags.CPU_FALLBACKS] == "aten::_linalg_eigh, aten::isin.Tensor_Tensor_out"


def reverse(x: torch.Tensor) -> torch.Tensor:
    return x.T  # on 3-D: TORCH_WARN_ONCE


def test_a_warning_torch_gives_once_is_recorded_in_every_run(monkeypatch):
    """NOT an MPS fallback: torch's own warn-once path (TORCH_WARN_ONCE, as MPS's fallback
    warning is), through a CPU operation that takes it (x.T on a 3-D tensor), with the
    fallback pattern pointed at its text. Once warned in this process (an earlier run, or
    the model's set-up), it is still recorded during the run."""
    monkeypatch.setattr(devices, "FALLBACK", re.compile(r"The use of `(x\.T)` on tensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reverse(torch.ones(2, 2, 2))  # torch's one warning for this process
    with devices.fallbacks_recorded() as found:
        reverse(torch.ones(2, 2, 2))
    assert found == {"x.T"}


def test_compare_names_fallbacks_on_an_accelerator(cli, client, tmp_path):
    names = "aten::_linalg_eigh, aten::isin.Tensor_Tensor_out"
    log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: 10_000})
    slow = log_run(
        client,
        "mps",
        summary={Metrics.SAMPLES_PER_S: 4_000, Metrics.CPU_FALLBACKS: 2},
        tags={Tags.CPU_FALLBACKS: names},
    )
    result, report = compare_json(cli, tmp_path)
    assert kinds(report, slow) == ["accelerator-slower-than-cpu", "cpu-fallback"]
    found = {f["kind"]: f for f in report["findings"]}
    assert names in found["cpu-fallback"]["message"]
    assert found["cpu-fallback"]["values"]["cpu_fallbacks"] == names.split(", ")
    assert f"ran on the CPU instead: {names}" in found["accelerator-slower-than-cpu"]["message"]
    assert result.code == 1


def operations(**per_call_us: float) -> dict:
    """An operations.json table: 20 batches, the given time a call, 3 calls a batch."""
    rows = [
        {"operation": name, "calls": 60, "us_per_call": us, "us_per_batch": us * 3}
        for name, us in per_call_us.items()
    ]
    total = sum(r["us_per_batch"] for r in rows)
    for r in rows:
        r |= {"share": r["us_per_batch"] / total, "batches": 20}
    columns = list(rows[0])
    return {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}


def test_a_slowdown_names_the_operations_behind_it(cli, client, tmp_path):
    """NOT a GPU: a stand-in whose aten::addmm is four times slower than the CPU's."""
    window = {Metrics.PROFILE_BATCHES: 20}
    cpu = log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: 10_000, **window})
    slow = log_run(client, "cuda:0", summary={Metrics.SAMPLES_PER_S: 5_000, **window})
    tables = {
        cpu: operations(**{"aten::addmm": 100, "aten::mm": 80, "aten::relu": 10}),
        slow: operations(**{"aten::addmm": 400, "aten::mm": 90, "aten::relu": 10}),
    }
    for run_id, table in tables.items():
        client.log_dict(run_id, table, "operations.json")
    result, report = compare_json(cli, tmp_path)
    (finding,) = report["findings"]
    assert finding["kind"] == "accelerator-slower-than-cpu"
    first, second = finding["values"]["operations"]
    assert first["operation"] == "aten::addmm" and first["share_of_slowdown"] > 0.9
    assert (first["us_per_call"], first["baseline_us_per_call"]) == (400, 100)
    assert second["operation"] == "aten::mm"
    assert (
        "where the time goes: aten::addmm 97% of the difference (400 vs 100 µs a call)"
        in (finding["message"])
    )
    assert result.code == 1
