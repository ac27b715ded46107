"""Faults: an unreachable server, interrupted and killed runs, concurrent writers, divergence,
bad input."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL, only_run
from mlflow import MlflowClient
from test_errors import assert_no_run, assert_one_line_error

from pipeline.schema import Metrics, Tags
from pipeline.training import loops


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize(
    ("store", "what"),
    [
        ("http://alice:s3cret@127.0.0.1:{port}", "reach the MLflow tracking server"),
        ("postgresql://alice:s3cret@127.0.0.1:{port}/mlflow", "use the MLflow tracking store"),
    ],
)
def test_unreachable_store_fails_fast_and_keeps_secrets(cli, tmp_path, command, store, what):
    uri = store.format(port=free_port())
    args = [command, "--tracking-uri", uri]
    if command == "train":
        args += ["--device", "cpu", "--data-dir", str(tmp_path / "data"), *SMALL]
    started = time.perf_counter()
    result = cli(*args, data=False)
    assert time.perf_counter() - started < 10
    assert_one_line_error(result, f"cannot {what} at {uri.split(':')[0]}://***@127.0.0.1")
    assert "connection refused (is the server running there?)" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert not (tmp_path / "data").exists()  # no training started: not even the data was made


def train_process(store: str, data_dir, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            "train",
            "--device",
            "cpu",
            "--dataset",
            "synthetic",
            "--data-dir",
            str(data_dir),
            "--tracking-uri",
            store,
            "--quiet",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a shell job has
    )


def wait_for_epochs(store: str, epochs: int, batches_per_epoch: int, proc: subprocess.Popen) -> str:
    """The id of the run in the store, once `epochs` epochs of it are there."""
    deadline = time.time() + 120
    client = run_id = None
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"train exited {proc.returncode}: {proc.communicate()[1]}")
        if client is None and Path(store.removeprefix("sqlite:///")).exists():
            client = MlflowClient(store)  # not before: that would create the store itself
        exp = client.get_experiment_by_name("Default") if client and not run_id else None
        if run_id is None and exp is not None:
            runs = client.search_runs([exp.experiment_id])
            run_id = runs[0].info.run_id if runs else None
        if run_id:
            logged = client.get_metric_history(run_id, Metrics.TRAIN_LOSS)
            if len(logged) >= epochs * batches_per_epoch:
                return run_id
        time.sleep(0.2)
    raise AssertionError("the run never got that far")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_run_ends_killed_with_its_metrics(store, data_dir, tmp_path, signum, code):
    proc = train_process(
        store, data_dir, "--train-size", "6400", "--test-size", "640", "--epochs", "200"
    )
    run_id = wait_for_epochs(store, 1, 100, proc)
    client = MlflowClient(store)
    time.sleep(0.3)  # into the next epoch: some losses wait in the buffer
    os.killpg(proc.pid, signum)  # the whole group, as Ctrl-C does
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "KILLED" in stderr
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[Tags.FAILURE_REASON].startswith("interrupted by SIG")
    steps = [m.step for m in client.get_metric_history(run_id, Metrics.TRAIN_LOSS)]
    epochs_done = len(client.get_metric_history(run_id, Metrics.TEST_ACCURACY))
    assert steps == list(range(len(steps)))  # every batch trained is there, none twice
    assert len(steps) >= 100 * epochs_done
    # compare leaves it out and says so
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "compare", "--tracking-uri", store, "--no-fail"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "1 KILLED left out" in result.stderr


def test_a_killed_training_process_is_closed_by_the_next_command(store, data_dir, tmp_path):
    """SIGKILL (or the out-of-memory killer) gives the process no chance to end its run: the
    next command on that host sees the process gone and ends the run KILLED, keeping what
    was logged."""
    proc = train_process(store, data_dir, "--train-size", "6400", "--epochs", "200")
    run_id = wait_for_epochs(store, 1, 100, proc)
    client = MlflowClient(store)
    proc.kill()
    proc.communicate(timeout=60)
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing could end it...
    result = subprocess.run(  # ...until the next command on this host
        [sys.executable, "-m", "pipeline", "compare", "--tracking-uri", store, "--no-fail"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert "1 KILLED left out" in result.stderr
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    host = run.data.tags[Tags.HOST]
    assert run.data.tags[Tags.FAILURE_REASON] == (
        f"process {proc.pid} on host {host} exited without ending the run"
    )
    assert len(client.get_metric_history(run_id, Metrics.TEST_ACCURACY)) >= 1


def test_four_concurrent_writers_on_one_new_sqlite_store(tmp_path, data_dir):
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [
        train_process(store, data_dir, *SMALL, "--epochs", "2", "--run-name", f"w{i}")
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["w0", "w1", "w2", "w3"]
    for r in runs:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, Metrics.TRAIN_LOSS)]
        assert sorted(steps) == list(range(20))
        assert len(client.get_metric_history(r.info.run_id, Metrics.TEST_ACCURACY)) == 2
    assert not list(tmp_path.glob(".*.creating"))  # each process's scratch store is gone


def test_a_run_that_loses_the_race_to_insert_a_data_set_logs_it_again(cli, client, monkeypatch):
    """Two runs logging the same new data set at once can both find it missing in MLflow's
    store; the second insert then breaks the store's uniqueness constraint (seen with four
    concurrent writers above). NOT the race itself: the store's refusal, as sqlite words it,
    on the first attempt; the second attempt is MLflow's real log_inputs."""
    from mlflow.exceptions import MlflowException

    real, calls = MlflowClient.log_inputs, []

    def racing(self, run_id, datasets=None, models=None):
        calls.append(run_id)
        if len(calls) == 1:
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                "datasets.name, datasets.digest"
            )
        return real(self, run_id, datasets=datasets, models=models)

    monkeypatch.setattr(MlflowClient, "log_inputs", racing)
    assert cli("train", "--device", "cpu", "--epochs", "1", *SMALL, "--quiet").code == 0
    run = only_run(client)
    assert len(calls) == 2 and run.info.status == "FINISHED"
    assert sorted(i.tags[0].value for i in run.inputs.dataset_inputs) == ["test", "train"]

    # any other refusal is not retried: the run fails with it
    def failing(self, run_id, datasets=None, models=None):
        calls.append(run_id)
        raise MlflowException("(sqlite3.OperationalError) disk I/O error")

    calls.clear()
    monkeypatch.setattr(MlflowClient, "log_inputs", failing)
    assert cli("train", "--device", "cpu", "--epochs", "1", *SMALL, "--quiet").code != 0
    assert len(calls) == 1


