"""The tracking store: connecting to it within seconds or saying why not in one line,
creating a new sqlite store safely, and keeping credentials out of everything printed."""

import os
import re
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.errors import UserError

CHECK_TIMEOUT_S = "5"

# MLflow's sqlite store uses a SQLAlchemy option SQLAlchemy deprecates: nothing a user of this
# pipeline can act on.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.store\.")


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
def fail_fast(uri: str) -> Iterator[None]:
    """MLflow retries a server or database it cannot reach for minutes; for the first check,
    don't: a server gets no retries and a short timeout (MLflow's settings), a database one
    connection attempt of ours before MLflow's first (MLflow has no setting for its ten)."""
    settings = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": CHECK_TIMEOUT_S,
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        _database_answers(uri)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


NETWORK_DATABASES = ("postgresql", "mysql", "mssql")


def _database_answers(uri: str) -> None:
    """Connect once to a database store on the network (raises when it does not answer within
    CHECK_TIMEOUT_S); nothing for sqlite, files and servers."""
    if not uri.startswith(NETWORK_DATABASES):
        return
    import sqlalchemy

    timeout = {"connect_timeout": int(CHECK_TIMEOUT_S)} if "mssql" not in uri else {}
    engine = sqlalchemy.create_engine(uri, connect_args=timeout)
    try:
        engine.connect().close()
    finally:
        engine.dispose()


def connect(tracking_uri: str | None) -> MlflowClient:
    """A client for the tracking store, checked to answer within seconds (or UserError)."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    uri = mlflow.get_tracking_uri()
    try:
        _create_sqlite_store(uri)
        with fail_fast(uri):
            client = MlflowClient()  # a database store is connected to here
            client.search_experiments(max_results=1)
    except Exception as e:
        if refusal(e):
            raise UserError(f"the MLflow tracking server at {redact(uri)} {refusal(e)}") from None
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


# How each database (and a server passing its error on) words a row that already exists.
UNIQUE_VIOLATION = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def lost_insert_race(e: BaseException) -> bool:
    """Whether the store refused a row because another writer inserted it first."""
    return any(words in str(e) for words in UNIQUE_VIOLATION)


def refusal(e: BaseException) -> str | None:
    """What the tracking server refused, in words, when it answered 401 or 403; else None.
    Names the account, never its password."""
    if not isinstance(e, MlflowException):
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    status = e.get_http_status_code()
    if status == 401:
        if not user or not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
            return (
                "refused the request: it asks for credentials and none were given "
                "(set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
            )
        return f"refused the credentials of user '{user}' (wrong user name or password?)"
    if status == 403:
        return (
            f"refused user '{user}' permission: logging runs needs EDIT permission on the "
            "experiment (an admin grants it; docs/operations.md)"
        )
    return None


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
