"""The compare stage: read runs through MlflowClient (reading.py; histories only where a rule
or a picture needs them), judge them (rules.py), report (render.py, pipeline.plots), log a
compare run, and tag the flagged runs."""

import json
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline import console
from pipeline.compare import ci, pictures, records, render, rules, speed
from pipeline.compare.baselines import LOOKBACK
from pipeline.compare.reading import (  # noqa: F401 (latest_of_each, summarize: tests, benchmarks)
    latest_of_each,
    select,
    summarize,
)
from pipeline.compare.records import (
    ACCURACY,
    ERROR,
    SPEED,
    WARNING,
    Finding,
    Group,
    Operations,
    Selection,
    Tolerances,
)
from pipeline.errors import UserError
from pipeline.schema import Metrics, Stages, Tags
from pipeline.tracking import runs as tracking
from pipeline.tracking import store
from pipeline.tracking.lifecycle import StopRequest, interrupts_requested, run_closed


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
    uri = tracking_uri or mlflow.get_tracking_uri()
    if local_store_missing(uri):  # nothing to compare: create no store to say so
        raise UserError(f"no runs at {store.redact(uri)}: no tracking store there")
    client = store.connect(tracking_uri)
    selection = select(
        client,
        opts.experiment,
        opts.run_ids,
        opts.filter_string,
        opts.latest_only,
        opts.tolerances.history,
    )
    with HistoryReader(client) as history, tempfile.TemporaryDirectory() as tmp:
        groups = records.groups_of(selection.runs)
        if opts.plots:  # the pictures' histories in the background, while compare judges ...
            history.read_ahead(curves_wanted(pictures.surely_drawn(groups, selection.judged)))
        findings, groups, notes = rules.judge(
            selection, opts.tolerances, history, operations_reader(client), groups
        )
        tables = render.tables(selection, groups, findings)
        drawn = pictures.drawn(groups, tables, findings) if opts.plots else []
        history.read_ahead(curves_wanted(drawn))  # ... and prints its tables
        unsourced = render.describe_unsourced(selection.unsourced)
        notes = [unsourced, *notes] if unsourced else notes
        render.print_terminal(console.out, tables, findings, selection.left_out, quiet, notes)
        as_json = render.to_json(tables, findings, selection.left_out, notes)
        with interrupts_requested() as stop:
            folder = Path(tmp)
            drawings = draw_groups(history, drawn, tables, folder)
            header = report_header(opts, selection)
            runs_url = ui_runs_url(uri, selection.experiment_ids[0])
            (folder / "report.md").write_text(
                render.markdown(
                    tables, findings, selection.left_out, drawings, notes, header, runs_url
                )
            )
            # compact: indenting is 3x slower (0.34 s at 10,000 runs); the MLflow UI indents it
            (folder / "findings.json").write_text(json.dumps(as_json))
            _write_outputs(opts, folder, tables, findings)
            if ci.on_github_actions():  # the job summary carries no pictures
                summary = render.markdown(
                    tables, findings, selection.left_out, None, notes, header, runs_url
                )
                full = f"{opts.output_dir / 'report.md'}" if opts.output_dir else None
                ci.publish_to_github(summary, findings, notes, sys.stdout, full_report=full)
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
    plots_logged = f"{len(drawings)} plot{'s' if len(drawings) != 1 else ''}"
    console.out.print(
        f"compare run {run.run_id}: report.md, findings.json and {plots_logged} logged"
    )
    return findings


def report_header(opts: CompareOptions, selection: Selection) -> dict[str, str]:
    """What report.md says it compared: the selection, the baselines, the tolerances, the
    commits of the judged runs."""
    chosen = [f'--filter "{opts.filter_string}"'] if opts.filter_string else []
    chosen += [f"--run-id {', '.join(opts.run_ids)}"] if opts.run_ids else []
    chosen += ["--latest"] if opts.latest_only else []
    tol = opts.tolerances
    baselines = (
        f"the last {tol.history} earlier finished runs of each run's group, device and host; "
        "the latest CPU run of its group on its host"
    )
    if chosen:
        baselines += f" (read back within {LOOKBACK:,} runs before the selection)"
    commits = sorted({r.tags.get(Tags.GIT_COMMIT, "")[:12] for r in selection.judged_runs})
    commits = [c for c in commits if c]
    named = ", ".join(commits[:20]) + (f" and {len(commits) - 20} more" * (len(commits) > 20))
    return {
        "Selected": " ".join(chosen) or "every finished run of the experiment",
        "Baselines": baselines,
        "Tolerances": f"speed {tol.speed:.0%}, accuracy {tol.accuracy:.1%} (absolute)",
        "Commits": named or "none recorded",
    }


