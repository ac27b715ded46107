"""Measurement quality: the instrument stays out of the measured process, warm-up kept out of
the throughput, time to accuracy."""

import pytest
from conftest import SMALL, only_run

from pipeline import loops, stages
from pipeline.schema import Metrics, Params


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
