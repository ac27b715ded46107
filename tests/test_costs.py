"""Why a device is slower and what it costs: the profiled window of operations on every train
run (outside the timed epochs, on a copy of the model), compare naming the operations behind
a slowdown, CPU fallbacks counted, and peak memory. Stand-in devices are the CPU, labelled so."""

import json
import re
import sys
import time
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import SMALL, pipeline_in
from mlflow import MlflowClient
from test_compare import compare_json, kinds, log_run

from pipeline import devices
from pipeline.schema import Metrics, Tags
from pipeline.training import costs


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
    assert profiled.data.tags[Tags.PROFILE_STEP] == "eager, sgd"
    assert "operations.json" not in {a.path for a in client.list_artifacts(plain.info.run_id)}
    # the window trains a copy: the run's own losses and results are those of an unprofiled run
    for key in (Metrics.TRAIN_LOSS, Metrics.TEST_ACCURACY, Metrics.TEST_LOSS):
        a = [m.value for m in client.get_metric_history(profiled.info.run_id, key)]
        b = [m.value for m in client.get_metric_history(plain.info.run_id, key)]
        assert a == b, key


def test_the_profiled_window_runs_the_runs_own_optimizer_and_says_it_is_eager():
    from pipeline.training import model, profiling

    cpu = torch.device("cpu")
    batches = [(torch.rand(16, 1, 28, 28), torch.arange(16) % 10)] * 2
    net, fp32 = model.build(hidden=8, layers=1), devices.Precision("fp32", cpu)

    def operations(optimizing):
        window = profiling.profile_window(net, batches, 0.1, cpu, fp32, 2, None, optimizing)
        return {row["operation"] for row in window}

    adamw = {"name": "adamw", "weight_decay": 0.01, "momentum": 0.9}
    sgd = operations({"name": "sgd", "weight_decay": 0.0, "momentum": 0.0})
    assert {"aten::lerp_", "aten::addcdiv_"} <= operations(adamw) - sgd  # AdamW's update
    assert "aten::zeros_like" not in operations(adamw)  # its moments made before the window
    assert profiling.describe_step(adamw) == "eager, adamw (weight_decay 0.01)"  # no momentum
    assert profiling.describe_step(adamw, "default").startswith(
        "eager, adamw (weight_decay 0.01); the run is compiled (default): the window profiles "
        "the step's eager operations, not torch.compile's kernels"
    )


def test_peak_memory_is_measured_and_plausible(tmp_path, data_dir):
    train(tmp_path, data_dir, "--epochs", "1", "--profile-batches", "0")
    _, (run,) = runs(tmp_path)
    peak = run.data.metrics[Metrics.PEAK_MEMORY_MB]
    weights = int(run.data.params["parameters"]) * 4 / 2**20  # the model's size, MiB
    assert weights < peak < 8 * 1024  # above the weights, below a plausible process (8 GiB)
    assert run.data.tags[Tags.PEAK_MEMORY_SOURCE] == costs.PeakMemory(torch.device("cpu")).source


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_memory_is_the_allocators():
    device = torch.device("cuda")
    memory = costs.PeakMemory(device)
    memory.resume()
    block = torch.empty(64 << 20, dtype=torch.uint8, device=device)
    memory.pause()
    found = memory.metrics()
    assert found[Metrics.PEAK_MEMORY_MB] >= 64 and found[Metrics.RESERVED_MEMORY_MB] >= 64
    del block


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs an mps device")
def test_mps_peak_memory_is_sampled_allocated_memory():
    memory = costs.PeakMemory(torch.device("mps"))
    memory.resume()
    block = torch.empty(64 << 20, dtype=torch.uint8, device="mps")
    time.sleep(4 * costs.SAMPLE_EVERY_S)
    del block
    memory.pause()
    assert memory.metrics()[Metrics.PEAK_MEMORY_MB] >= 64


