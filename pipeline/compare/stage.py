"""The compare stage: read runs through MlflowClient (summaries from one paged search_runs;
histories only where a rule or a picture needs them), judge them (rules.py), report
(render.py, pipeline.plots), log a compare run, and tag the flagged runs."""

import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline import console
from pipeline.compare import ci, render, rules, speed
from pipeline.compare.records import (
    ACCURACY,
    ERROR,
    SPEED,
    WARNING,
    Finding,
    Group,
    History,
    Operations,
    RunSummary,
    Selection,
    Tolerances,
)
from pipeline.errors import UserError
from pipeline.schema import Metrics, Stages, Tags
from pipeline.tracking import runs as tracking
from pipeline.tracking import store
from pipeline.tracking.lifecycle import StopRequest, interrupts_requested, run_closed


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
) -> Selection:
    """Read the runs to compare (after closing those a dead process on this machine left
    RUNNING); UserError when there is nothing to compare."""
    run_ids = list(run_ids)
    experiment_ids = []
    if experiment or not run_ids:
        experiment_ids.append(tracking.experiment_id(client, experiment, create=False))
    for run_id in run_ids:
        try:
            exp_id = client.get_run(run_id).info.experiment_id
        except Exception:
            raise UserError(f"run '{run_id}' does not exist") from None
        if exp_id not in experiment_ids:
            experiment_ids.append(exp_id)
    tracking.close_orphans(client, experiment_ids)
    try:  # the filter selects what is judged; every run of the experiments stays a baseline
        runs = search_all(client, experiment_ids)
        selected = (
            {r.info.run_id for r in search_all(client, experiment_ids, filter_string)}
            if filter_string
            else {r.info.run_id for r in runs}
        )
    except MlflowException as e:
        if e.error_code != "INVALID_PARAMETER_VALUE":
            raise
        raise UserError(f"bad --filter: {str(e).splitlines()[0]}") from None
    found = [summarize(r) for r in runs]
    own_run = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run -e compare`: our own run
    selecting = bool(run_ids or filter_string or latest_only)
    stages = JUDGED_STAGES if selecting else (Stages.TRAIN, Stages.TEST)
    found = [r for r in found if r.run_id != own_run and r.stage in stages]
    chosen = [r for r in found if r.run_id in selected and (not run_ids or r.run_id in run_ids)]
    if latest_only:
        chosen = latest_of_each(chosen)
    judged = {r.run_id for r in chosen if judgeable(r, selecting)}
    left_out = Counter(r.status for r in chosen if r.run_id not in judged)
    finished = [r for r in found if r.stage == Stages.TRAIN and r.status == "FINISHED"]
    if not judged:
        name = client.get_experiment(experiment_ids[0]).name if experiment_ids else ""
        where = f"experiment '{name}'" if not run_ids else "the given runs"
        where += " that match --filter" if filter_string else ""
        extra = f" ({render.describe_left_out(left_out)} left out)" if left_out else ""
        raise UserError(f"no finished train runs to compare in {where}{extra}")
    tests = [
        r for r in found if r.stage == Stages.TEST and r.status == "FINISHED" and r.run_id in judged
    ]
    sources = {r.run_id for r in finished}
    doctors = {
        (r.device, r.host): r  # oldest first: the latest wins
        for r in map(summarize, search_all(client, experiment_ids, DOCTOR_RUNS))
    }
    checked = [
        r
        for r in found
        if r.stage == Stages.DOCTOR and r.status == "FINISHED" and r.run_id in judged
    ]
    return Selection(
        runs=finished,
        judged=judged,
        left_out=dict(left_out),
        unfinished=[r for r in found if r.run_id in judged and r.status != "FINISHED"],
        experiment_ids=experiment_ids,
        tests=tests,
        unsourced=[t for t in tests if t.tags.get(Tags.SOURCE_RUN_ID) not in sources],
        doctors=doctors,
        checked=checked,
    )


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


# --- the compare stage: report, log a run of its own, tag flagged runs -----------------------


@dataclass
class CompareOptions:
    experiment: str | None = None  # None: MLFLOW_EXPERIMENT_ID (mlflow run's), else Default
    run_ids: tuple[str, ...] = ()
    filter_string: str = ""
    latest_only: bool = False
    tolerances: Tolerances = field(default_factory=Tolerances)
    output_json: Path | None = None
    output_junit: Path | None = None
    output_dir: Path | None = None
    plots: bool = True
    fail_on: str = WARNING  # the least severe finding that fails the command (or "never")


def run_compare(
    opts: CompareOptions, tracking_uri: str | None, host: str | None = None, quiet: bool = False
) -> list[Finding]:
    """Compare finished runs, report, log a compare run; return the findings.

    The compare run ends FINISHED whenever the comparison itself worked, flagged or not: its
    tag `pipeline.verdict` (flagged or clean) and metric `findings` say which."""
    client = store.connect(tracking_uri)
    selection = select(client, opts.experiment, opts.run_ids, opts.filter_string, opts.latest_only)
    findings, groups, notes = rules.judge(
        selection, opts.tolerances, history_reader(client), operations_reader(client)
    )
    tables = render.tables(selection, groups, findings)
    unsourced = render.describe_unsourced(selection.unsourced)
    notes = [unsourced, *notes] if unsourced else notes
    render.print_terminal(console.out, tables, findings, selection.left_out, quiet, notes)
    as_json = render.to_json(tables, findings, selection.left_out, notes)
    with interrupts_requested() as stop, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pictures = draw_groups(client, groups, tables, findings, folder) if opts.plots else []
        (folder / "report.md").write_text(
            render.markdown(tables, findings, selection.left_out, pictures, notes)
        )
        (folder / "findings.json").write_text(json.dumps(as_json, indent=2))
        _write_outputs(opts, folder, tables, findings)
        if ci.on_github_actions():  # the job summary carries no pictures
            summary = render.markdown(tables, findings, selection.left_out, None, notes)
            ci.publish_to_github(summary, findings, notes, sys.stdout)
        stop.check()  # a signal so far: stop before any run exists
        try:
            run = _log_compare_run(client, selection, opts, findings, folder, host, stop)
        except MlflowException as e:
            refusal = store.refusal(e)
            if refusal is None:
                raise
            console.err.print(
                "compare could not log its own run or tag the flagged runs: the MLflow "
                f"tracking server {refusal}; the findings above stand",
                markup=False,
                highlight=False,
            )
            return findings
    plots_logged = f"{len(pictures)} plot{'s' if len(pictures) != 1 else ''}"
    console.out.print(
        f"compare run {run.run_id}: report.md, findings.json and {plots_logged} logged"
    )
    return findings


def fails(findings: list[Finding], fail_on: str) -> bool:
    """Whether the findings fail the command: any at least as severe as `fail_on` (error,
    warning; never: none)."""
    return any(f.severity in FAILING[fail_on] for f in findings)


FAILING = {ERROR: {ERROR}, WARNING: {ERROR, WARNING}, "never": set()}


def _write_outputs(
    opts: CompareOptions, folder: Path, tables: list[dict], findings: list[Finding]
) -> None:
    """--output-json, --output-junit, --output-dir: on this machine, before anything is
    logged, so that they are there whatever the tracking server allows."""
    if opts.output_json:
        opts.output_json.write_text((folder / "findings.json").read_text())
    if opts.output_junit:
        opts.output_junit.parent.mkdir(parents=True, exist_ok=True)
        failing = [f for f in findings if fails([f], opts.fail_on)]
        opts.output_junit.write_text(ci.junit_xml(tables, findings, failing))
    if opts.output_dir:
        opts.output_dir.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            (opts.output_dir / f.name).write_bytes(f.read_bytes())


def _log_compare_run(
    client: MlflowClient,
    selection: Selection,
    opts: CompareOptions,
    findings: list[Finding],
    folder: Path,
    host: str | None,
    stop: StopRequest,
) -> tracking.Run:
    """The compare run (its verdict, figures and report), then the flagged runs' tags."""
    run = tracking.Run.start(
        client,
        selection.experiment_ids[0],
        f"compare-{time.strftime('%Y%m%d-%H%M%S')}",
        {
            Tags.STAGE: Stages.COMPARE,
            Tags.HOST: tracking.host_name(host),
            Tags.VERDICT: "flagged" if findings else "clean",
            Tags.NOTE: describe_verdict(len(selection.judged), findings),
        },
    )
    with run_closed(run, stop):
        run.log_params(
            {
                "speed_tolerance": opts.tolerances.speed,
                "accuracy_tolerance": opts.tolerances.accuracy,
                "history": opts.tolerances.history,
                "filter": opts.filter_string or "-",
                "run_ids": ",".join(opts.run_ids) or "-",
                "fail_on": opts.fail_on,
            }
        )
        run.log_metrics(
            {
                "runs_compared": len(selection.judged),
                "runs_left_out": sum(selection.left_out.values()),
                "findings": len(findings),
                "speed_findings": sum(f.category == SPEED for f in findings),
                "accuracy_findings": sum(f.category == ACCURACY for f in findings),
            }
        )
        run.log_artifacts(folder)
        _tag_flags(client, selection, findings)
    return run


def describe_verdict(judged: int, findings: list[Finding]) -> str:
    """The compare run's description in the MLflow UI: its verdict and what it found."""
    runs = f"{judged} run{'s' * (judged != 1)} compared"
    if not findings:
        return f"clean: {runs}, no findings."
    by = Counter(f.severity for f in findings)
    counts = ", ".join(f"{n} {s}{'s' * (n != 1)}" for s, n in sorted(by.items()))
    n = len(findings)
    return f"flagged: {runs}, {n} finding{'s' * (n != 1)} ({counts})."


def operations_reader(client: MlflowClient) -> Operations:
    """A run's profiled operation table, read when a speed finding asks for it."""
    return lambda run_id: tracking.table(client, run_id, "operations.json")


def history_reader(client: MlflowClient) -> History:
    """A metric's history as (step, value) pairs, read from the store when a rule asks."""
    return lambda run_id, key: tracking.history(client, run_id, key)


def draw_groups(
    client: MlflowClient,
    groups: list[Group],
    tables: list[dict],
    findings: list[Finding],
    out_dir: Path,
) -> list[Path]:
    """One PNG per group worth a picture (flagged first, then those with several devices), at
    most MAX_PLOTTED_GROUPS, each drawn once: the latest run of each device and host, with
    its per-batch train_loss, its test_accuracy per epoch, and its speed. Histories are read
    only for the runs drawn."""
    from pipeline import plots  # matplotlib, only when drawing

    flagged = {f.group for f in findings}
    by_id = {g.id: g for g in groups}
    candidates = [
        by_id[t["id"]]
        for t in tables
        if t["id"] in flagged or len({r.device_type for r in by_id[t["id"]].runs}) > 1
    ]
    candidates.sort(key=lambda g: (g.id not in flagged, g.id))
    history = history_reader(client)
    paths = []
    for group in candidates[: render.MAX_PLOTTED_GROUPS]:
        latest: dict[tuple[str, str], RunSummary] = {}
        for r in group.runs:  # oldest first: the last one wins
            latest[(r.device, r.host)] = r
        shown = [latest[k] for k in sorted(latest)]
        key = speed.speed_figure(shown)
        series = [
            plots.Series(
                label=f"{r.device} @ {r.host}",
                train_loss=sorted(history(r.run_id, Metrics.TRAIN_LOSS)),
                test_accuracy=sorted(history(r.run_id, Metrics.TEST_ACCURACY)),
                speed=r.metrics[key] if key else 0.0,
            )
            for r in shown
        ]
        path = out_dir / f"group-{group.id}.png"
        plots.plot_group(render.title(group, short=True), series, key or "", path)
        paths.append(path)
    return paths


def _tag_flags(client, selection: Selection, findings: list) -> None:
    """Tag each flagged run with its finding kinds and add them to its description; runs that
    are clean again lose both. Runs whose state did not change are not written to."""
    kinds: dict[str, set[str]] = {}
    for f in findings:
        kinds.setdefault(f.run_id, set()).add(f.kind)
    writes: dict[str, dict[str, str]] = {}
    cleared = []
    for r in selection.judged_runs:
        flags = ",".join(sorted(kinds.get(r.run_id, ())))
        if flags == r.tags.get(Tags.FLAGS, ""):
            continue
        note = r.tags.get(Tags.NOTE, "").split(COMPARE_NOTE)[0].rstrip()
        if flags:
            note += f"\n\n{COMPARE_NOTE}: flagged {flags.replace(',', ', ')}."
            writes[r.run_id] = {Tags.FLAGS: flags, Tags.NOTE: note.lstrip()}
        else:
            note += f"\n\n{COMPARE_NOTE}: no findings."
            writes[r.run_id] = {Tags.NOTE: note.lstrip()}
            cleared.append(r.run_id)
    tracking.set_tags_of(client, writes)
    tracking.delete_tag_of(client, cleared, Tags.FLAGS)


COMPARE_NOTE = "Latest compare"
