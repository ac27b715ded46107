"""The journeys as a user takes them: real processes, in an empty folder, with no MLFLOW_*
variable set and nothing named; then the same with an experiment named.

Each journey reads what landed with MlflowClient: one experiment, the device that ran (not
`auto`) in compare's findings.json, the test run pointing at its source, a FINISHED compare
run whose group holds both train runs, a sweep's children as runs of their own under one
parent, nothing left RUNNING, and a wall_time_s that covers the process's life.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, user_env
from mlflow import MlflowClient

from pipeline.schema import Metrics, Params, Stages, Tags

# Small synthetic data: 10 batches an epoch, 2 epochs.
DATA = {"dataset": "synthetic", "train_size": "640", "test_size": "128", "lr": "0.05"}
TRAIN = {**DATA, "epochs": "2"}
SWEEP = {**DATA, "devices": "cpu", "batch_sizes": "64,128", "hidden": "32", "epochs": "1"}


def run(args: list[str], folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def mlflow_run(folder, env, entry: str = "main", *extra: str, **params: str):
    args = ["mlflow", "run", str(ROOT), "-e", entry, "--env-manager", "local", *extra]
    for key, value in params.items():
        args += ["-P", f"{key}={value}"]
    return run(args, folder, env)


def pipeline(folder, env, *args: str):
    return run([sys.executable, "-m", "pipeline", *args], folder, env)


def options(params: dict[str, str]) -> list[str]:
    return [a for k, v in params.items() for a in (f"--{k.replace('_', '-')}", v)]


def all_runs(client: MlflowClient) -> list:
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments], max_results=1000)


def by_stage(runs, stage: str) -> list:
    return sorted(
        (r for r in runs if r.data.tags.get(Tags.STAGE) == stage), key=lambda r: r.info.start_time
    )


def assert_journey(client: MlflowClient, tmp_path: Path, experiment: str) -> None:
    """What both ways of running the journey must leave behind."""
    runs = all_runs(client)
    assert {r.info.experiment_id for r in runs} == {
        client.get_experiment_by_name(experiment).experiment_id
    }, "every run lands in one experiment"
    assert [r.info.run_name for r in runs if r.info.status != "FINISHED"] == []

    trains = [r for r in by_stage(runs, Stages.TRAIN) if Tags.PARENT not in r.data.tags]
    assert len(trains) == 2
    assert {r.data.tags[Tags.DEVICE] for r in trains} == {"cpu"}  # auto resolved to cpu
    (test_run,) = by_stage(runs, Stages.TEST)
    assert test_run.data.tags[Tags.SOURCE_RUN_ID] == trains[0].info.run_id
    assert test_run.data.tags[Tags.DEVICE] == "cpu"

    (compare_run,) = by_stage(runs, Stages.COMPARE)
    assert compare_run.info.status == "FINISHED"
    assert compare_run.data.metrics["findings"] == 0
    # the two train runs and the test run
    assert compare_run.data.tags[Tags.NOTE] == "clean: 3 runs compared, no findings."
    local = client.download_artifacts(compare_run.info.run_id, "findings.json", str(tmp_path))
    report = json.loads(Path(local).read_text())
    (group,) = report["groups"]
    assert {r["run_id"] for r in group["runs"]} == {r.info.run_id for r in trains}
    assert {r["device"] for r in group["runs"]} == {"cpu"}

    (parent,) = by_stage(runs, Stages.SWEEP)
    children = [r for r in runs if r.data.tags.get(Tags.PARENT) == parent.info.run_id]
    assert len(children) == 2 and len({c.info.run_id for c in children}) == 2
    assert sorted(c.data.params[Params.BATCH_SIZE] for c in children) == ["128", "64"]
    assert {c.data.tags[Tags.STAGE] for c in children} == {Stages.TRAIN}
    assert {c.data.tags[Tags.DEVICE] for c in children} == {"cpu"}
    assert parent.data.tags[Tags.STAGE] == Stages.SWEEP
    for child in children:  # each child's own losses, not a pile in the parent
        history = client.get_metric_history(child.info.run_id, Metrics.TRAIN_LOSS)
        assert len(history) == 640 // int(child.data.params[Params.BATCH_SIZE])
    assert client.get_metric_history(parent.info.run_id, Metrics.TRAIN_LOSS) == []
    local = client.download_artifacts(parent.info.run_id, "sweep.json", str(tmp_path))
    assert len(json.loads(Path(local).read_text())["rows"]) == 2
    assert_mlflow_standard(client, runs, trains, test_run)


def assert_mlflow_standard(client: MlflowClient, runs: list, trains: list, test_run) -> None:
    """What MLflow's users look for: every run with its user, source and commit; each train
    run's model a LoggedModel with its accuracy; data sets as inputs, one per split."""
    for r in runs:
        tags = r.data.tags
        assert tags.get(Tags.USER) and tags.get(Tags.SOURCE_NAME), r.info.run_name
        assert tags.get(Tags.SOURCE_TYPE) in ("LOCAL", "PROJECT"), r.info.run_name
        assert len(tags.get(Tags.SOURCE_COMMIT, "")) == 40, r.info.run_name
    models = {m.source_run_id: m for m in client.search_logged_models(
        [trains[0].info.experiment_id])}  # fmt: skip
    for train in trains:
        linked = {m.key: m.value for m in models[train.info.run_id].metrics}
        assert linked[Metrics.TEST_ACCURACY] == train.data.metrics[Metrics.TEST_ACCURACY]
    inputs = {r.info.run_id: {i.tags[0].value: i.dataset for i in r.inputs.dataset_inputs}
              for r in [*trains, test_run]}  # fmt: skip
    assert [set(inputs[t.info.run_id]) for t in trains] == [{"train", "test"}] * 2
    assert set(inputs[test_run.info.run_id]) == {"test"}
    first, second = (inputs[t.info.run_id] for t in trains)
    assert first["train"].digest == second["train"].digest != first["test"].digest
    assert inputs[test_run.info.run_id]["test"].digest == first["test"].digest