class StandInAllocator:
    """NOT CUDA: torch.cuda's peak statistics over a level the test sets (bytes)."""

    def __init__(self, monkeypatch):
        self.level = self.peak = 0
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self.reset)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: self.peak)
        monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: self.peak)

    def reset(self, device=None):
        self.peak = self.level

    def to(self, level: int):
        self.level, self.peak = level, max(self.peak, level)


def test_cuda_peak_memory_covers_the_epochs_not_compilation_or_the_profiled_window(monkeypatch):
    allocator, mib = StandInAllocator(monkeypatch), 1 << 20
    monkeypatch.setattr(costs, "vm_hwm", lambda: None)  # a host without VmHWM (Windows)
    memory = costs.PeakMemory(torch.device("cuda"))
    allocator.to(700 * mib)  # compilation before the first epoch: a copy of the state, ...
    allocator.to(100 * mib)
    for epoch_peak, window_peak in ((300, 900), (320, None)):
        memory.resume()
        allocator.to(epoch_peak * mib)
        allocator.to(100 * mib)  # the epoch's activations freed
        memory.pause()
        if window_peak:  # the window: a copy of the model and the profiler's buffers
            allocator.to(window_peak * mib)
            allocator.to(100 * mib)
    assert memory.metrics()[Metrics.PEAK_MEMORY_MB] == 320
    assert memory.sampler is None  # the allocator keeps its peak: nothing sampled beside it


def test_where_nothing_keeps_a_peak_it_is_sampled_during_the_epochs(monkeypatch):
    """NOT mps: a CPU without VmHWM (as macOS), whose resident set peaks inside an epoch and
    falls before it ends, as activations are freed: sampled after the epoch, it is missed."""
    monkeypatch.setattr(costs, "vm_hwm", lambda: None)
    level = [100 << 20]
    monkeypatch.setattr(costs.psutil, "Process", lambda: SimpleNamespace(
        memory_info=lambda: SimpleNamespace(rss=level[0])))  # fmt: skip
    memory = costs.PeakMemory(torch.device("cpu"))
    assert memory.source == "process resident set, sampled during the epochs"
    memory.resume()
    level[0] = 700 << 20
    time.sleep(6 * costs.SAMPLE_EVERY_S)
    level[0] = 100 << 20
    memory.pause()
    assert memory.metrics()[Metrics.PEAK_MEMORY_MB] == 700


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
    with pytest.warns(UserWarning, match="x.T"), devices.fallbacks_recorded() as found:
        reverse(torch.ones(2, 2, 2))  # recorded, and printed once
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


class StandInNVML(types.ModuleType):
    """NOT NVML: the machine's GPUs in PCI order, as NVML numbers them whatever
    CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER say; each GPU's counter in millijoules."""

    def __init__(self, gpus: list[dict], by_uuid: bool = True):
        super().__init__("pynvml")
        self.gpus, self.by_uuid = gpus, by_uuid

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if not self.by_uuid:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return next(g for g in self.gpus if g["uuid"] == uuid)

    def nvmlDeviceGetHandleByPciBusId(self, bus):
        return next(g for g in self.gpus if g["bus"] == bus)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return handle["mj"]

    NVML_DEVICE_MIG_ENABLE = 1

    def nvmlDeviceGetMigMode(self, handle):
        if "mig" not in handle:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")  # a GPU without MIG
        return handle["mig"], handle["mig"]


def two_gpus(monkeypatch, by_uuid: bool = True) -> list[dict]:
    """NVML's GPU 0 and 1; torch's cuda:0 is NVML's 1 (CUDA_VISIBLE_DEVICES=1, or CUDA's
    fastest-first order)."""
    gpus = [
        {"uuid": "GPU-0000aaaa-0000-0000-0000-000000000000", "bus": "00000000:01:00.0", "mj": 0},
        {"uuid": "GPU-0000bbbb-0000-0000-0000-000000000000", "bus": "00000000:41:00.0", "mj": 0},
    ]
    monkeypatch.setitem(sys.modules, "pynvml", StandInNVML(gpus, by_uuid))
    second = SimpleNamespace(
        uuid="0000bbbb-0000-0000-0000-000000000000",  # as torch prints it
        pci_domain_id=0,
        pci_bus_id=0x41,
        pci_device_id=0,
    )
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: second)
    return gpus


