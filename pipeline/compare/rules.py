"""The rules: flag speed regressions and accuracy anomalies.

Pure functions over records.py: `judge` applies every rule that can apply to each
judged run and returns findings. The rules that need a metric history get it from a function
they are handed (`History`), so that compare fetches histories only for the runs that need
them.

Every finding that compares a run with a baseline names what differs between the two in the
environment the runs record (changes.py). A speed finding says how sure it is
(evidence.py): confirmed, unconfirmed or insufficient data; all speed comparisons of
one command are tested at one family-wise level, and a drop past the tolerance that the
evidence cannot call is a note, not a finding. A sweep's repeated runs of one cell (same
group, device, host and parent) are one side of a comparison, reported on the latest of them.

Rules (tolerances are options of `pipeline compare`):
- accelerator-slower-than-cpu: a cuda/mps run's steady-state throughput is below the latest
  CPU run of its group on the same host by more than the speed tolerance and by more than
  the two sides' noise explains (evidence.py).
- slower-than-history: the same against the last N earlier finished runs of its group,
  device and host.
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
- device-input-mismatch: the device made other input values than the CPU from the same bytes.
- evaluation-mismatch: a test run scores differently from the run whose weights it evaluated.
- precision-accuracy-loss: a tf32/bf16/fp16 run's final accuracy is more than the accuracy
  tolerance below the fp32 run of the same model, data, device and host.
- compiled-accuracy-mismatch: a compiled run's final accuracy differs by more than the
  accuracy tolerance from the eager run of the same workload, device and host.
- cpu-fallback: an accelerator run some of whose operations its back end ran on the CPU.
- run-failed, run-killed: a selected run of any stage that did not finish.
- doctor-failed: a selected doctor run some of whose checks failed or raised on the device.

`test` runs go through the rules that need no group: non-finite-loss,
accuracy-inconsistent-with-loss, device-numerics, and evaluation-mismatch when their source
run is among those read.
"""

from pipeline.compare import evidence, sanity, speed, twins
from pipeline.compare.changes import changed, describe_changes
from pipeline.compare.records import (
    ACCURACY,
    ERROR,
    RUN,
    Finding,
    Group,
    History,
    Operations,
    RunSummary,
    Selection,
    Tolerances,
    groups_of,
    history_of,
    latest_cpu,
    repeats,
)
from pipeline.schema import Metrics, Params, Tags


def judge(
    selection: Selection,
    tol: Tolerances,
    history: History | None = None,
    operations: Operations | None = None,
    groups: list[Group] | None = None,
) -> tuple[list[Finding], list, list[str]]:
    """All findings on the judged runs, the groups of the finished train runs, and the notes:
    speed drops past the tolerance that the evidence cannot call. The speed comparisons of
    the whole command are tested together, at one family-wise level. `groups`, when given,
    must be groups_of(selection.runs) made for this call: judge writes their baselines."""
    groups = groups_of(selection.runs) if groups is None else groups
    findings: list[Finding] = []

    def add(run: RunSummary, found: list[Finding], group: int | None = None) -> None:
        for f in found:
            f.device, f.host, f.run_name, f.group = run.device, run.host, run.name, group
            if f.kind in NAMES_AN_OPERATION:
                f.message += doctor_note(run, selection.doctors)
            findings.append(f)

    references = twins.references(selection.runs)
    compared: list[speed.Comparison] = []
    for group in groups:
        for run in group.runs:
            if run.run_id in selection.judged:
                if _latest_judged_repeat(run, group, selection.judged):
                    compared += speed.comparisons(run, group, tol, history)
                found = _check_run(run, group, tol, history)
                found += twins.findings(run, references, tol)
                add(run, found, group.id)
    k = sum(c.test is not None for c in compared)
    alpha = evidence.family_alpha(k)
    notes = []
    group_of = {g.id: g for g in groups}
    for c in compared:
        if c.kind == "slower-than-history":
            group_of[c.group].baselines[c.run.run_id] = speed.baseline(c, alpha)
        outcome = speed.verdict_of(c, alpha, k, tol, operations)
        if isinstance(outcome, Finding):
            add(c.run, [outcome], c.group)
        elif outcome:
            notes.append(outcome)
    for run in selection.unfinished:
        add(run, _unfinished(run))
    by_id = {r.run_id: r for r in selection.runs}
    for run in selection.tests:
        add(run, [*sanity.single_run(run), *_evaluation_vs_source(run, by_id, tol)])
    for run in selection.checked:
        add(run, _doctor_failed(run))
    return findings, groups, notes


# Findings that mean one of the device's operations gives wrong results.
NAMES_AN_OPERATION = {
    "accuracy-mismatch",
    "accuracy-inconsistent-with-loss",
    "evaluation-mismatch",
    "device-numerics",
    "device-input-mismatch",
    "non-finite-loss",
}


