"""What compare reads: without a selection every run of the experiment (one paged
search_runs); with one (--run-id, --filter, --latest), the selected runs and only what they
are judged against (baselines.py), so that a gate's cost follows its selection."""

import os
from collections import Counter
from collections.abc import Iterable

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.compare import baselines, render
from pipeline.compare.records import RunSummary, Selection
from pipeline.errors import UserError
from pipeline.schema import Stages, Tags
from pipeline.tracking import runs as tracking


def summarize(run) -> RunSummary:
    return RunSummary(
        run_id=run.info.run_id,
        name=run.info.run_name or "",
        experiment_id=run.info.experiment_id,
        start_time=run.info.start_time or 0,
        status=run.info.status,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags=dict(run.data.tags),
    )


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string,
            max_results=1000,
            page_token=token,
            order_by=["attributes.start_time ASC"],
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def select(
    client: MlflowClient,
    experiment: str | None,
    run_ids: Iterable[str] = (),
    filter_string: str = "",
    latest_only: bool = False,
    history: int = 5,
) -> Selection:
    """Read the runs to compare (after closing those a dead process on this machine left
    RUNNING); UserError when there is nothing to compare. Without a selection every run is
    read; with one, the selected runs and what they are judged against (baselines.py)."""
    run_ids = list(dict.fromkeys(run_ids))
    experiment_ids, given = [], []
    if experiment or not run_ids:
        experiment_ids.append(tracking.experiment_id(client, experiment, create=False))
    for run_id in run_ids:
        try:
            given.append(client.get_run(run_id))
        except Exception:
            raise UserError(f"run '{run_id}' does not exist") from None
        if given[-1].info.experiment_id not in experiment_ids:
            experiment_ids.append(given[-1].info.experiment_id)
    tracking.close_orphans(client, experiment_ids)
    # The doctor runs' search scans the store's tags (in sqlite outside Python's lock): it
    # runs beside the searches for the selection and its baselines.
    pool = tracking.read_pool(client)
    try:
        doctor_runs = pool.submit(search_all, client, experiment_ids, DOCTOR_RUNS)
        chosen, judged, left_out, found = _picked(
            client, experiment_ids, run_ids, given, filter_string, latest_only, history
        )
        doctors = {
            (r.device, r.host): r  # oldest first: the latest wins
            for r in map(summarize, doctor_runs.result())
        }
    finally:  # an error or Ctrl-C does not wait for the search
        pool.shutdown(wait=False, cancel_futures=True)
    finished = [r for r in found if r.stage == Stages.TRAIN and r.status == "FINISHED"]
    tests = [r for r in chosen if r.stage == Stages.TEST and r.status == "FINISHED"]
    tests = [r for r in tests if r.run_id in judged]
    sources = {r.run_id for r in finished}
    checked = [
        r
        for r in chosen
        if r.stage == Stages.DOCTOR and r.status == "FINISHED" and r.run_id in judged
    ]
    return Selection(
        runs=finished,
        judged=judged,
        left_out=dict(left_out),
        unfinished=[r for r in chosen if r.run_id in judged and r.status != "FINISHED"],
        experiment_ids=experiment_ids,
        tests=tests,
        unsourced=[t for t in tests if t.tags.get(Tags.SOURCE_RUN_ID) not in sources],
        doctors=doctors,
        checked=checked,
    )


