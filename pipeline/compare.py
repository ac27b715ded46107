"""Query finished runs, group comparable ones, and flag speed regressions and accuracy anomalies.

Plain data in, plain data out: `load` reads runs through MlflowClient (summaries from
search_runs; histories only where a check needs them), `judge` applies the rules below and
returns findings. Rendering lives in pipeline.report.

Rules (tolerances are options of `pipeline compare`):
- accelerator-slower-than-cpu: a cuda/mps run's steady-state throughput is below the latest
  CPU run of its group on the same host by more than the speed tolerance.
- slower-than-history: a run's throughput is below the median of the last N earlier finished
  runs of its group, device type and host by more than max(speed tolerance, 3 × the history's
  scaled median absolute deviation / median): ordinary scatter never flags, a real slowdown does.
- accuracy-mismatch: final test accuracy differs from the group's CPU run by more than the
  accuracy tolerance (absolute); when the test losses agree, the device's metric computation is
  suspect, not its training.
- accuracy-inconsistent-with-loss: accuracy at or below chance (1/classes) while the test loss
  is well below ln(classes): impossible for a working evaluation.
- non-finite-loss, diverged: NaN or infinite losses (finished runs), or a run stopped for them.
- loss-not-falling: the last tenth of the per-batch training losses is not at least 1% below
  the first tenth (histories fetched only for runs whose final loss is near chance level).
- accuracy-below-history: final accuracy below the median of its history by more than
  max(accuracy tolerance, 3 × scaled MAD).
- device-numerics: the parity probe agreed with the CPU on fewer than 99% of argmaxes.
"""

import json
import math
import os
import socket
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline import console, tracking
from pipeline.errors import UserError
from pipeline.schema import NOT_GROUPING_PARAMS, Metrics, Params, Stages, Tags

SPEED, ACCURACY = "speed", "accuracy"
ERROR, WARNING = "error", "warning"
MAD_SCALE = 1.4826  # MAD × this estimates the standard deviation of normal noise
NOISE_SIGMAS = 3.0
MIN_HISTORY = 2
PARITY_MIN_AGREEMENT = 0.99
DEFAULT_CLASSES = 10
WELL_BELOW_CHANCE_LOSS = 0.8  # "well below ln(classes)": below this fraction of it
LOSS_MUST_FALL = 0.01


@dataclass
class RunSummary:
    """One finished run as compare sees it: what search_runs returns, flattened."""

    run_id: str
    name: str
    experiment_id: str
    start_time: int
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def device(self) -> str:
        return self.params.get(Params.DEVICE, "?")

    @property
    def device_type(self) -> str:
        return self.tags.get(Tags.DEVICE_TYPE) or self.device.split(":")[0]

    @property
    def host(self) -> str:
        return self.tags.get(Tags.HOST, "?")

    @property
    def device_name(self) -> str:
        return self.tags.get(Tags.DEVICE_NAME, "")

    @property
    def group_key(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            sorted(
                (k, canonical(v)) for k, v in self.params.items() if k not in NOT_GROUPING_PARAMS
            )
        )

    @property
    def num_classes(self) -> int:
        return int(self.params.get("num_classes", DEFAULT_CLASSES))


