"""A shared tracking server, for real: `mlflow server` on 127.0.0.1 with sqlite or PostgreSQL."""

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import SMALL, user_env
from mlflow import MlflowClient
from test_faults import free_port

from pipeline.schema import Stages, Tags


def wait_until_healthy(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {said(proc)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {seconds} s")


def said(proc: subprocess.Popen) -> str:
    """The end of what a server wrote (to its log file, or to its stderr pipe)."""
    if not hasattr(proc, "log"):
        return proc.stderr.read()[-2000:]
    proc.log.seek(0)
    return proc.log.read()[-2000:]


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a test's `mlflow server`: nothing of MLFLOW_* or PIPELINE_* from
    this process (mlflow.set_tracking_uri, called by the commands run in it, leaves an
    MLFLOW_TRACKING_URI behind), no telemetry, and no job execution: MLflow 3 starts eight
    job-queue processes beside a server for its GenAI jobs, which nothing here uses, and on
    this 2-core machine they cost 16 s of CPU a server (21 s in its first 15 s with them, 5 s
    without, measured), taken from the tests running beside it."""
    return user_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **extra)


def start_server(backend: str, artifacts: Path):
    """`mlflow server` on a free port, its output to a file (a pipe nobody reads fills up and
    stops the server); (process, port) once it answers /health."""
    port = free_port()
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with the process: stop)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=server_env(),
        start_new_session=True,  # its uvicorn workers stopped with it: see stop()
    )
    proc.log = log
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, seconds=180)  # a busy 2-core machine starts it slowly
    except TimeoutError as e:
        message = f"{e}; the server said: {said(proc)}"
        stop(proc)
        raise TimeoutError(message) from None
    except Exception:
        stop(proc)
        raise
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    """The server and every process it started (uvicorn's): its whole session, which killing
    the `mlflow server` process alone would leave running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of it is left
    proc.kill()  # started in no session of its own: the process itself
    proc.wait()
    if hasattr(proc, "log"):
        proc.log.close()


def shared_server_flow(cli, port: int, tmp_path: Path, monkeypatch) -> None:
    """Two device machines (hosts alpha and beta) log to one server; compare reads it over HTTP.
    One of them puts credentials in its tracking URI: they must never be logged or printed."""
    plain = f"http://127.0.0.1:{port}"
    secret = f"http://alice:s3cret@127.0.0.1:{port}"
    a = cli(
        "train",
        "--device",
        "cpu",
        "--epochs",
        "2",
        *SMALL,
        "--host",
        "alpha",
        "--tracking-uri",
        plain,
    )
    monkeypatch.setenv("PIPELINE_HOST", "beta")
    b = cli("train", "--device", "cpu", "--epochs", "2", *SMALL, "--tracking-uri", secret)
    monkeypatch.delenv("PIPELINE_HOST")
    for result in (a, b):
        assert result.code == 0, result.stderr
        assert "s3cret" not in result.stdout + result.stderr
    out = tmp_path / "findings.json"
    result = cli("compare", "--tracking-uri", secret, "--output-json", str(out))
    assert result.code == 0, result.stdout + result.stderr
    assert "s3cret" not in result.stdout + result.stderr

    report = json.loads(out.read_text())
    assert report["findings"] == []
    (group,) = report["groups"]
    assert sorted(r["host"] for r in group["runs"]) == ["alpha", "beta"]

    client = MlflowClient(plain)
    exp_id = client.get_experiment_by_name("Default").experiment_id
    runs = client.search_runs([exp_id])
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags[Tags.STAGE], []).append(r)
        values = list(r.data.params.values()) + list(r.data.tags.values())
        assert not any("s3cret" in v for v in values)
    assert len(by_stage[Stages.TRAIN]) == 2 and len(by_stage[Stages.COMPARE]) == 1
    for r in by_stage[Stages.TRAIN]:  # artifacts went through the server's artifact store
        assert "model/MLmodel" in {a.path for a in client.list_artifacts(r.info.run_id, "model")}
        assert r.info.artifact_uri.startswith("mlflow-artifacts:")
    compare_run = by_stage[Stages.COMPARE][0]
    assert "report.md" in {a.path for a in client.list_artifacts(compare_run.info.run_id)}
    # And a model trained through the server can be tested through it.
    model_uri = f"runs:/{by_stage[Stages.TRAIN][0].info.run_id}/model"
    result = cli("test", "--model-uri", model_uri, "--device", "cpu", "--tracking-uri", plain)
    assert result.code == 0, result.stderr


def test_shared_server_with_sqlite(cli, tmp_path, monkeypatch):
    proc, port = start_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts")
    try:
        shared_server_flow(cli, port, tmp_path, monkeypatch)
    finally:
        stop(proc)


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    path = found[-1] if found else shutil.which("postgres")
    return Path(path).parent if path else None


@pytest.fixture
def postgres():
    """A private PostgreSQL cluster on 127.0.0.1, started and stopped by this test."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binary installed (Debian: apt-get install postgresql)")
    run_as = []
    folder = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))  # outside pytest's private folders
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use the package's own user
        shutil.chown(folder, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = folder / "data"
    subprocess.run(
        [*run_as, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            bindir / "pg_ctl",
            "-D",
            data,
            "-l",
            folder / "log",
            "-w",
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [
                *run_as,
                bindir / "createdb",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "mlflow",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            [*run_as, bindir / "pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


def test_shared_server_with_postgresql(cli, tmp_path, monkeypatch, postgres):
    proc, port = start_server(postgres, tmp_path / "artifacts")
    try:
        shared_server_flow(cli, port, tmp_path, monkeypatch)
    finally:
        stop(proc)
