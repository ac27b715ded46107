"""All MLflow access: connecting, where runs go, creating runs, batched writes, ending runs,
downloading a logged model, and closing runs whose process died."""

import importlib.metadata
import logging
import os
import platform
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
import psutil
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

import pipeline
from pipeline.errors import UserError
from pipeline.schema import Tags

# "Creating initial MLflow database tables..." is not news to our users.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

# MLflow prints each run's URL on stdout when a run ends, credentials included: we print our own.
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # log_batch's limits per call
CHECK_TIMEOUT_S = "5"


def redact(uri: str | None) -> str:
    """The URI without any user:password, safe to print."""
    uri = uri or mlflow.get_tracking_uri()
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


@contextmanager
def _fail_fast(uri: str) -> Iterator[None]:
    """MLflow retries a server or database it cannot reach for minutes; for the first check,
    don't."""
    settings = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": CHECK_TIMEOUT_S,
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        with nullcontext() if uri.startswith(("http://", "https://")) else _one_db_try():
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _one_db_try() -> Iterator[None]:
    """MLflow tries to reach a database 10 times over 100 s, with a warning each time; no
    setting changes that."""
    from mlflow.store.db import utils

    saved, utils.MAX_RETRY_COUNT = utils.MAX_RETRY_COUNT, 1
    try:
        yield
    finally:
        utils.MAX_RETRY_COUNT = saved


def connect(tracking_uri: str | None) -> MlflowClient:
    """A client for the tracking store, checked to answer within seconds (or UserError)."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    try:
        _create_sqlite_store(uri)
        with _fail_fast(uri):
            client = MlflowClient()  # a database store is connected to here
            client.search_experiments(max_results=1)
    except Exception as e:
        if uri.startswith(("http://", "https://")):
            what = "reach the MLflow tracking server"
        else:
            what = "use the MLflow tracking store"
        raise UserError(f"cannot {what} at {redact(uri)}: {_why(e)}") from None
    return client


def _create_sqlite_store(uri: str) -> None:
    """Make a new sqlite store complete under a temporary name, then link it into place.

    MLflow creates a sqlite store by migrating it where it lies, and a process that opens it
    meanwhile migrates it too: both fail, and the store can stay broken (a known MLflow bug).
    Made this way, any process, ours or not, finds no file or a finished store."""
    name = uri.removeprefix("sqlite:///").split("?")[0]
    if not uri.startswith("sqlite:///") or name in ("", ":memory:"):
        return
    path = Path(name)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.creating")
    try:
        MlflowClient(f"sqlite:///{tmp}")  # creates (migrates) it, with sqlite's permissions
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process linked its store first: that one is used
    finally:
        with suppress(OSError):  # Windows cannot remove a file that is open
            tmp.unlink()


def _why(e: BaseException) -> str:
    """A short, credential-free reason for a failed request."""
    text = str(e)
    for needle, reason in (
        ("Connection refused", "connection refused (is the server running there?)"),
        ("timed out", f"no answer within {CHECK_TIMEOUT_S} s"),
        ("Name or service not known", "unknown host"),
        ("Failed to resolve", "unknown host"),
    ):
        if needle in text:
            return reason
    lines = text.strip().splitlines()
    return redact_text(lines[0] if lines else type(e).__name__)[:300]


def redact_text(text: str) -> str:
    """The text with every user:password@ in a URL replaced by ***@."""
    return re.sub(r"//[^/\s@]+@", "//***@", text)


def unique_run_name(client: MlflowClient, experiment_id: str, name: str) -> str:
    """name, or name-2, name-3, ... when runs of the experiment already carry it."""
    taken = {
        r.info.run_name
        for r in client.search_runs(
            [experiment_id], f"attributes.run_name LIKE '{name}%'", max_results=1000
        )
    }
    n = 1
    candidate = name
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default", where `mlflow run` puts a run when none is named


def experiment_id(client: MlflowClient, name: str | None, create: bool = True) -> str:
    """Where runs go, one rule for every command and for `mlflow run`: the experiment named
    (`--experiment`, MLFLOW_EXPERIMENT_NAME), created when missing unless create=False; else
    the one `mlflow run` chose (MLFLOW_EXPERIMENT_ID); else MLflow's Default. UserError when
    it cannot be used."""
    if not name:
        exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or DEFAULT_EXPERIMENT_ID
        try:
            exp = client.get_experiment(exp_id)
        except MlflowException:
            raise UserError(f"experiment id {exp_id} does not exist in {redact(None)}") from None
        return _usable(exp, exp.name)
    exp = client.get_experiment_by_name(name)
    if exp is None and create:
        try:
            return client.create_experiment(name)
        except MlflowException:  # another process created it a moment ago
            exp = client.get_experiment_by_name(name)
    if exp is None:
        raise UserError(f"experiment '{name}' does not exist in {redact(None)}")
    return _usable(exp, name)


def _usable(exp, name: str) -> str:
    if exp.lifecycle_stage == "deleted":
        raise UserError(f"experiment '{name}' is deleted; restore it or choose another name")
    return exp.experiment_id


def environment_tags() -> dict[str, str]:
    tags = {
        Tags.TORCH_VERSION: importlib.metadata.version("torch"),
        Tags.PYTHON_VERSION: platform.python_version(),
        Tags.PLATFORM: platform.platform(),
        Tags.MLFLOW_VERSION: mlflow.__version__,
        Tags.PIPELINE_VERSION: pipeline.__version__,
    }
    commit = git_commit()
    if commit:
        tags[Tags.GIT_COMMIT] = commit
    return tags


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(pipeline.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class Run:
    """One MLflow run, written through MlflowClient in batches."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id
        self.monitor = None

    @classmethod
    def start(
        cls,
        client: MlflowClient,
        experiment_id: str,
        name: str | None,
        tags: Mapping[str, str],
        join: bool = True,
    ) -> "Run":
        """A new run, or with `join` the one `mlflow run` created for this process
        (MLFLOW_RUN_ID)."""
        tags = {Tags.HOST: host_name(None), **environment_tags(), **tags}
        tags[Tags.PID] = str(os.getpid())
        run_id = os.environ.get("MLFLOW_RUN_ID") if join else None
        if run_id:
            run = cls(client, run_id)
            if name:
                client.update_run(run_id, name=name)
            run.set_tags(tags)
            return run
        created = client.create_run(experiment_id, run_name=name, tags=dict(tags))
        return cls(client, created.info.run_id)

    def log_params(self, params: Mapping[str, object]) -> None:
        """Log params; those already set (`mlflow run` logs its -P values first) are kept."""
        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_TAGS):
            self.client.log_batch(self.run_id, tags=items[i : i + MAX_TAGS])

    def log_series(self, key: str, first_step: int, values: list[float]) -> None:
        """Consecutive steps of one metric, up to 1,000 points per request."""
        now = int(time.time() * 1000)
        points = [Metric(key, v, now, first_step + i) for i, v in enumerate(values)]
        for i in range(0, len(points), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=points[i : i + MAX_METRICS])

    def log_metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()]
        )

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """Rows as an MLflow table artifact, which the UI shows as a table."""
        columns = {key: [row[key] for row in rows] for key in rows[0]} if rows else {}
        self.client.log_table(self.run_id, columns, artifact_file)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def start_system_metrics(self, interval_s: float) -> None:
        """MLflow's system metrics (CPU, memory; GPU where nvidia-ml-py finds one) every
        interval_s seconds, from a background thread, until the run ends."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=interval_s, tracking_uri=mlflow.get_tracking_uri()
        )
        self.monitor.start()

    def end(self, status: str = "FINISHED") -> None:
        if self.monitor is not None:
            self.monitor.finish()
        self.client.set_terminated(self.run_id, status)


def download(model_uri: str, dst: Path) -> Path:
    """A local copy of an artifact folder such as runs:/<id>/model (or UserError)."""
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    except Exception as e:
        reason = redact_text(str(e)).strip().splitlines()[0]
        raise UserError(f"no model logged by `pipeline train` at {model_uri}: {reason}") from None


def _parallel(client: MlflowClient) -> int:
    """Requests to have in flight at once: several to a server, where each waits on the
    network; one to a local store."""
    return PARALLEL_REQUESTS if client.tracking_uri.startswith(("http:", "https:")) else 1


PARALLEL_REQUESTS = 8


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's history as (step, value) pairs."""
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def histories(
    client: MlflowClient, wanted: list[tuple[str, str]]
) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """The history of each (run id, metric key), read in parallel from a server."""
    with ThreadPoolExecutor(_parallel(client)) as pool:
        found = pool.map(lambda pair: history(client, *pair), wanted)
        return dict(zip(wanted, found, strict=True))