def ui_runs_url(uri: str, experiment_id: str) -> str:
    """The MLflow UI's address of the experiment's run pages (a run id appended) when the
    tracking URI is a server, without any user name or password; '' otherwise."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return ""
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    base = urlunsplit(parts._replace(netloc=host, query="", fragment="")).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/"


def local_store_missing(uri: str) -> bool:
    """Whether a local store (a sqlite file, a folder of runs) does not exist."""
    if uri.startswith("sqlite:///"):
        name = uri.removeprefix("sqlite:///").split("?")[0]
        return name not in ("", ":memory:") and not Path(name).exists()
    if uri.startswith("file:") or "://" not in uri:
        return not Path(uri.removeprefix("file://").removeprefix("file:")).exists()
    return False


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


class HistoryReader:
    """A metric's history as (step, value) pairs, each read from the store once: when a rule
    first asks for it, or beforehand in the background (read_ahead: the pictures', while
    compare prints its tables and loads matplotlib; a local store's scans run outside
    Python's lock, on another core). A context: leaving it drops the reads not yet begun."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self._read: dict[tuple[str, str], list[tuple[int, float]] | Future] = {}
        self._pool = tracking.read_pool(client)

    def __enter__(self) -> "HistoryReader":
        return self

    def __exit__(self, exc_type, *_) -> None:
        # On an error or Ctrl-C, leave at once: a read in flight ends on its own.
        self._pool.shutdown(wait=exc_type is None, cancel_futures=True)

    def __call__(self, run_id: str, key: str) -> list[tuple[int, float]]:
        pair = (run_id, key)
        pending = self._read.get(pair)
        if isinstance(pending, Future) and not pending.cancel():  # being read: wait for it
            self._read[pair] = pending.result()
        elif pair not in self._read or isinstance(pending, Future):  # or not begun: read now
            self._read[pair] = tracking.history(self.client, run_id, key)
        return list(self._read[pair])  # a copy: what a caller does stays its own

    def read_ahead(self, wanted: list[tuple[str, str]]) -> None:
        """Start reading, in the background, the histories not read or being read yet."""
        for pair in wanted:
            if pair not in self._read:
                self._read[pair] = self._pool.submit(tracking.history, self.client, *pair)


CURVES = (Metrics.TRAIN_LOSS, Metrics.TEST_ACCURACY)


def curves_wanted(drawn: list[Group]) -> list[tuple[str, str]]:
    """The histories the pictures of these groups draw: each curve of the latest run of each
    device and host."""
    return [(r.run_id, k) for g in drawn for r in pictures.latest_of_series(g) for k in CURVES]


def draw_groups(
    history: HistoryReader, drawn: list[Group], tables: list[dict], out_dir: Path
) -> list[Path]:
    """The pictures of the groups worth one (pictures.drawn): group-N.png, the latest run of
    each device and host with its per-batch train_loss, its test_accuracy per epoch and its
    speed, each host's CPU a reference line; and history-N.png, the group's speed over
    commits, when it has history. Histories are read only for the runs drawn (curves_wanted:
    read ahead by the caller; those a rule read already, not again)."""
    if not drawn:
        return []
    from pipeline import plots  # matplotlib, only when drawing

    plots.pyplot()  # loaded while the histories are read
    by_id = {t["id"]: t for t in tables}
    paths = []
    for group in drawn:
        shown = pictures.latest_of_series(group)
        key = speed.speed_figure(shown)
        series = []
        for r in shown:
            value, ci = pictures.bar(r, by_id.get(group.id), key) if key else (0.0, None)
            series.append(
                plots.Series(
                    label=f"{r.device} @ {r.host}",
                    train_loss=sorted(history(r.run_id, Metrics.TRAIN_LOSS)),
                    test_accuracy=sorted(history(r.run_id, Metrics.TEST_ACCURACY)),
                    speed=value,
                    speed_ci=ci,
                    cpu_of=r.host if r.device_type == "cpu" else "",
                )
            )
        title = render.title(group, short=True)
        paths.append(out_dir / f"group-{group.id}.png")
        plots.plot_group(title, series, key or "", paths[-1])
        over_commits = pictures.history_lines(group)
        if over_commits:
            paths.append(out_dir / f"history-{group.id}.png")
            plots.plot_history(f"{title}: speed over commits", *over_commits, paths[-1])
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