def doctor_note(run: RunSummary, doctors: dict[tuple[str, str], RunSummary]) -> str:
    """What the latest doctor run of the run's device and host found, or how to run one."""
    doctor = doctors.get((run.device, run.host))
    if doctor is None:
        return (
            f"; to name the broken operation, run `python -m pipeline doctor --device "
            f"{run.device}` on {run.host}"
        )
    found = doctor.tags.get(Tags.DOCTOR_FAILURES, "")
    ran = doctor.metrics.get(f"{Metrics.CHECKS}_pass")
    if found:
        verdict = f"found: {found}"
    elif ran == 0:
        verdict = "could run none of its checks"
    else:
        verdict = "found every operation it could check right"
        missing = doctor.metrics.get(f"{Metrics.CHECKS}_unsupported", 0)
        if missing:
            verdict += f" ({missing:.0f} unsupported there)"
    return f"; doctor run {doctor.run_id[:8]} on this host {verdict}"


def _unfinished(run: RunSummary) -> list[Finding]:
    """A judged run that did not finish: stopped for a diverging loss, failed, or killed."""
    reason = run.tags.get(Tags.FAILURE_REASON, "")
    if run.status == "FAILED" and reason.startswith("diverged"):
        return [
            Finding(run.run_id, ACCURACY, "diverged", ERROR, f"{run.device} run stopped: {reason}")
        ]
    kind = "run-killed" if run.status == "KILLED" else "run-failed"
    why = reason or "no reason recorded"
    return [Finding(run.run_id, RUN, kind, ERROR, f"{run.device} run ended {run.status}: {why}")]


def _doctor_failed(run: RunSummary) -> list[Finding]:
    """A selected doctor run some of whose checks failed or raised on the device."""
    bad = sum(run.metrics.get(f"{Metrics.CHECKS}_{s}", 0) for s in ("fail", "error"))
    if not bad:
        return []
    ran = sum(v for k, v in run.metrics.items() if k.startswith(f"{Metrics.CHECKS}_"))
    which = run.tags.get(Tags.DOCTOR_FAILURES, "") or "see the run's report"
    message = (
        f"doctor: {bad:.0f} of {ran:.0f} checks on {run.device} disagree with the CPU: {which}"
    )
    return [Finding(run.run_id, ACCURACY, "doctor-failed", ERROR, message[:2000])]


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
    diff = changed(run, [source], same_by_design=("device_name",))
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "evaluation-mismatch",
            ERROR,
            f"the weights trained on {source.device} score {acc:.1%} evaluated on "
            f"{run.device} but {source_acc:.1%} on {source.device}: with the same weights, the "
            f"evaluation on {run.device if acc < source_acc else source.device} is suspect"
            + describe_changes(diff),
            values={
                "test_accuracy": acc,
                "source_test_accuracy": source_acc,
                "source_run_id": source.run_id,
                "changed": diff,
            },
        )
    ]


def _latest_judged_repeat(run: RunSummary, group, judged: set[str]) -> bool:
    """Whether the run is the latest judged of its sweep cell's repeats (a run outside a
    sweep is its own): speed comparisons take the repeats together and report on it."""
    if not run.parent:
        return True
    cell = group.cells[(run.parent, run.device, run.host)]
    later = [r for r in cell if r.run_id in judged and run in repeats(r, cell)]
    return later[-1] is run


def _check_run(run, group, tol, history) -> list[Finding]:
    """Every rule but the speed comparisons on a finished train run."""
    return [
        *speed.slower_to_target(run, group, tol),
        *speed.cpu_fallback(run),
        *sanity.single_run(run),
        *_accuracy_vs_cpu(run, group, tol, history),
        *_accuracy_vs_history(run, group, tol),
        *sanity.loss_not_falling(run, history),
    ]


def _accuracy_vs_cpu(run, group, tol, history) -> list[Finding]:
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
    epochs_apart = _epochs_apart(run, cpu, tol, history)
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
    diff = changed(run, [cpu], same_by_design=("device_name",))
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "accuracy-mismatch",
            ERROR,
            message + describe_changes(diff),
            values={
                "test_accuracy": acc,
                "cpu_test_accuracy": cpu_acc,
                "losses_agree": losses_agree,
                "cpu_run_id": cpu.run_id,
                "epochs_apart": epochs_apart,
                "changed": diff,
            },
        )
    ]


def _epochs_apart(run, cpu, tol, history) -> list[int]:
    """The epochs at which the accuracies differ (histories fetched for flagged pairs only)."""
    if history is None:
        return []
    mine = dict(history(run.run_id, Metrics.TEST_ACCURACY))
    theirs = dict(history(cpu.run_id, Metrics.TEST_ACCURACY))
    return sorted(s for s in mine.keys() & theirs.keys() if abs(mine[s] - theirs[s]) > tol.accuracy)


def _accuracy_vs_history(run, group, tol) -> list[Finding]:
    acc = run.metrics.get(Metrics.TEST_ACCURACY)
    earlier = [h for h in history_of(run, group, tol.history) if Metrics.TEST_ACCURACY in h.metrics]
    history = [h.metrics[Metrics.TEST_ACCURACY] for h in earlier]
    if acc is None or len(history) < speed.MIN_HISTORY:
        return []
    median, allowed = evidence.noise_threshold(history, tol.accuracy, relative=False)
    if acc >= median - allowed:
        return []
    diff = changed(run, earlier)
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "accuracy-below-history",
            ERROR,
            f"{run.device} on {run.host}: test accuracy {acc:.1%} vs a median of {median:.1%} "
            f"over its last {len(history)} runs" + describe_changes(diff),
            values={"test_accuracy": acc, "history_median": median, "changed": diff},
        )
    ]
