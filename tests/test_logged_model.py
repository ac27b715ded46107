"""The trained model as an MLflow model: it loads with MLflow alone in a fresh process and
predicts what the run's model predicts; `test` reads it from every kind of model URI, and the
loose files runs of earlier versions logged still test."""

import json
import subprocess
import sys

import mlflow
import pytest
import torch
from conftest import SMALL, pipeline_in, user_env
from mlflow import MlflowClient

from pipeline.schema import Metrics, Stages, Tags
from pipeline.training import artifact, data


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One `pipeline train` in an empty folder with nothing set: (folder, client, run)."""
    folder = tmp_path_factory.mktemp("empty")
    shown = user_env(PYTHONWARNINGS="always")  # every warning printed, none of them ours
    result = pipeline_in(folder, "train", "--device", "cpu", "--epochs", "2", *SMALL,
                         "--data-dir", str(data_dir), env=shown)  # fmt: skip
    assert "Warning" not in result.stderr, result.stderr
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs(["0"])
    return folder, client, run


def images(data_dir, n: int = 100) -> torch.Tensor:
    spec = data.DataSpec("synthetic", data_dir, 0, 640, 128)
    x, _ = data.as_tensors(data.load(spec, False), torch.device("cpu"))
    return data.to_float(x[:n])


def test_the_model_loads_without_this_package_and_predicts_the_runs_classes(
    trained, data_dir, tmp_path
):
    folder, client, run = trained
    uri = f"runs:/{run.info.run_id}/model"
    torch.save(images(data_dir), tmp_path / "x.pt")
    code = (
        "import sys, json, torch; sys.modules['pipeline'] = None\n"  # this package is absent
        "import mlflow; mlflow.set_tracking_uri('sqlite:///mlflow.db')\n"
        f"net = mlflow.pytorch.load_model({uri!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        "print(json.dumps(net(x).argmax(1).tolist()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, env=user_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(client.tracking_uri)
    with torch.no_grad():
        net, _ = artifact.load(uri, tmp_path / "dl", torch.device("cpu"))
        ours = net(images(data_dir)).argmax(1).tolist()
    assert json.loads(proc.stdout.splitlines()[-1]) == ours


def test_the_model_is_a_logged_model_with_its_accuracy(trained):
    _, client, run = trained
    (logged,) = client.search_logged_models(["0"])
    assert logged.source_run_id == run.info.run_id
    linked = {m.key: m for m in logged.metrics}
    assert linked[Metrics.TEST_ACCURACY].value == run.data.metrics[Metrics.TEST_ACCURACY]
    assert linked[Metrics.TEST_ACCURACY].dataset_name == "synthetic"
    files = {a.path for a in client.list_artifacts(run.info.run_id, "model/data")}
    assert "model/data/model.pt2" in files  # torch.export's format, not a pickle
    steps = [m.step for m in client.get_metric_history(run.info.run_id, Metrics.TEST_ACCURACY)]
    assert steps == [1, 2]  # linking adds no point to the run's history


def test_test_reads_a_model_id_and_a_local_folder(trained, cli, tmp_path):
    _, client, run = trained
    (logged,) = client.search_logged_models(["0"])
    store = ["--tracking-uri", client.tracking_uri]
    assert cli("test", "--model-uri", f"models:/{logged.model_id}", *store).code == 0
    local = mlflow.artifacts.download_artifacts(
        f"runs:/{run.info.run_id}/model", dst_path=str(tmp_path / "copy"),
        tracking_uri=client.tracking_uri)  # fmt: skip
    assert cli("test", "--model-uri", local, *store).code == 0
    tests = client.search_runs(["0"], f"tags.`{Tags.STAGE}` = '{Stages.TEST}'")
    assert len(tests) == 2
    accuracy = run.data.metrics[Metrics.TEST_ACCURACY]
    assert {t.data.metrics[Metrics.TEST_ACCURACY] for t in tests} == {accuracy}


def test_a_run_of_an_earlier_version_still_tests(trained, data_dir, tmp_path):
    mlflow.set_tracking_uri(trained[1].tracking_uri)
    """Earlier versions logged `model/state_dict.pt` and `model/config.json`, no MLmodel."""
    folder, client, run = trained
    net, config = artifact.load(f"runs:/{run.info.run_id}/model", tmp_path / "dl",
                                torch.device("cpu"))  # fmt: skip
    old = client.create_run("0", run_name="logged-by-an-earlier-version")
    loose = tmp_path / "model"
    loose.mkdir()
    torch.save(net.state_dict(), loose / "state_dict.pt")
    (loose / "config.json").write_text(json.dumps({**config, "run_id": old.info.run_id}))
    client.log_artifacts(old.info.run_id, str(loose), "model")
    client.set_terminated(old.info.run_id)
    pipeline_in(folder, "test", "--model-uri", f"runs:/{old.info.run_id}/model",
                "--data-dir", str(data_dir))  # fmt: skip
    tested = client.search_runs(["0"], f"tags.`{Tags.SOURCE_RUN_ID}` = '{old.info.run_id}'")
    assert tested[0].data.metrics[Metrics.TEST_ACCURACY] == run.data.metrics[Metrics.TEST_ACCURACY]