@pytest.mark.parametrize("by_uuid", [True, False], ids=["by UUID", "by PCI bus id"])
def test_energy_comes_from_the_gpu_torch_runs_on(monkeypatch, by_uuid):
    gpus = two_gpus(monkeypatch, by_uuid)
    gpus[0]["mj"], gpus[1]["mj"] = 5_000, 7_000
    counter = costs.energy_counter(torch.device("cuda:0"))
    assert counter() == 7.0  # joules, NVML's GPU 1


@pytest.mark.parametrize("by_uuid", [True, False], ids=["by UUID", "by PCI bus id"])
def test_no_energy_is_claimed_on_a_gpu_split_into_mig_instances(monkeypatch, by_uuid):
    """The counter covers the whole GPU, every MIG instance's work: not this run's."""
    gpus = two_gpus(monkeypatch, by_uuid)
    gpus[1]["mig"] = 0  # MIG off: counted
    assert costs.energy_counter(torch.device("cuda:0")) is not None
    gpus[1]["mig"] = 1
    assert costs.energy_counter(torch.device("cuda:0")) is None


def test_energy_counts_the_epochs_and_divides_the_samples_they_processed(monkeypatch):
    """Read when each epoch starts and ends: the profiled window between two epochs is left
    out; samples per joule over the same passes."""
    gpus = two_gpus(monkeypatch)
    cpu_memory = costs.PeakMemory(torch.device("cpu"))
    monkeypatch.setattr(costs, "PeakMemory", lambda device: cpu_memory)  # no CUDA allocator
    run = costs.Costs(torch.device("cuda:0"))
    for joules in (100, 150, 1150, 1200):  # epoch 1 (50 J), the window (1,000 J), epoch 2 (50 J)
        gpus[1]["mj"] = joules * 1000
        if joules in (100, 1150):
            run.resume()
        else:
            run.pause()
    found = run.metrics(samples=500)
    assert found[Metrics.ENERGY_J] == 100 and found[Metrics.SAMPLES_PER_J] == 5
    assert run.tags(set())[Tags.ENERGY_SOURCE] == costs.ENERGY_SOURCE


def test_no_energy_is_claimed_on_the_cpu(monkeypatch):
    two_gpus(monkeypatch)  # NVML answering, as on a machine with GPUs: the CPU has no counter
    run = costs.Costs(torch.device("cpu"))
    run.resume()
    run.pause()
    assert Metrics.ENERGY_J not in run.metrics(samples=500)
    assert Tags.ENERGY_SOURCE not in run.tags(set())


def test_a_train_run_divides_the_samples_of_the_passes_its_energy_covers(cli, client, monkeypatch):
    """NOT a GPU: the CPU with a stand-in counter that gains one joule for every image the
    model's classifier (its last layer, 10 outputs) has seen: the work done, not the readings
    taken. Energy covers each epoch's training and test passes and the first epoch's warm-up
    evaluation batch, nothing else (not the parity probe, not the profiled window between the
    epochs); the samples, the same passes."""
    seen = [0]

    def count(module, args, output):
        if isinstance(module, torch.nn.Linear) and module.out_features == 10:
            seen[0] += args[0].shape[0]

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        monkeypatch.setattr(costs, "energy_counter", lambda device: lambda: float(seen[0]))
        assert cli("train", "--device", "cpu", "--epochs", "2", *SMALL, "--quiet").code == 0
    finally:
        hook.remove()
    (run,) = client.search_runs(["0"])
    metrics = run.data.metrics
    assert seen[0] > (640 + 128) * 2  # the probe and the window ran the model too
    covered = (640 + 128) * 2 + 64  # the epochs' passes and the warm-up batch, and only them
    assert metrics[Metrics.ENERGY_J] == covered
    assert metrics[Metrics.SAMPLES_PER_J] == 1
