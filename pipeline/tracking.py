"""All MLflow access: connecting, creating runs, batched metric writes, ending runs."""

import importlib.metadata
import logging
import os
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
def _fail_fast() -> Iterator[None]:
    """MLflow retries an unreachable server for minutes; for the first check, don't."""
    settings = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": CHECK_TIMEOUT_S,
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def connect(tracking_uri: str | None) -> MlflowClient:
    """A client for the tracking store, checked to answer within seconds (or UserError)."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    for attempt in range(5):
        try:
            with _fail_fast():
                client.search_experiments(max_results=1)
            return client
        except MlflowException as e:
            # Several processes creating one new sqlite store at once can collide; retry.
            if mlflow.get_tracking_uri().startswith("sqlite") and attempt < 4:
                time.sleep(0.5 + attempt)
                continue
            raise UserError(
                f"cannot use the MLflow tracking store at {redact(None)}: {_first_line(e)}"
            ) from None
        except Exception as e:  # requests' connection errors, unwritable folders, ...
            raise UserError(
                f"cannot reach the MLflow tracking store at {redact(None)}: {_first_line(e)}"
            ) from None
    raise AssertionError("unreachable")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return redact_text(text[0] if text else type(e).__name__)


def redact_text(text: str) -> str:
    uri = mlflow.get_tracking_uri()
    return text.replace(uri, redact(uri)) if uri else text


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

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)
