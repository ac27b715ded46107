"""Run states and verdicts a user can trust, through real processes in a fresh folder with no
MLFLOW_* variable set: a live run is never closed, a dead one is closed only when provably
dead, one workload makes one group whoever launched it, every selected run is judged, quoted
names work everywhere, and a sweep's repeats are one measurement."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SMALL, pipeline_in, user_env
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from pipeline.schema import Metrics, Params, Stages, Tags
from pipeline.tracking import process
from pipeline.tracking import runs as tracking


def pipeline_cmd(folder: Path, env: dict, *args: str, check: bool = True):
    return pipeline_in(folder, *args, env=env, check=check)


def store_of(folder: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def folder(tmp_path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


# --- orphans: closed only when provably dead ---------------------------------------------


HELD = '''
import os
import time
from pathlib import Path

from torch import nn


class Held(nn.Module):
    """The quickstart's last layer, holding every training batch until the file $RELEASE
    exists: the test, not a race between two processes, decides when training ends."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x):
        while len(x) > 2 and not Path(os.environ["RELEASE"]).exists():  # not the probes
            time.sleep(0.05)
        return self.net(x)


def make():
    return Held()
'''


def test_a_run_joined_late_stays_live_while_another_command_runs(folder, data_dir):
    """As `mlflow run` with conda does: the run is created, the environment takes seconds to
    build, then the command joins the run (MLFLOW_RUN_ID). A second command on this host
    while it trains must leave it RUNNING, and it ends FINISHED with no failure reason. The
    joined command is held in its first batch until the test releases it."""
    release = folder / "release"
    env = user_env(RELEASE=str(release))
    client = store_of(folder)
    client.search_experiments()  # the store exists before anyone uses it, as mlflow run's does
    run = client.create_run("0", tags={"mlflow.source.type": "PROJECT"})
    run_id = run.info.run_id
    for key, value in {"device": "cpu", "epochs": "1"}.items():
        client.log_param(run_id, key, value)
    time.sleep(3)  # the environment being built
    (folder / "held.py").write_text(HELD)
    data = ["--data-dir", str(data_dir)]
    train = ["train", "--device", "cpu", "--epochs", "1", "--model", "held:make", *SMALL, *data]
    joined = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *train, "--quiet", "--no-system-metrics"],
        cwd=folder,
        env={**env, "MLFLOW_RUN_ID": run_id},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def joined_the_run() -> bool:
            assert joined.poll() is None, joined.communicate()
            return Tags.PID in client.get_run(run_id).data.tags

        wait_for(joined_the_run, "the command joining the run")
        pipeline_cmd(folder, env, "train", "--device", "cpu", "--epochs", "1", *SMALL, *data)
        live = client.get_run(run_id)
        assert joined.poll() is None  # held until released
        assert live.info.status == "RUNNING"
        assert Tags.FAILURE_REASON not in live.data.tags
        assert live.data.tags[Tags.PID] == str(joined.pid)
        assert int(live.data.tags[Tags.PID]) and live.data.tags[Tags.PROCESS_START]
        release.touch()
        _, stderr = joined.communicate(timeout=300)
    finally:
        release.touch()
        joined.kill()
    assert joined.returncode == 0, stderr
    done = client.get_run(run_id)
    assert done.info.status == "FINISHED"
    assert Tags.FAILURE_REASON not in done.data.tags


def fake_running_run(client, name: str, pid: int, started: str, machine: str, host: str) -> str:
    run = client.create_run("0", run_name=name)
    tags = {Tags.PID: str(pid), Tags.PROCESS_START: started, Tags.MACHINE: machine}
    client.log_batch(
        run.info.run_id,
        tags=[RunTag(k, v) for k, v in {**tags, Tags.HOST: host, Tags.STAGE: "train"}.items()],
    )
    return run.info.run_id


def dead_process() -> tuple[int, str]:
    """The pid and start token of a process that has exited."""
    proc = subprocess.Popen(["sleep", "30"])
    token = process.started(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, token


def test_only_provably_dead_runs_are_closed_whatever_the_host_label(folder, data_dir):
    env = user_env()
    client = store_of(folder)
    pipeline_cmd(folder, env, "train", "--device", "cpu", "--epochs", "1", *SMALL)
    here = process.machine_id()
    alive = subprocess.Popen(["sleep", "120"])
    try:
        live_token = process.started(alive.pid)
        dead_pid, dead_token = dead_process()
        runs = {
            # this process lives: never closed, whatever label either side uses
            "alive": fake_running_run(client, "alive", alive.pid, live_token, here, "label-a"),
            # that pid belongs to a later process now: the run's own process is gone
            "reused": fake_running_run(client, "reused", alive.pid, "ticks 1", here, "label-a"),
            "dead": fake_running_run(client, "dead", dead_pid, dead_token, here, "label-b"),
            # recorded by another machine: nothing here can tell whether it lives
            "elsewhere": fake_running_run(
                client, "elsewhere", dead_pid, dead_token, "other-box some-boot-id", "label-a"
            ),
            # no start time recorded (an older pipeline): not provably dead
            "unknown": fake_running_run(client, "unknown", dead_pid, "", here, "label-a"),
        }
        pipeline_cmd(folder, env, "compare", "--no-fail", "--host", "label-a")
        status = {name: client.get_run(r).info.status for name, r in runs.items()}
        assert status == {
            "alive": "RUNNING",
            "reused": "KILLED",
            "dead": "KILLED",
            "elsewhere": "RUNNING",
            "unknown": "RUNNING",
        }
        reason = client.get_run(runs["dead"]).data.tags[Tags.FAILURE_REASON]
        assert reason.startswith(f"process {dead_pid} on host ") and "exited" in reason
    finally:
        alive.kill()
        alive.wait()


def test_search_filters_match_any_value_exactly(tmp_path):
    """Quotes, backticks, backslashes and LIKE wildcards in a value: the clause matches it,
    and an exact comparison after the search leaves only it."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    values = ["o'neil", 'say "hi"', "back`tick", "both ' and \"", "ends\\", "%_x", "plain"]
    for v in values:
        client.create_run("0", tags={"h": v})
    for v in values:
        found = client.search_runs(["0"], tracking.matching("tags.h", v))
        assert v in [r.data.tags["h"] for r in found], v
        assert [r.data.tags["h"] for r in found if r.data.tags["h"] == v] == [v]


QUOTED_HOST = "o'neil's \"lab\" `box`"
QUOTED_EXPERIMENT = "team 'a' \"nightly\" `x`"


def test_quoted_host_and_experiment_names_work_for_every_command(folder, data_dir):
    env = user_env(PIPELINE_HOST=QUOTED_HOST, MLFLOW_EXPERIMENT_NAME=QUOTED_EXPERIMENT)
    data = ["--data-dir", str(data_dir)]
    small = ["--epochs", "1", *SMALL, *data, "--quiet"]
    pipeline_cmd(folder, env, "train", "--device", "cpu", *small)
    client = store_of(folder)
    exp = client.get_experiment_by_name(QUOTED_EXPERIMENT)
    (first,) = client.search_runs([exp.experiment_id])
    pipeline_cmd(
        folder, env, "test", "--model-uri", f"runs:/{first.info.run_id}/model", *data, "--quiet"
    )
    pipeline_cmd(folder, env, "compare", "--no-fail", "--quiet")
    pipeline_cmd(folder, env, "doctor", "--device", "cpu", "--quiet")
    grid = ["--devices", "cpu", "--batch-sizes", "64", "--hidden", "16", "--epochs", "1"]
    pipeline_cmd(folder, env, "sweep", *grid, *SMALL, *data, "--quiet")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 6  # train, test, compare, doctor, sweep and its child
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags[Tags.HOST] for r in runs} == {QUOTED_HOST}
    assert {e.name for e in client.search_experiments()} == {QUOTED_EXPERIMENT, "Default"}


# --- one group per workload, whoever launched it -------------------------------------------


def test_mlflow_run_and_pipeline_train_meet_in_one_group(folder, data_dir):
    """With a model other than the default, whose params mlflow run still logs (the default
    model's journey is tests/test_journeys.py::test_a_named_experiment_holds_the_whole_journey)."""
    env, model = user_env(), "cnn"
    sizes = {"dataset": "synthetic", "train_size": "640", "test_size": "128", "epochs": "1"}
    args = ["mlflow", "run", str(ROOT), "--env-manager", "local", "-P", "device=cpu"]
    args += [a for k, v in {**sizes, "model": model}.items() for a in ("-P", f"{k}={v}")]
    proc = subprocess.run(
        [*args, "-P", f"data_dir={data_dir}"], cwd=folder, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    options = [a for k, v in sizes.items() for a in (f"--{k.replace('_', '-')}", v)]
    pipeline_cmd(
        folder, env, "train", "--device", "cpu", "--model", model, *options,
        "--data-dir", str(data_dir), "--quiet",
    )  # fmt: skip
    client = store_of(folder)
    launched = client.search_runs(["0"])
    assert len(launched) == 2
    # mlflow run's leftover params are still on its run...
    by_mlflow = [r for r in launched if "mlflow.project.entryPoint" in r.data.tags]
    assert by_mlflow[0].data.params[Params.MODEL] == model
    out = folder / "findings.json"
    pipeline_cmd(folder, env, "compare", "--output-json", str(out), "--no-fail", "--quiet")
    report = json.loads(out.read_text())
    # ...but never split the group
    assert len(report["groups"]) == 1
    assert len(report["groups"][0]["runs"]) == 2


# --- every selected run judged --------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "status", "kind"),
    [
        (Stages.TEST, "FAILED", "run-failed"),
        (Stages.TEST, "KILLED", "run-killed"),
        (Stages.DOCTOR, "FAILED", "run-failed"),
    ],
)
def test_a_selected_run_that_did_not_finish_fails_the_gate(folder, stage, status, kind):
    env = user_env()
    client = store_of(folder)
    run = client.create_run("0", run_name=f"{stage}-run")
    tags = {Tags.STAGE: stage, Tags.DEVICE: "mps", Tags.HOST: "box"}
    tags[Tags.FAILURE_REASON] = "RuntimeError: MPS backend out of memory"
    client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run.info.run_id, status)
    out = folder / "findings.json"
    proc = pipeline_cmd(
        folder, env, "compare", "--run-id", run.info.run_id, "--output-json", str(out),
        check=False,
    )  # fmt: skip
    assert proc.code == 1, proc.stderr
    (finding,) = json.loads(out.read_text())["findings"]
    assert finding["run_id"] == run.info.run_id and finding["kind"] == kind
    assert "out of memory" in finding["message"]


# --- attribution ----------------------------------------------------------------------------


def test_a_slowdown_names_the_os_update(folder):
    env = user_env()
    client = store_of(folder)
    base_tags = {Tags.STAGE: "train", Tags.DEVICE: "mps", Tags.HOST: "mac"}
    params = [Param(k, v) for k, v in {"model": "mlp", "epochs": "2", "device": "mps"}.items()]

    def logged(speed: float, os_version: str, python: str) -> str:
        run = client.create_run("0")
        tags = {**base_tags, Tags.PLATFORM: os_version, Tags.PYTHON_VERSION: python}
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(Metrics.SAMPLES_PER_S, speed, 0, 0)],
            params=params,
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        client.set_terminated(run.info.run_id)
        time.sleep(0.01)  # distinct start times, in order
        return run.info.run_id

    for speed in (10_000, 10_100, 9_900):
        logged(speed, "macOS-14.5-arm64-arm-64bit", "3.11.7")
    slow = logged(6_000, "macOS-15.0-arm64-arm-64bit", "3.11.9")
    out = folder / "findings.json"
    pipeline_cmd(folder, env, "compare", "--output-json", str(out), check=False)
    (finding,) = [f for f in json.loads(out.read_text())["findings"] if f["run_id"] == slow]
    assert finding["kind"] == "slower-than-history"
    assert finding["values"]["changed"] == {
        "platform": ["macOS-14.5-arm64-arm-64bit", "macOS-15.0-arm64-arm-64bit"],
        "python_version": ["3.11.7", "3.11.9"],
    }
    assert "OS macOS-14.5-arm64-arm-64bit -> macOS-15.0-arm64-arm-64bit" in finding["message"]


# --- a sweep's repeats ------------------------------------------------------------------------


def test_sweep_repeats_are_one_row_with_an_interval(folder, data_dir):
    env = user_env()
    params = {"devices": "cpu", "batch_sizes": "64", "hidden": "16", "epochs": "2", "repeats": "3"}
    params |= {"dataset": "synthetic", "train_size": "640", "test_size": "128"}
    args = ["mlflow", "run", str(ROOT), "-e", "sweep", "--env-manager", "local"]
    args += [
        a for k, v in {**params, "data_dir": str(data_dir)}.items() for a in ("-P", f"{k}={v}")
    ]
    proc = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = store_of(folder)
    (parent,) = client.search_runs(["0"], f"tags.`{Tags.STAGE}` = 'sweep'")
    kids = client.search_runs(["0"], f"tags.`{Tags.PARENT}` = '{parent.info.run_id}'")
    assert len(kids) == 3 and {k.info.status for k in kids} == {"FINISHED"}
    assert len({k.data.tags[Tags.PID] for k in kids}) == 3  # each in a fresh process
    out = folder / "findings.json"
    pipeline_cmd(folder, env, "compare", "--output-json", str(out), "--no-fail", "--quiet")
    (group,) = json.loads(out.read_text())["groups"]
    (row,) = group["runs"]
    assert row["repeats"] == 3
    assert sorted(row["run_ids"]) == sorted(k.info.run_id for k in kids)
    speeds = sorted(k.data.metrics[Metrics.SAMPLES_PER_S] for k in kids)
    assert row["samples_per_s"] == speeds[1]  # the median
    # three runs cover their median with 75% at best: the range, shown with that level
    assert row["samples_per_s_ci"] == [speeds[0], speeds[2]]
    assert row["samples_per_s_ci_level"] == 0.75
    sweep_json = client.download_artifacts(parent.info.run_id, "sweep.json", str(folder))
    (sweep_row,) = json.loads(Path(sweep_json).read_text())["rows"]
    assert sweep_row["runs"] == {"cpu": 3} and sweep_row["samples_per_s"]["cpu"] == speeds[1]