def canonical(value: str) -> str:
    """One spelling per number, so that lr "1e-3" and "0.001" group together."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else repr(number)


@dataclass
class Finding:
    run_id: str
    category: str  # speed | accuracy
    kind: str
    severity: str  # error | warning
    message: str
    device: str = ""
    host: str = ""
    run_name: str = ""
    group: int | None = None
    values: dict = field(default_factory=dict)


@dataclass
class Group:
    id: int
    params: dict[str, str]
    runs: list[RunSummary]  # oldest first


@dataclass
class Selection:
    """What `load` found: comparable finished runs, and what it left out."""

    runs: list[RunSummary]  # finished train runs, oldest first (history included)
    judged: set[str]  # ids of the runs to judge (all, unless --run-id / --latest narrowed it)
    left_out: dict[str, int]  # status -> count of unfinished or failed runs not compared
    failed: list[RunSummary]  # FAILED runs (their failure reason may be a finding)
    experiment_ids: list[str]
    tests: list[RunSummary] = field(default_factory=list)  # finished `test` runs to judge


@dataclass
class Tolerances:
    speed: float = 0.10
    accuracy: float = 0.02
    history: int = 5


# --- loading ---------------------------------------------------------------------------------


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


def load(
    client: MlflowClient,
    experiment: str | None,
    run_ids: Iterable[str] = (),
    filter_string: str = "",
    latest_only: bool = False,
) -> Selection:
    """Read the runs to compare; UserError when there is nothing to compare."""
    run_ids = list(run_ids)
    experiment_ids = []
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise UserError(f"experiment '{experiment}' does not exist")
        experiment_ids.append(exp.experiment_id)
    for run_id in run_ids:
        try:
            exp_id = client.get_run(run_id).info.experiment_id
        except Exception:
            raise UserError(f"run '{run_id}' does not exist") from None
        if exp_id not in experiment_ids:
            experiment_ids.append(exp_id)
    try:
        found = [summarize(r) for r in search_all(client, experiment_ids, filter_string)]
    except MlflowException as e:
        if e.error_code != "INVALID_PARAMETER_VALUE":
            raise
        raise UserError(f"bad --filter: {str(e).splitlines()[0]}") from None
    own_run = os.environ.get("MLFLOW_RUN_ID")  # under `mlflow run -e compare`: our own run
    tests = [
        r
        for r in found
        if r.tags.get(Tags.STAGE) == Stages.TEST
        and r.status == "FINISHED"
        and (not run_ids or r.run_id in run_ids)
    ]
    found = [
        r
        for r in found
        if r.tags.get(Tags.STAGE, Stages.TRAIN) == Stages.TRAIN and r.run_id != own_run
    ]
    if run_ids:
        found = [r for r in found if r.run_id in run_ids or r.status == "FINISHED"]
    finished = [r for r in found if r.status == "FINISHED"]
    failed = [r for r in found if r.status == "FAILED"]
    left_out = Counter(r.status for r in found if r.status != "FINISHED")
    judged = {r.run_id for r in finished}
    if run_ids:
        judged &= set(run_ids)
    if latest_only:
        latest: dict = {}
        for r in finished:  # oldest first: the last one written wins
            if r.run_id in judged:
                latest[(r.group_key, r.device_type, r.host)] = r.run_id
        judged = set(latest.values())
    if not finished and not failed:
        where = f"experiment '{experiment}'" if experiment else "the given runs"
        extra = f" ({describe_left_out(left_out)} left out)" if left_out else ""
        raise UserError(f"no finished train runs to compare in {where}{extra}")
    return Selection(finished, judged, dict(left_out), failed, experiment_ids, tests)


def describe_left_out(left_out: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(left_out.items()))


def groups_of(runs: list[RunSummary]) -> list[Group]:
    by_key: dict[tuple, list[RunSummary]] = defaultdict(list)
    for r in runs:
        by_key[r.group_key].append(r)
    return [Group(i, dict(key), members) for i, (key, members) in enumerate(by_key.items(), 1)]


# --- the rules -------------------------------------------------------------------------------


def speed_ratio(run: RunSummary, base: RunSummary) -> float | None:
    """run's speed / base's speed on the first figure both have (higher: run is faster)."""
    a, b = run.metrics, base.metrics
    if _positive(a, b, Metrics.SAMPLES_PER_S):
        return a[Metrics.SAMPLES_PER_S] / b[Metrics.SAMPLES_PER_S]
    for key in (Metrics.TRAIN_TIME_S, Metrics.WALL_TIME_S):
        if _positive(a, b, key):
            return b[key] / a[key]
    return None


def speed_of(run: RunSummary) -> tuple[str, float] | None:
    """(figure, value as 'higher is faster') used to compare a run with its own history."""
    m = run.metrics
    if _positive(m, m, Metrics.SAMPLES_PER_S):
        return Metrics.SAMPLES_PER_S, m[Metrics.SAMPLES_PER_S]
    for key in (Metrics.TRAIN_TIME_S, Metrics.WALL_TIME_S):
        if _positive(m, m, key):
            return key, 1.0 / m[key]
    return None


def _positive(a: dict, b: dict, key: str) -> bool:
    return all(key in m and math.isfinite(m[key]) and m[key] > 0 for m in (a, b))


def noise_threshold(history: list[float], floor: float, relative: bool) -> tuple[float, float]:
    """(median, allowed drop) of a history: the drop is max(floor, 3 × scaled MAD)."""
    median = statistics.median(history)
    mad = statistics.median(abs(h - median) for h in history) * MAD_SCALE
    spread = NOISE_SIGMAS * mad / median if relative and median else NOISE_SIGMAS * mad
    return median, max(floor, spread)


def latest_cpu(group: Group, host: str | None = None) -> RunSummary | None:
    cpus = [r for r in group.runs if r.device_type == "cpu" and (host is None or r.host == host)]
    return cpus[-1] if cpus else None


def history_of(run: RunSummary, group: Group, n: int) -> list[RunSummary]:
    earlier = [
        r
        for r in group.runs
        if r.device_type == run.device_type and r.host == run.host and r.start_time < run.start_time
    ]
    return earlier[-n:]


def judge(selection: Selection, tol: Tolerances, client: MlflowClient | None = None):
    """All findings, and the groups they refer to."""
    groups = groups_of(selection.runs)
    findings: list[Finding] = []
    for group in groups:
        for run in group.runs:
            if run.run_id not in selection.judged:
                continue
            for f in _check_run(run, group, tol, client):
                f.device, f.host, f.run_name, f.group = run.device, run.host, run.name, group.id
                findings.append(f)
    for run in selection.failed:
        reason = run.tags.get(Tags.FAILURE_REASON, "")
        if reason.startswith("diverged"):
            findings.append(
                Finding(
                    run.run_id,
                    ACCURACY,
                    "diverged",
                    ERROR,
                    f"{run.device} run stopped: {reason}",
                    run.device,
                    run.host,
                    run.name,
                )
            )
    by_id = {r.run_id: r for r in selection.runs}
    for test_run in selection.tests:
        findings += _evaluation_vs_source(test_run, by_id, tol)
    return findings, groups


def _evaluation_vs_source(run: RunSummary, train_runs: dict, tol: Tolerances) -> list[Finding]:
    """A `test` run evaluates a train run's final weights on some device: the same weights
    must score the same everywhere, so a gap means the evaluation on one device is broken."""
    source = train_runs.get(run.tags.get(Tags.SOURCE_RUN_ID, ""))
    acc = run.metrics.get(Metrics.TEST_ACCURACY)
    if source is None or acc is None or Metrics.TEST_ACCURACY not in source.metrics:
        return []
    source_acc = source.metrics[Metrics.TEST_ACCURACY]
    if abs(acc - source_acc) <= tol.accuracy:
        return []
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "evaluation-mismatch",
            ERROR,
            f"the weights trained on {source.device} score {acc:.1%} evaluated on "
            f"{run.device} but {source_acc:.1%} on {source.device}: with the same weights, the "
            f"evaluation on {run.device if acc < source_acc else source.device} is suspect",
            run.device,
            run.host,
            run.name,
            values={
                "test_accuracy": acc,
                "source_test_accuracy": source_acc,
                "source_run_id": source.run_id,
            },
        )
    ]


def _check_run(run, group, tol, client) -> list[Finding]:
    return [
        *_speed_vs_cpu(run, group, tol),
        *_speed_vs_history(run, group, tol),
        *_non_finite(run),
        *_accuracy_vs_loss(run),
        *_accuracy_vs_cpu(run, group, tol, client),
        *_accuracy_vs_history(run, group, tol),
        *_parity(run),
        *_loss_not_falling(run, client),
    ]


def _speed_vs_cpu(run, group, tol) -> list[Finding]:
    cpu = latest_cpu(group, run.host)
    if run.device_type == "cpu" or cpu is None:
        return []
    found = []
    ratio = speed_ratio(run, cpu)
    if ratio is not None and ratio < 1 - tol.speed:
        found.append(
            Finding(
                run.run_id,
                SPEED,
                "accelerator-slower-than-cpu",
                WARNING,
                f"{run.device} trains at {ratio:.2f}× the speed of the CPU on {run.host} "
                f"({1 / ratio:.2f}× slower; tolerance {tol.speed:.0%})",
                values={"speed_vs_cpu": ratio, "cpu_run_id": cpu.run_id},
            )
        )
    a, b = run.metrics.get(Metrics.TIME_TO_TARGET_S), cpu.metrics.get(Metrics.TIME_TO_TARGET_S)
    if a and b and a > b * (1 + tol.speed):
        found.append(
            Finding(
                run.run_id,
                SPEED,
                "accelerator-slower-to-target",
                WARNING,
                f"{run.device} reached the target accuracy in {a:.2f} s, the CPU in {b:.2f} s",
                values={"time_to_target_s": a, "cpu_time_to_target_s": b},
            )
        )
    return found


def _speed_vs_history(run, group, tol) -> list[Finding]:
    own = speed_of(run)
    history = [s for h in history_of(run, group, tol.history) if (s := speed_of(h))]
    history = [value for key, value in history if own and key == own[0]]
    if own is None or len(history) < MIN_HISTORY:
        return []
    median, allowed = noise_threshold(history, tol.speed, relative=True)
    ratio = own[1] / median
    if ratio >= 1 - allowed:
        return []
    return [
        Finding(
            run.run_id,
            SPEED,
            "slower-than-history",
            WARNING,
            f"{run.device} on {run.host} ran at {ratio:.2f}× the median speed of its last "
            f"{len(history)} runs (allowed drop {allowed:.0%})",
            values={"speed_vs_history": ratio, "history_runs": len(history)},
        )
    ]


def _non_finite(run) -> list[Finding]:
    bad = [
        k
        for k in (Metrics.TRAIN_LOSS, Metrics.TEST_LOSS)
        if k in run.metrics and not math.isfinite(run.metrics[k])
    ]
    if not bad:
        return []
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "non-finite-loss",
            ERROR,
            f"{run.device}: {', '.join(f'{k} is {run.metrics[k]}' for k in bad)}",
        )
    ]


def _accuracy_vs_loss(run) -> list[Finding]:
    acc, loss = run.metrics.get(Metrics.TEST_ACCURACY), run.metrics.get(Metrics.TEST_LOSS)
    if acc is None or loss is None or not math.isfinite(loss):
        return []
    classes = run.num_classes
    chance, chance_loss = 1 / classes, math.log(classes)
    if acc <= chance and loss < WELL_BELOW_CHANCE_LOSS * chance_loss:
        return [
            Finding(
                run.run_id,
                ACCURACY,
                "accuracy-inconsistent-with-loss",
                ERROR,
                f"{run.device}: test accuracy {acc:.1%} is at or below chance ({chance:.0%}) while "
                f"the test loss {loss:.3f} is well below ln({classes}) = {chance_loss:.3f}: "
                "the accuracy computation on this device is suspect",
                values={"test_accuracy": acc, "test_loss": loss},
            )
        ]
    return []


def _accuracy_vs_cpu(run, group, tol, client) -> list[Finding]:
    cpu = latest_cpu(group)
    acc = run.metrics.get(Metrics.TEST_ACCURACY)
    if run.device_type == "cpu" or cpu is None or acc is None:
        return []
    cpu_acc = cpu.metrics.get(Metrics.TEST_ACCURACY)
    if cpu_acc is None or abs(acc - cpu_acc) <= tol.accuracy:
        return []
    epoch = run.params.get(Params.EPOCHS, "last")
    loss, cpu_loss = run.metrics.get(Metrics.TEST_LOSS), cpu.metrics.get(Metrics.TEST_LOSS)
    losses_agree = (
        loss is not None
        and cpu_loss is not None
        and abs(loss - cpu_loss) <= max(0.05 * abs(cpu_loss), 0.01)
    )
    epochs_apart = _epochs_apart(run, cpu, tol, client)
    where = f"after epoch {epoch}"
    if len(epochs_apart) > 1:
        every = str(len(epochs_apart)) == epoch
        where += f" (and in {'every epoch' if every else f'{len(epochs_apart)} epochs'})"
    message = f"{run.device} test accuracy {acc:.1%} vs {cpu_acc:.1%} on the CPU {where}"
    if losses_agree:
        message += (
            f", while the test losses agree ({loss:.3f} vs {cpu_loss:.3f}): the metric "
            f"computation on {run.device_type} is suspect, not the training"
        )
    elif loss is not None and cpu_loss is not None:
        message += f", and the test losses differ too ({loss:.3f} vs {cpu_loss:.3f})"
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "accuracy-mismatch",
            ERROR,
            message,
            values={
                "test_accuracy": acc,
                "cpu_test_accuracy": cpu_acc,
                "losses_agree": losses_agree,
                "cpu_run_id": cpu.run_id,
                "epochs_apart": epochs_apart,
            },
        )
    ]


def _epochs_apart(run, cpu, tol, client) -> list[int]:
    """The epochs at which the accuracies differ (histories fetched for flagged pairs only)."""
    if client is None:
        return []
    mine = {m.step: m.value for m in client.get_metric_history(run.run_id, Metrics.TEST_ACCURACY)}
    theirs = {m.step: m.value for m in client.get_metric_history(cpu.run_id, Metrics.TEST_ACCURACY)}
    return sorted(s for s in mine.keys() & theirs.keys() if abs(mine[s] - theirs[s]) > tol.accuracy)


def _accuracy_vs_history(run, group, tol) -> list[Finding]:
    acc = run.metrics.get(Metrics.TEST_ACCURACY)
    history = [
        h.metrics[Metrics.TEST_ACCURACY]
        for h in history_of(run, group, tol.history)
        if Metrics.TEST_ACCURACY in h.metrics
    ]
    if acc is None or len(history) < MIN_HISTORY:
        return []
    median, allowed = noise_threshold(history, tol.accuracy, relative=False)
    if acc >= median - allowed:
        return []
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "accuracy-below-history",
            ERROR,
            f"{run.device} on {run.host}: test accuracy {acc:.1%} vs a median of {median:.1%} "
            f"over its last {len(history)} runs",
            values={"test_accuracy": acc, "history_median": median},
        )
    ]


def _parity(run) -> list[Finding]:
    agreement = run.metrics.get(Metrics.PARITY_ARGMAX_AGREEMENT)
    if agreement is None or agreement >= PARITY_MIN_AGREEMENT:
        return []
    diff = run.metrics.get(Metrics.PARITY_MAX_ABS_LOGIT_DIFF, float("nan"))
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "device-numerics",
            ERROR,
            f"{run.device}: the same weights and inputs give the CPU's prediction for only "
            f"{agreement:.1%} of test images (max logit difference {diff:.3g})",
            values={"parity_argmax_agreement": agreement, "parity_max_abs_logit_diff": diff},
        )
    ]


def _loss_not_falling(run, client) -> list[Finding]:
    final = run.metrics.get(Metrics.TRAIN_LOSS)
    if client is None or final is None or not math.isfinite(final):
        return []
    if final < WELL_BELOW_CHANCE_LOSS * math.log(run.num_classes):
        return []  # clearly learned something: no need to read the history
    losses = [m.value for m in client.get_metric_history(run.run_id, Metrics.TRAIN_LOSS)]
    if len(losses) < 2:
        return []
    tenth = max(1, len(losses) // 10)
    first, last = statistics.fmean(losses[:tenth]), statistics.fmean(losses[-tenth:])
    if last <= first * (1 - LOSS_MUST_FALL):
        return []
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "loss-not-falling",
            WARNING,
            f"{run.device}: the training loss did not fall (first tenth {first:.3f}, "
            f"last tenth {last:.3f})",
            values={"first": first, "last": last},
        )
    ]


# --- the compare stage: report, log a run of its own, tag flagged runs -----------------------


@dataclass
class CompareOptions:
    experiment: str | None = "device-comparison"
    run_ids: tuple[str, ...] = ()
    filter_string: str = ""
    latest_only: bool = False
    tolerances: Tolerances = field(default_factory=Tolerances)
    output_json: Path | None = None
    output_dir: Path | None = None


def run(opts: CompareOptions, tracking_uri: str | None, host: str | None = None) -> int:
    """Compare finished runs, report, log a compare run; return the number of findings."""
    from pipeline import report

    client = tracking.connect(tracking_uri)
    selection = load(client, opts.experiment, opts.run_ids, opts.filter_string, opts.latest_only)
    findings, groups = judge(selection, opts.tolerances, client)
    tables = report.tables(selection, groups, findings)
    report.print_terminal(console.out, tables, findings, selection.left_out)
    as_json = report.to_json(tables, findings, selection.left_out)
    if opts.output_json:
        opts.output_json.write_text(json.dumps(as_json, indent=2))

    run = tracking.Run.start(
        client,
        selection.experiment_ids[0],
        f"compare-{time.strftime('%Y%m%d-%H%M%S')}",
        {
            Tags.STAGE: Stages.COMPARE,
            Tags.HOST: host or socket.gethostname(),
            **tracking.environment_tags(),
        },
    )
    try:
        run.log_params(
            {
                "speed_tolerance": opts.tolerances.speed,
                "accuracy_tolerance": opts.tolerances.accuracy,
                "history": opts.tolerances.history,
                "filter": opts.filter_string or "-",
                "run_ids": ",".join(opts.run_ids) or "-",
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
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            plots = report.plot_groups(client, groups, tables, findings, folder)
            (folder / "report.md").write_text(
                report.markdown(tables, findings, selection.left_out, plots)
            )
            (folder / "findings.json").write_text(json.dumps(as_json, indent=2))
            run.log_artifacts(folder)
            if opts.output_dir:
                opts.output_dir.mkdir(parents=True, exist_ok=True)
                for f in folder.iterdir():
                    (opts.output_dir / f.name).write_bytes(f.read_bytes())
        _tag_flags(client, selection, findings)
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")
    pictures = f"{len(plots)} plot{'s' if len(plots) != 1 else ''}"
    console.out.print(f"compare run {run.run_id}: report.md, findings.json and {pictures} logged")
    return len(findings)


def _tag_flags(client, selection: Selection, findings: list) -> None:
    """Tag each flagged run with its finding kinds and add them to its description; runs that
    are clean again lose both. Runs whose state did not change are not written to."""
    kinds: dict[str, set[str]] = {}
    for f in findings:
        kinds.setdefault(f.run_id, set()).add(f.kind)
    for r in selection.runs:
        if r.run_id not in selection.judged:
            continue
        flags = ",".join(sorted(kinds.get(r.run_id, ())))
        if flags == r.tags.get(Tags.FLAGS, ""):
            continue
        note = r.tags.get(Tags.NOTE, "").split(COMPARE_NOTE)[0].rstrip()
        if flags:
            client.set_tag(r.run_id, Tags.FLAGS, flags)
            note += f"\n\n{COMPARE_NOTE}: flagged {flags.replace(',', ', ')}."
        else:
            client.delete_tag(r.run_id, Tags.FLAGS)
            note += f"\n\n{COMPARE_NOTE}: no findings."
        client.set_tag(r.run_id, Tags.NOTE, note.lstrip())


COMPARE_NOTE = "Latest compare"