def _picked(
    client: MlflowClient,
    experiment_ids: list[str],
    run_ids: list[str],
    given: list,
    filter_string: str,
    latest_only: bool,
    history: int,
) -> tuple[list[RunSummary], set[str], Counter, list[RunSummary]]:
    """The runs chosen, the ids of those judged, the statuses of those left out, and the chosen
    with their baselines, oldest first; UserError when none can be judged."""
    selecting = bool(run_ids or filter_string or latest_only)
    try:
        if filter_string:
            picked = search_all(client, experiment_ids, filter_string)
            picked = [r for r in picked if not run_ids or r.info.run_id in run_ids]
        elif run_ids:
            picked = [r for r in given if r.info.lifecycle_stage == "active"]
        elif latest_only:  # the newest runs: --latest reads at most the lookback window
            picked = search_newest(client, experiment_ids, "", baselines.LOOKBACK)[::-1]
        else:
            picked = search_all(client, experiment_ids)
    except MlflowException as e:
        if e.error_code != "INVALID_PARAMETER_VALUE":
            raise
        raise UserError(f"bad --filter: {str(e).splitlines()[0]}") from None
    own_run = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run -e compare`: our own run
    stages = JUDGED_STAGES if selecting else (Stages.TRAIN, Stages.TEST)
    chosen = [r for r in map(summarize, picked) if r.run_id != own_run and r.stage in stages]
    chosen.sort(key=lambda r: (r.start_time, r.run_id))  # as search_runs orders them
    if latest_only:
        chosen = latest_of_each(chosen)
    judged = {r.run_id for r in chosen if judgeable(r, selecting)}
    left_out = Counter(r.status for r in chosen if r.run_id not in judged)
    if not judged:
        name = client.get_experiment(experiment_ids[0]).name if experiment_ids else ""
        where = f"experiment '{name}'" if not run_ids else "the given runs"
        where += " that match --filter" if filter_string else ""
        extra = f" ({render.describe_left_out(left_out)} left out)" if left_out else ""
        raise UserError(f"no finished train runs to compare in {where}{extra}")
    found = with_baselines(client, experiment_ids, chosen, judged, history) if selecting else chosen
    return chosen, judged, left_out, found


def search_newest(
    client: MlflowClient, experiment_ids: list[str], where: str, most: int, token: str | None = None
):
    """A page of the newest runs that match `where` (at most `most`), with its token."""
    return client.search_runs(
        experiment_ids,
        where,
        max_results=most,
        page_token=token,
        order_by=["attributes.start_time DESC"],
    )


def with_baselines(
    client: MlflowClient,
    experiment_ids: list[str],
    chosen: list[RunSummary],
    judged: set[str],
    history: int,
) -> list[RunSummary]:
    """The chosen runs and what they are judged against, oldest first: the experiment's runs
    read newest first until each judged train run has its baselines (baselines.needs_met) or
    LOOKBACK runs older than the oldest of them are read, and the runs that judged test runs
    evaluated."""
    read = {r.run_id: r for r in chosen}
    needy = [r for r in chosen if r.run_id in judged and r.stage == Stages.TRAIN]
    needy = [r for r in needy if r.status == "FINISHED"]
    parents = {r.parent for r in needy if r.parent}
    starts = {
        p.info.run_id: p.info.start_time or 0 for p in search_ids(client, experiment_ids, parents)
    }
    if needy:
        oldest, seen, token, size = min(r.start_time for r in needy), [], None, FIRST_PAGE
        while True:
            page = search_newest(client, experiment_ids, "", size, token)
            size = min(size * 4, 1000)
            seen += map(summarize, page)
            token = page.token
            older = sum(r.start_time < oldest for r in seen)
            if not token or older >= baselines.LOOKBACK:
                break
            if baselines.needs_met(needy, seen, history, starts):
                break
        read.update((r.run_id, r) for r in seen if r.run_id not in read)
    tests = [r for r in chosen if r.stage == Stages.TEST and r.run_id in judged]
    sources = {r.tags.get(Tags.SOURCE_RUN_ID, "") for r in tests} - read.keys() - {""}
    read.update((r.info.run_id, summarize(r)) for r in search_ids(client, experiment_ids, sources))
    return sorted(read.values(), key=lambda r: (r.start_time, r.run_id))


FIRST_PAGE = 50  # runs read back first for baselines; each further page 4 times as many


def search_ids(client: MlflowClient, experiment_ids: list[str], run_ids: set[str]) -> list:
    """The active runs of these experiments with these ids."""
    ids = sorted(run_ids)
    found = []
    for i in range(0, len(ids), 100):
        quoted = ", ".join(f"'{x}'" for x in ids[i : i + 100] if x.isalnum())
        if quoted:
            found += client.search_runs(
                experiment_ids, f"attributes.run_id IN ({quoted})", max_results=100
            )
    return found


# The stages whose runs a selection can judge: a compare run is the judge, never judged.
JUDGED_STAGES = (Stages.TRAIN, Stages.TEST, Stages.SWEEP, Stages.DOCTOR)
DOCTOR_RUNS = f"tags.`{Tags.STAGE}` = '{Stages.DOCTOR}' and attributes.status = 'FINISHED'"


def judgeable(run: RunSummary, selecting: bool) -> bool:
    """Whether a run is judged. A run still RUNNING never is. Selected runs (--run-id,
    --filter, --latest) are judged whatever their status; without a selection, finished runs
    are, and FAILED ones that stopped because their loss diverged."""
    if run.status == "RUNNING":
        return False
    diverged = run.tags.get(Tags.FAILURE_REASON, "").startswith("diverged")
    return selecting or run.status == "FINISHED" or (run.status == "FAILED" and diverged)


def latest_of_each(runs: list[RunSummary]) -> list[RunSummary]:
    """The latest run, whatever its status, of each stage, group, device that ran, and host."""
    latest: dict = {}
    for r in runs:  # oldest first: the last one written wins
        latest[(r.stage, r.group_key, r.device, r.host)] = r
    return list(latest.values())