def test_mlflow_run_journey_with_nothing_named(tmp_path, data_dir):
    folder = tmp_path / "empty"
    folder.mkdir()
    env = user_env()
    data = {"data_dir": str(data_dir)}
    mlflow_run(folder, env, "main", device="cpu", **TRAIN, **data)
    mlflow_run(folder, env, "main", device="auto", **TRAIN, **data)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (first, second) = sorted(all_runs(client), key=lambda r: r.info.start_time)
    assert second.data.params[Params.DEVICE] == "auto"  # mlflow run logged the request...
    assert second.data.tags[Tags.DEVICE] == "cpu"  # ...and the run records what ran
    assert second.info.run_name.startswith("cpu-")
    mlflow_run(folder, env, "test", model_uri=f"runs:/{first.info.run_id}/model", **data)
    compare = mlflow_run(folder, env, "compare")
    assert "no findings" in compare.stdout
    mlflow_run(folder, env, "sweep", **SWEEP, **data)
    assert_journey(client, tmp_path, "Default")


def test_pipeline_journey_with_nothing_named(tmp_path, data_dir):
    folder = tmp_path / "empty"
    folder.mkdir()
    env = user_env()
    data = ["--data-dir", str(data_dir)]
    started = time.time()
    named = pipeline(
        folder, env, "train", "--device", "cpu", *options(TRAIN), *data, "--register-model", "j"
    )
    lifetime = time.time() - started
    auto = pipeline(folder, env, "train", "--device", "auto", *options(TRAIN), *data)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    first, second = sorted(all_runs(client), key=lambda r: r.info.start_time)
    # before the first epoch, one line: the device, its model, and what auto chose and why
    chosen, name = second.data.tags[Tags.DEVICE], second.data.tags[Tags.DEVICE_NAME]
    (said,) = [line for line in auto.stderr.splitlines() if line.startswith("device: ")]
    assert said.startswith(f"device: {chosen} {name} (auto: ") and said.endswith(")")
    assert chosen != "cpu" or said.endswith("(auto: no usable cuda or mps)")  # on this machine
    assert auto.stderr.index(said) < auto.stderr.index("epoch 1/2")
    assert f"device: cpu {first.data.tags[Tags.DEVICE_NAME]}\n" in named.stderr  # nothing chosen
    # from the process's start (as the OS records it) to the last metric logged
    assert first.data.metrics[Metrics.WALL_TIME_S] >= 0.9 * lifetime
    assert first.data.metrics[Metrics.WALL_TIME_S] <= lifetime
    pipeline(folder, env, "test", "--model-uri", "models:/j/1", *data)  # the registered one
    out = folder / "findings.json"
    pipeline(folder, env, "compare", "--output-json", str(out))
    assert [r["device"] for g in json.loads(out.read_text())["groups"] for r in g["runs"]] == [
        "cpu",
        "cpu",
    ]
    pipeline(folder, env, "sweep", *options(SWEEP), *data, "--quiet")
    assert_journey(client, tmp_path, "Default")


