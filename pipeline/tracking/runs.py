"""All MLflow access after connecting (store.py): where runs go, creating runs, batched
writes, ending runs, downloading a logged model, reading histories, and closing runs whose
process provably died (process.py)."""

import json
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from pipeline.errors import UserError
from pipeline.schema import Tags
from pipeline.tracking import environment, process, store
from pipeline.tracking.store import connect, redact, redact_text

# "Creating initial MLflow database tables..." is not news to our users.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)

# MLflow prints each run's URL on stdout when a run ends, credentials included: we print our own.
os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # log_batch's limits per call
DATASET_CONTEXT = "mlflow.data.context"  # an input's role, as mlflow.log_input records it
DATASET_ATTEMPTS = 3


def matching(field: str, value: str) -> str:
    """A search-filter clause that matches `field` = `value` for any value. MLflow's filter
    language has no escape for quotes: a value without a single quote is quoted with single
    quotes; any other becomes a LIKE pattern with `_` for each quote or backslash, which
    matches it and perhaps a few others, so callers compare the results exactly."""
    if not any(c in value for c in "'\\"):
        return f"{field} = '{value}'"
    pattern = "".join("_" if c in "'\"\\" else c for c in value)
    return f"{field} LIKE '{pattern}'"


def unique_run_name(client: MlflowClient, experiment_id: str, name: str) -> str:
    """name, or name-2, name-3, ... when runs of the experiment already carry it."""
    prefix = "".join("_" if c in "'\"\\%" else c for c in name)
    taken = {
        r.info.run_name
        for r in client.search_runs(
            [experiment_id], f"attributes.run_name LIKE '{prefix}%'", max_results=1000
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


class Run:
    """One MLflow run, written through MlflowClient in batches."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id
        self.fluent = False  # resumed as MLflow's active run (for system metrics)

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
        tags = {Tags.HOST: host_name(None), **environment.collect(), **tags, **process_tags()}
        context = environment.run_context()
        run_id = os.environ.get("MLFLOW_RUN_ID") if join else None
        if run_id:
            run = cls(client, run_id)
            if name:
                client.update_run(run_id, name=name)
            existing = client.get_run(run_id).data.tags  # what `mlflow run` set stays
            run.set_tags({k: v for k, v in context.items() if k not in existing} | dict(tags))
            return run
        created = client.create_run(experiment_id, run_name=name, tags=context | dict(tags))
        return cls(client, created.info.run_id)

    def claim(self) -> None:
        """Record this process as the run's (a resumed run was another's), and drop the
        failure reason its earlier end left: the run is live again."""
        self.set_tags(process_tags())
        with suppress(MlflowException):
            self.client.delete_tag(self.run_id, Tags.FAILURE_REASON)

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
        import pandas as pd

        frame = pd.DataFrame({key: [row[key] for row in rows] for key in rows[0]} if rows else {})
        for name in frame.columns:  # text as objects: MLflow's image check warns on str dtype
            if pd.api.types.is_string_dtype(frame[name]):
                frame[name] = frame[name].astype(object)
        self.client.log_table(self.run_id, frame, artifact_file)

    def log_datasets(self, inputs: list[dict]) -> None:
        """Data sets as the run's inputs (the UI's Datasets column): each a dict of name,
        digest, source (a folder), rows and context (the split: train or test).

        MLflow's store looks a data set up and inserts it when missing, in one transaction:
        two runs logging the same new data set at once can both miss it, and the second
        insert fails on the store's uniqueness constraint. Logging inputs reuses what exists,
        so the loser logs again and finds it."""
        datasets = [
            DatasetInput(
                Dataset(
                    name=d["name"],
                    digest=d["digest"],
                    source_type="local",
                    source=json.dumps({"uri": d["source"]}),
                    profile=json.dumps({"num_rows": d["rows"]}),
                ),
                tags=[InputTag(DATASET_CONTEXT, d["context"])],
            )
            for d in inputs
        ]
        for attempt in range(DATASET_ATTEMPTS):
            try:
                return self.client.log_inputs(self.run_id, datasets=datasets)
            except MlflowException as e:
                if attempt == DATASET_ATTEMPTS - 1 or not store.lost_insert_race(e):
                    raise
                time.sleep(0.05 * (attempt + 1))

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def start_system_metrics(self, interval_s: float) -> None:
        """MLflow's system metrics (CPU, memory; GPU where nvidia-ml-py finds one) every
        interval_s seconds, from a background thread, until the run ends: through MLflow's
        public API, which samples for the active fluent run, so the run is resumed as that."""
        mlflow.set_system_metrics_sampling_interval(interval_s)
        mlflow.start_run(run_id=self.run_id, log_system_metrics=True)
        self.fluent = True

    def end(self, status: str = "FINISHED") -> None:
        if self.fluent:
            mlflow.end_run(status)  # stops the sampling thread after its last sample
        else:
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
    return PARALLEL_REQUESTS if _remote(client) else 1


def _remote(client: MlflowClient) -> bool:
    return client.tracking_uri.startswith(("http:", "https:"))


PARALLEL_REQUESTS = 8
LOCAL_READS = 2


def table(client: MlflowClient, run_id: str, artifact_file: str) -> list[dict]:
    """The rows of a table a run logged with log_table; [] when it has none."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, artifact_file, tmp)
        except Exception:  # no such artifact: an older run, profiling off, another tool
            return []
        logged = json.loads(Path(path).read_text())
    return [dict(zip(logged["columns"], row, strict=True)) for row in logged.get("data", [])]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's history as (step, value) pairs."""
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def read_pool(client: MlflowClient) -> ThreadPoolExecutor:
    """Threads for reads in the background: as many as requests to a server; two for a local
    store, whose database scans run outside Python's lock (for one run's history, sqlite scans
    that metric's rows of every run, as its key leads MLflow's index): two overlap on two
    cores."""
    return ThreadPoolExecutor(PARALLEL_REQUESTS if _remote(client) else LOCAL_READS)


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