def set_tags_of(client: MlflowClient, tags: dict[str, dict[str, str]]) -> None:
    """Set each run's tags, one request a run (in parallel to a server)."""

    def write(item: tuple[str, dict[str, str]]) -> None:
        run_id, values = item
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in values.items()])

    with ThreadPoolExecutor(_parallel(client)) as pool:
        list(pool.map(write, tags.items()))


def delete_tag_of(client: MlflowClient, run_ids: list[str], key: str) -> None:
    with ThreadPoolExecutor(_parallel(client)) as pool:
        list(pool.map(lambda run_id: client.delete_tag(run_id, key), run_ids))


def params_of(client: MlflowClient, run_id: str) -> dict[str, str] | None:
    """A run's params; None when this store has no such run."""
    try:
        return dict(client.get_run(run_id).data.params)
    except MlflowException:
        return None


def host_name(given: str | None) -> str:
    """The host name recorded on runs: --host / PIPELINE_HOST, else this machine's."""
    return given or socket.gethostname()


def open_experiment(
    tracking_uri: str | None, experiment: str | None, host: str | None, create: bool = True
) -> tuple[MlflowClient, str]:
    """A checked client and the experiment id runs go to (see experiment_id). Runs in it that
    a dead process on this host left RUNNING are closed first."""
    client = connect(tracking_uri)
    exp_id = experiment_id(client, experiment, create)
    close_orphans(client, [exp_id], host_name(host))
    return client, exp_id


def close_orphans(client: MlflowClient, experiment_ids: list[str], host: str) -> list[str]:
    """End KILLED the RUNNING runs of these experiments that a process on this host started and
    that outlived it (SIGKILL, the out-of-memory killer); return their ids."""
    closed = []
    running = client.search_runs(
        experiment_ids,
        f"attributes.status = 'RUNNING' and tags.`{Tags.HOST}` = '{host}'",
        max_results=1000,
    )
    for run in running:
        pid = run.data.tags.get(Tags.PID, "")
        if pid.isdigit() and not _alive(int(pid), run.info.start_time / 1000):
            reason = f"process {pid} on host {host} exited without ending the run"
            client.set_tag(run.info.run_id, Tags.FAILURE_REASON, reason)
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


def _alive(pid: int, run_started: float) -> bool:
    """Whether the process that started a run at `run_started` (epoch seconds) still runs: a
    process with that id started after the run is another one."""
    try:
        return psutil.Process(pid).create_time() <= run_started + 1
    except psutil.Error:
        return False