@pytest.mark.parametrize("how", ["--experiment-name", "MLFLOW_EXPERIMENT_NAME"])
def test_a_named_experiment_holds_the_whole_journey(tmp_path, data_dir, how):
    folder = tmp_path / "empty"
    folder.mkdir()
    data = {"data_dir": str(data_dir)}
    if how == "--experiment-name":  # mlflow run's own option
        env, named = user_env(), ["--experiment-name", "nightly"]
    else:
        env, named = user_env(MLFLOW_EXPERIMENT_NAME="nightly"), []
    mlflow_run(folder, env, "main", *named, device="cpu", **TRAIN, **data)
    if how == "MLFLOW_EXPERIMENT_NAME":  # the variable names it for our commands too
        pipeline(folder, env, "train", "--device", "cpu", *options(TRAIN), *options(data))
    mlflow_run(folder, env, "compare", *named)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = all_runs(client)
    nightly = client.get_experiment_by_name("nightly").experiment_id
    assert {r.info.experiment_id for r in runs} == {nightly}
    (compare_run,) = by_stage(runs, Stages.COMPARE)
    assert compare_run.info.status == "FINISHED"
    trains = {r.info.run_id for r in by_stage(runs, Stages.TRAIN)}
    assert compare_run.data.metrics["runs_compared"] == len(trains) == (2 if named == [] else 1)
    # mlflow run's train and `pipeline train`'s, one workload: one group, whoever launched it
    local = client.download_artifacts(compare_run.info.run_id, "findings.json", str(tmp_path))
    (group,) = json.loads(Path(local).read_text())["groups"]
    assert {r["run_id"] for r in group["runs"]} == trains


def test_a_flagged_compare_under_mlflow_run_is_a_finished_comparison(tmp_path):
    """A comparison that flags something worked: its run ends FINISHED and `mlflow run` exits
    0, the verdict in its metrics and tags; `python -m pipeline compare` exits 1 for CI."""
    folder = tmp_path / "empty"
    folder.mkdir()
    env = user_env()
    store = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(store)
    run = client.create_run("0", run_name="broken")
    client.log_param(run.info.run_id, Params.DEVICE, "mps")
    for key, value in {Metrics.TEST_ACCURACY: 0.0, Metrics.TEST_LOSS: 0.5}.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_tag(run.info.run_id, Tags.STAGE, Stages.TRAIN)
    client.set_terminated(run.info.run_id)
    proc = mlflow_run(folder, env, "compare")
    assert "accuracy-inconsistent-with-loss" in proc.stdout
    (compare_run,) = by_stage(all_runs(client), Stages.COMPARE)
    assert compare_run.info.status == "FINISHED"
    assert compare_run.data.metrics["findings"] == 1
    assert compare_run.data.tags[Tags.VERDICT] == "flagged"
    assert compare_run.data.tags[Tags.NOTE] == "flagged: 1 run compared, 1 finding (1 error)."
    gate = subprocess.run(
        [sys.executable, "-m", "pipeline", "compare"], cwd=folder, env=env, capture_output=True
    )
    assert gate.returncode == 1