def test_a_new_sqlite_store_appears_complete(tmp_path):
    """MLflow migrates a new sqlite store where it lies, and another program that opens it
    meanwhile migrates it too: both fail (a known MLflow bug). Ours links a finished store into
    place, so a plain MLflow client that opens the file the moment it appears finds it whole."""
    path = tmp_path / "mlflow.db"
    ours = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from pipeline.tracking import store; store.connect('sqlite:///{path}')",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    while not path.exists() and ours.poll() is None:
        time.sleep(0.002)
    assert MlflowClient(f"sqlite:///{path}").search_experiments()[0].name == "Default"
    _, stderr = ours.communicate(timeout=60)
    assert ours.returncode == 0, stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]


def test_divergence_stops_the_run_as_failed_and_compare_reports_it(cli, client, tmp_path):
    result = cli("train", "--device", "cpu", "--epochs", "5", *SMALL, "--lr", "1000")
    assert result.code == 1
    assert "diverged" in result.stderr and "Traceback" not in result.stderr
    run = only_run(client)
    assert run.info.status == "FAILED"
    assert run.data.tags[Tags.FAILURE_REASON].startswith("diverged: train_loss became")
    assert len(client.get_metric_history(run.info.run_id, Metrics.TEST_ACCURACY)) < 5
    out = tmp_path / "f.json"
    result = cli("compare", "--output-json", str(out))
    assert result.code == 1
    findings = json.loads(out.read_text())["findings"]
    assert [(f["run_id"], f["kind"]) for f in findings] == [(run.info.run_id, "diverged")]


def test_data_dir_that_cannot_be_written(cli, client, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli(
        "train", "--device", "cpu", *SMALL, "--data-dir", str(blocker / "data"), data=False
    )
    assert_one_line_error(result, "cannot write to data folder")
    assert_no_run(client)


def test_losses_buffered_when_interrupted_are_flushed(cli, client, monkeypatch):
    """A SIGINT in the middle of epoch 2: the 5 losses of that epoch still in the device
    buffer reach the store before the run ends KILLED (deterministic, in this process)."""
    original_add = loops.LossBuffer.add

    def add_then_interrupt(self, loss):
        original_add(self, loss)
        if self.next_step == 20 and self.count == 5:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loops.LossBuffer, "add", add_then_interrupt)
    args = ("train", "--device", "cpu", "--epochs", "3", *SMALL, "--train-size", "1280")
    result = cli(*args, "--no-system-metrics")
    assert result.code == 130
    run = only_run(client)
    assert run.info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, Metrics.TRAIN_LOSS)]
    assert steps == list(range(25))  # epoch 1's 20, and 5 of epoch 2
    assert len(client.get_metric_history(run.info.run_id, Metrics.TEST_ACCURACY)) == 1


def test_a_signal_during_the_final_logging_ends_the_run_killed(cli, client, monkeypatch):
    """Ctrl-C at any moment after the run exists, here while the model is being logged after
    the last epoch: the run ends KILLED and the command exits 130, not FINISHED and 0."""
    from pipeline.training import artifact

    original = artifact.log

    def log_then_interrupt(*args):
        original(*args)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(artifact, "log", log_then_interrupt)
    result = cli("train", "--device", "cpu", "--epochs", "1", *SMALL, "--no-system-metrics")
    assert result.code == 130
    assert "KILLED" in result.stderr and "Traceback" not in result.stderr
    run = only_run(client)
    assert run.info.status == "KILLED"
    assert run.data.tags[Tags.FAILURE_REASON] == "interrupted by SIGINT"


def test_sigterm_during_compare_ends_its_run_killed(cli, client, monkeypatch):
    """While compare draws (before its run exists): exit 143 and no run. While it logs: its
    run ends KILLED."""
    from pipeline.compare import stage as compare
    from pipeline.schema import Stages

    assert cli("train", "--device", "cpu", "--epochs", "1", *SMALL).code == 0
    compare_runs = f"tags.`{Tags.STAGE}` = '{Stages.COMPARE}'"

    def terminated(result):
        def send(*args):
            os.kill(os.getpid(), signal.SIGTERM)
            return result

        return send

    with monkeypatch.context() as m:
        m.setattr(compare, "draw_groups", terminated([]))
        assert cli("compare").code == 143
    assert client.search_runs(["0"], compare_runs) == []
    monkeypatch.setattr(compare, "_tag_flags", terminated(None))
    assert cli("compare").code == 143
    (run,) = client.search_runs(["0"], compare_runs)
    assert run.info.status == "KILLED"
