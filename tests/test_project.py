"""The MLflow project: MLproject runs here (conda.yaml: tests/test_fleet.py)."""

from conftest import ROOT, run_process
from mlflow import MlflowClient

from pipeline.schema import Metrics, Params


def test_mlflow_run_of_the_project(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_process(
        "mlflow",
        "run",
        str(ROOT),
        "--env-manager",
        "local",
        "--experiment-name",
        "device-comparison",
        "-P",
        "device=cpu",
        "-P",
        "dataset=synthetic",
        "-P",
        "epochs=1",
        "-P",
        "train_size=640",
        "-P",
        "test_size=128",
        "-P",
        "lr=1e-1",  # as a user might write it; the run's param keeps this spelling
        "-P",
        f"data_dir={tmp_path / 'data'}",
        env={"MLFLOW_TRACKING_URI": store},
        cwd=tmp_path,
    )
    assert result.code == 0, result.stderr[-3000:]
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("device-comparison").experiment_id])
    assert len(runs) == 1  # the entry point joined the run `mlflow run` created
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params[Params.DEVICE] == "cpu"
    assert run.data.params[Params.EPOCHS] == "1"
    assert run.data.params[Params.LR] == "1e-1"
    assert len(client.get_metric_history(run.info.run_id, Metrics.TRAIN_LOSS)) == 10
    assert Metrics.TEST_ACCURACY in run.data.metrics

    # The compare entry point judges that run and logs a compare run with its report.
    result = run_process(
        "mlflow",
        "run",
        str(ROOT),
        "-e",
        "compare",
        "--env-manager",
        "local",
        "--experiment-name",
        "device-comparison",
        env={"MLFLOW_TRACKING_URI": store},
        cwd=tmp_path,
    )
    assert result.code == 0, result.stdout + result.stderr[-3000:]
    exp_id = client.get_experiment_by_name("device-comparison").experiment_id
    (compare_run,) = client.search_runs([exp_id], "tags.`pipeline.stage` = 'compare'")
    assert compare_run.info.status == "FINISHED"
    assert compare_run.data.metrics["runs_compared"] == 1
    assert "report.md" in {a.path for a in client.list_artifacts(compare_run.info.run_id)}