def recorded(client: MlflowClient, run_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """A run's params and tags; both empty when this store has no such run."""
    try:
        data = client.get_run(run_id).data
    except MlflowException:
        return {}, {}
    return dict(data.params), dict(data.tags)


def host_name(given: str | None) -> str:
    """The host name recorded on runs: --host / PIPELINE_HOST, else this machine's."""
    return given or process.host_name()


def process_tags() -> dict[str, str]:
    """The tags that tie a run to this process on this machine (see process.py)."""
    me = process.identity()
    return {Tags.PID: me["pid"], Tags.PROCESS_START: me["started"], Tags.MACHINE: me["machine"]}


def open_experiment(
    tracking_uri: str | None, experiment: str | None, create: bool = True
) -> tuple[MlflowClient, str]:
    """A checked client and the experiment id runs go to (see experiment_id). Runs in it that
    a dead process on this machine left RUNNING are closed first."""
    client = connect(tracking_uri)
    exp_id = experiment_id(client, experiment, create)
    close_orphans(client, [exp_id])
    return client, exp_id


def fail_run(run_id: str, reason: str) -> None:
    """End a run FAILED with its reason, if the store lets us within seconds; else leave it
    to whoever created it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()  # mlflow run's
    with suppress(Exception), store.fail_fast(uri):
        client = MlflowClient(uri)
        client.set_tag(run_id, Tags.FAILURE_REASON, reason[:5000])
        client.set_terminated(run_id, "FAILED")


def close_orphans(client: MlflowClient, experiment_ids: list[str]) -> list[str]:
    """End KILLED the RUNNING runs of these experiments whose process provably died on this
    machine (SIGKILL, the out-of-memory killer); return their ids. A run of another machine,
    of a process that lives or may not be inspected, or without its process's start time
    (which `mlflow run` creates before its command starts) is left alone."""
    machine = process.machine_id()
    running = client.search_runs(
        experiment_ids,
        f"attributes.status = 'RUNNING' and {matching(f'tags.`{Tags.MACHINE}`', machine)}",
        max_results=1000,
    )
    closed = []
    for run in running:
        tags = run.data.tags
        pid, started = tags.get(Tags.PID, ""), tags.get(Tags.PROCESS_START, "")
        if tags.get(Tags.MACHINE) != machine or not pid.isdigit() or not started:
            continue
        if not process.alive(int(pid), started):
            host = machine.split(" ")[0]
            reason = f"process {pid} on host {host} exited without ending the run"
            try:
                client.set_tag(run.info.run_id, Tags.FAILURE_REASON, reason)
                client.set_terminated(run.info.run_id, "KILLED")
            except MlflowException as e:
                if store.refusal(e) is None:
                    raise
                continue  # an account that may only read cannot close it; it stays left out
            closed.append(run.info.run_id)
    return closed
