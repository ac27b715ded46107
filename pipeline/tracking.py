"""All MLflow access: connecting, creating runs, batched metric writes, ending runs, and the
writer process's loop that does all this for a training process (see pipeline.writer)."""

import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
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


def experiment_id(client: MlflowClient, name: str, create: bool = True) -> str:
    """The id of the named experiment, created when missing (or UserError when create=False)."""
    exp = client.get_experiment_by_name(name)
    if exp is None and create:
        try:
            return client.create_experiment(name)
        except MlflowException:  # another process created it a moment ago
            exp = client.get_experiment_by_name(name)
    if exp is None:
        raise UserError(f"experiment '{name}' does not exist in {redact(None)}")
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
        cls, client: MlflowClient, experiment_id: str, name: str | None, tags: Mapping[str, str]
    ) -> "Run":
        """A new run, or the one `mlflow run` created for this process (MLFLOW_RUN_ID)."""
        run_id = os.environ.get("MLFLOW_RUN_ID")
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


# --- the writer process (pipeline.writer) ----------------------------------------------------

RUN_CALLS = {"log_params", "set_tags", "log_series", "log_metrics", "log_artifacts"}
SESSION_CALLS = {"connect", "start_run", "log_curves", "end", "download", "run_params", "wait"}


class Session:
    """What the writer holds: the client, the experiment, at most one run."""

    def __init__(self):
        self.client = self.experiment_id = self.run = self.name = None
        self.ended = False
        self.tmp = tempfile.TemporaryDirectory()

    def handle(self, op: str, args: list):
        if op in RUN_CALLS:
            return getattr(self.run, op)(*args)
        if op in SESSION_CALLS:
            return getattr(self, op)(*args)
        raise ValueError(f"unknown call {op!r}")

    def connect(self, tracking_uri: str | None, experiment: str) -> None:
        self.client = connect(tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment)

    def start_run(self, name, default_name: str, tags: dict, system_metrics: float) -> str:
        self.name = name or unique_run_name(self.client, self.experiment_id, default_name)
        tags = environment_tags() | tags
        self.run = Run.start(self.client, self.experiment_id, self.name, tags)
        if system_metrics:
            self.run.start_system_metrics(system_metrics)
        return self.run.run_id

    def log_curves(self, losses: list[float], epochs: list) -> None:
        from pipeline import report  # matplotlib, only once a run has ended well

        with tempfile.TemporaryDirectory() as tmp:
            report.plot_run(losses, epochs, self.name, Path(tmp) / "curves.png")
            self.run.log_artifacts(Path(tmp))

    def end(self, status: str) -> None:
        self.run.end(status)
        self.ended = True

    def wait(self) -> None:
        """Nothing: answered once every call before it is."""

    def download(self, model_uri: str) -> str:
        """A local copy of a model logged by `train` (kept until the writer exits)."""
        try:
            return mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=self.tmp.name
            )
        except Exception as e:
            reason = redact_text(str(e)).strip().splitlines()[0]
            message = f"no model logged by `pipeline train` at {model_uri}: {reason}"
            raise UserError(message) from None

    def run_params(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.params)

    def close(self) -> None:
        """The input closed: end a run the training process left open."""
        self.tmp.cleanup()
        if self.run is None or self.ended:
            return
        reason = "the training process exited without ending the run"
        self.run.set_tags({Tags.FAILURE_REASON: reason})
        self.run.end("KILLED")


def serve() -> None:
    """The writer process: carry out calls from stdin until it closes; answer each on stdout."""
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever else prints to stdout goes to stderr, not into the replies
    session = Session()
    for line in sys.stdin:
        op, args = json.loads(line)
        try:
            reply = {"result": session.handle(op, args)}
        except UserError as e:
            reply = {"error": str(e), "user": True}
        except Exception as e:
            text = redact_text(f"{type(e).__name__}: {e}").strip().splitlines()
            reply = {"error": f"could not {op.replace('_', ' ')}: {text[0]}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    try:
        session.close()
    except Exception as e:
        print(f"error: could not end the run: {redact_text(str(e))}", file=sys.stderr)
        sys.exit(1)
