"""A shared server that lets in only who belongs: a real `mlflow server --app-name basic-auth`
on 127.0.0.1, its admin's password set at its first start, two accounts made through MLflow's
own auth client: `editor` (EDIT on the experiment) and `reader` (the server's default, READ).
Every command runs as a real process with the account in MLFLOW_TRACKING_USERNAME/PASSWORD."""

import os
import subprocess
import sys
from unittest import mock

import pytest
from conftest import SMALL, pipeline_in, user_env
from mlflow import MlflowClient
from test_faults import free_port
from test_fleet import flagged_store
from test_server import server_env, stop, wait_until_healthy

from pipeline.schema import Stages, Tags

ADMIN = ("admin", "admin-password-for-tests")
EDITOR = ("editor", "editor-password-1")
READER = ("reader", "reader-password-1")


def as_user(user: tuple[str, str] | None):
    """The environment variables that name an account (none: no credentials)."""
    if user is None:
        return {}
    return {"MLFLOW_TRACKING_USERNAME": user[0], "MLFLOW_TRACKING_PASSWORD": user[1]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auth-server")
    port = free_port()
    env = server_env(
        MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1],  # MLflow ships none: read at the first start
        MLFLOW_FLASK_SERVER_SECRET_KEY="a-csrf-key-for-tests",
    )
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{folder / 'runs.db'}"]
    cmd += ["--artifacts-destination", str(folder / "artifacts")]
    proc = subprocess.Popen(
        cmd,
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # stop() ends its whole session
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, seconds=120)
        with mock.patch.dict(os.environ, as_user(ADMIN)):
            from mlflow.server import get_app_client

            auth = get_app_client("basic-auth", tracking_uri=url)
            for name, password in (EDITOR, READER):
                auth.create_user(name, password)
            auth.grant_user_permission(EDITOR[0], "experiment", "0", "EDIT")  # Default
        yield url
    finally:
        stop(proc)


@pytest.fixture
def admin(server, monkeypatch) -> MlflowClient:
    for name, value in as_user(ADMIN).items():
        monkeypatch.setenv(name, value)
    return MlflowClient(server)


def run_ids(admin: MlflowClient) -> set[str]:
    return {r.info.run_id for r in admin.search_runs(["0"])}


def pipeline_as(user, server, folder, *args):
    env = user_env(MLFLOW_TRACKING_URI=server, **as_user(user))
    return pipeline_in(folder, *args, env=env, check=False)


def test_an_edit_account_trains_and_compares(server, admin, data_dir, tmp_path):
    before = run_ids(admin)
    trained = pipeline_as(EDITOR, server, tmp_path, "train", "--device", "cpu", "--epochs", "1",
                          *SMALL, "--data-dir", str(data_dir), "--quiet")  # fmt: skip
    assert trained.code == 0, trained.stderr
    (new,) = run_ids(admin) - before
    run = admin.get_run(new)
    assert run.info.status == "FINISHED" and run.data.tags[Tags.STAGE] == Stages.TRAIN
    compared = pipeline_as(EDITOR, server, tmp_path, "compare", "--run-id", new, "--no-plots")
    assert compared.code in (0, 1), compared.stderr
    stages = {admin.get_run(r).data.tags.get(Tags.STAGE) for r in run_ids(admin) - before}
    assert stages == {Stages.TRAIN, Stages.COMPARE}  # compare logged its own run
    for result in (trained, compared):
        assert EDITOR[1] not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (None, "refused the request: it asks for credentials and none were given"),
        ((EDITOR[0], "not-the-password"), "refused the credentials of user 'editor'"),
        (READER, "refused user 'reader' permission: logging runs needs EDIT permission"),
    ],
    ids=["no credentials", "wrong password", "read-only account"],
)
def test_a_refused_account_is_one_line_and_no_run(server, admin, data_dir, tmp_path, user,
                                                  expected):  # fmt: skip
    before = run_ids(admin)
    result = pipeline_as(user, server, tmp_path, "train", "--device", "cpu", "--epochs", "1",
                         *SMALL, "--data-dir", str(data_dir))  # fmt: skip
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the MLflow tracking server"), lines
    assert expected in lines[0]
    if user:
        assert user[1] not in result.stdout + result.stderr
    assert run_ids(admin) == before


def test_a_read_account_compares_and_says_what_it_could_not_log(server, admin, tmp_path):
    cpu, mps = flagged_store(admin)
    before = run_ids(admin)
    args = ["compare", "--run-id", cpu, "--run-id", mps, "--no-plots"]
    report = tmp_path / "report"
    result = pipeline_as(READER, server, tmp_path, *args, "--output-dir", str(report))
    assert result.code == 1, result.stderr  # by its findings
    assert "accuracy-mismatch" in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("compare could not log its own run or tag the flagged runs")
    assert "refused user 'reader' permission" in line and READER[1] not in line
    assert "accuracy-mismatch" in (report / "report.md").read_text()
    assert run_ids(admin) == before  # no compare run
    assert Tags.FLAGS not in admin.get_run(mps).data.tags  # nothing tagged
