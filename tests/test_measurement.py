"""Measurement quality: the instrument stays out of the measured process, warm-up kept out of
the throughput, time to accuracy."""

import os
import subprocess
import sys

import pytest
from conftest import SMALL, only_run

from pipeline import devices
from pipeline.schema import Metrics, Params, Tags
from pipeline.training import loops
from pipeline.training import stage as stages

GLIBC = devices.keep_freed_host_memory() == devices.ALLOCATOR_KEEPS_FREED

# An epoch of the quickstart's MLP in a process with MLflow's client loaded, as `train` runs
# it; prints the minor page faults of the last of three epochs.
EPOCH_FAULTS = """
import resource, sys, torch
from mlflow import MlflowClient
from pipeline import devices
from pipeline.training import data, loops, model
MlflowClient("sqlite:///" + sys.argv[2]).search_experiments()
if sys.argv[1] == "kept":
    devices.keep_freed_host_memory()
x = torch.randint(0, 256, (19_200, 1, 28, 28), dtype=torch.uint8)
batches = data.TensorBatches(x, torch.randint(0, 10, (19_200,)), 64)
cpu = torch.device("cpu")
net = model.initialised({"model": "mlp", "hidden": 512, "layers": 2}, 0, cpu)
optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    loops.train_epoch(net, batches, optimizer, loops.LossBuffer(len(batches), cpu))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def epoch(n: int, train: float, acc: float = 0.5) -> loops.Epoch:
    return loops.Epoch(n, train_time_s=train, eval_time_s=0.1, test_loss=1.0, test_accuracy=acc)


def test_throughput_is_steady_state_after_the_first_epoch():
    epochs = [epoch(1, 10.0), epoch(2, 1.0), epoch(3, 1.0)]
    summary = stages._summary(epochs, samples=1000, time_to_target=None)
    assert summary[Metrics.SAMPLES_PER_S] == pytest.approx(1000.0)  # not 3000 / 12
    assert summary[Metrics.FIRST_EPOCH_TIME_S] == pytest.approx(10.1)
    assert summary[Metrics.TRAIN_TIME_S] == pytest.approx(12.0)
    assert Metrics.TIME_TO_TARGET_S not in summary


def test_with_one_epoch_throughput_is_that_epoch():
    summary = stages._summary([epoch(1, 4.0)], samples=1000, time_to_target=None)
    assert summary[Metrics.SAMPLES_PER_S] == pytest.approx(250.0)


def test_time_to_target_is_logged_when_reached(cli, client):
    args = ("train", "--device", "cpu", "--epochs", "5", *SMALL, "--lr", "0.1")
    assert cli(*args, "--target-accuracy", "0.3").code == 0
    run = only_run(client)
    history = client.get_metric_history(run.info.run_id, Metrics.TEST_ACCURACY)
    reached = min(m.step for m in history if m.value >= 0.3)
    epoch_times = {
        m.step: m.value for m in client.get_metric_history(run.info.run_id, Metrics.EPOCH_TIME_S)
    }
    time_to_target = run.data.metrics[Metrics.TIME_TO_TARGET_S]
    # Training seconds of the epochs up to the one that reached it: less than their full epoch
    # times (which include the test passes), more than the epochs before it took in all.
    assert time_to_target <= sum(epoch_times[s] for s in range(1, reached + 1))
    assert time_to_target > sum(epoch_times[s] for s in range(1, reached)) - 0.5
    assert run.data.params[Params.TARGET_ACCURACY] == "0.3"


def test_time_to_target_is_absent_when_never_reached(cli, client):
    args = ("train", "--device", "cpu", "--epochs", "1", *SMALL, "--target-accuracy", "1.0")
    assert cli(*args).code == 0
    assert Metrics.TIME_TO_TARGET_S not in only_run(client).data.metrics


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_a_training_epoch_reuses_freed_host_memory(tmp_path):
    """Each batch frees and allocates the same megabytes; kept by the allocator, an epoch takes
    almost no page faults, even where the environment sets glibc's thresholds low (here, so
    that left at its settings the allocator maps and unmaps every large block: about 1,000
    faults a batch, every time). Under 10 a batch (300 batches here), not under 1: a busy
    machine reclaiming memory (DAMON here) faults a few hundred pages back in."""
    low = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    env = {**os.environ, **low}

    def faults(mode: str) -> int:
        script = [sys.executable, "-c", EPOCH_FAULTS, mode, str(tmp_path / f"{mode}.db")]
        done = subprocess.run(script, capture_output=True, text=True, check=True, env=env)
        return int(done.stdout)

    assert faults("default") > 100 * 300  # the measurement sees what the allocator does
    assert faults("kept") < 10 * 300


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_train_and_test_runs_say_what_the_host_allocator_did(cli, client):
    assert cli("train", "--device", "cpu", "--epochs", "1", *SMALL).code == 0
    run = only_run(client)
    assert cli("test", "--model-uri", f"runs:/{run.info.run_id}/model").code == 0
    for r in client.search_runs([run.info.experiment_id]):
        assert r.data.tags[Tags.HOST_ALLOCATOR] == devices.ALLOCATOR_KEEPS_FREED
