"""compare's rules: flag speed regressions and accuracy anomalies.

Pure functions over pipeline.records: `judge` applies every rule that can apply to each
judged run and returns findings. The rules that need a metric history get it from a function
they are handed (`History`), so that compare fetches histories only for the runs that need
them.

Every finding that compares a run with a baseline (another device's run, its own history,
the run whose weights a test run evaluated) names what differs between the two in the
environment the runs record (`changed`): torch, CUDA, driver, device name, host, Python,
MLflow, pipeline version, git commit.

A speed finding says how sure it is. When both sides have at least MIN_SAMPLES steady-state
epoch times (the epochs after the first of one run, or of the runs of a history), a one-sided
Mann-Whitney U test asks whether the run's epochs are slower than the baseline's, and a
bootstrap gives a confidence interval of the speed ratio median(baseline) / median(run). The
finding is an error when the slowdown exceeds the tolerance and p < ALPHA; a slowdown past
the tolerance that the samples cannot confirm is a warning, "unconfirmed (n samples)".

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
- evaluation-mismatch: a test run scores differently from the run whose weights it evaluated.
- precision-accuracy-loss: a tf32/bf16/fp16 run's final accuracy is more than the accuracy
  tolerance below the fp32 run of the same model, data, device and host.
- run-failed, run-killed: a selected run that did not finish.

`test` runs go through the rules that need no group: non-finite-loss,
accuracy-inconsistent-with-loss, device-numerics, and evaluation-mismatch when their source
run is among those read.
"""

import math
import statistics
from collections import Counter
from collections.abc import Callable

from pipeline.records import Finding, Group, RunSummary, Selection, Tolerances, groups_of
from pipeline.schema import Metrics, Params, Tags

SPEED, ACCURACY, RUN = "speed", "accuracy", "run"
ERROR, WARNING = "error", "warning"
MAD_SCALE = 1.4826  # MAD × this estimates the standard deviation of normal noise
NOISE_SIGMAS = 3.0
MIN_HISTORY = 2
PARITY_MIN_AGREEMENT = 0.99
WELL_BELOW_CHANCE_LOSS = 0.8  # "well below ln(classes)": below this fraction of it
LOSS_MUST_FALL = 0.01
MIN_SAMPLES = 5  # per side, for the rank test
ALPHA = 0.05


# (run id, metric key) -> [(step, value), ...]: a metric's history, as compare reads it
History = Callable[[str, str], list[tuple[int, float]]]


# A run's speed, in order of preference: steady-state throughput, else the training time,
# else the whole command's time (the times inverted: higher is faster).
SPEED_FIGURES = (Metrics.SAMPLES_PER_S, Metrics.TRAIN_TIME_S, Metrics.WALL_TIME_S)


def speed_figure(runs: list[RunSummary]) -> str | None:
    """The first of SPEED_FIGURES that every one of the runs has (finite and positive)."""
    for key in SPEED_FIGURES:
        if all(0 < r.metrics.get(key, math.nan) < math.inf for r in runs):
            return key
    return None


def speed(run: RunSummary, key: str) -> float:
    """The run's speed by that figure, higher is faster."""
    value = run.metrics[key]
    return value if key == Metrics.SAMPLES_PER_S else 1.0 / value


def speed_ratio(run: RunSummary, base: RunSummary) -> float | None:
    """run's speed / base's speed on the first figure both have (higher: run is faster)."""
    key = speed_figure([run, base])
    return speed(run, key) / speed(base, key) if key else None


def noise_threshold(history: list[float], floor: float, relative: bool) -> tuple[float, float]:
    """(median, allowed drop) of a history: the drop is max(floor, 3 × scaled MAD)."""
    median = statistics.median(history)
    mad = statistics.median(abs(h - median) for h in history) * MAD_SCALE
    spread = NOISE_SIGMAS * mad / median if relative and median else NOISE_SIGMAS * mad
    return median, max(floor, spread)


# What a run records of its environment: (name in a finding's values, tag, label in a message).
ENVIRONMENT = (
    ("torch_version", Tags.TORCH_VERSION, "torch"),
    ("cuda_version", Tags.TORCH_CUDA, "CUDA"),
    ("driver_version", Tags.GPU_DRIVER, "driver"),
    ("device_name", Tags.DEVICE_NAME, "device"),
    ("host", Tags.HOST, "host"),
    ("host_allocator", Tags.HOST_ALLOCATOR, "host allocator"),
    ("python_version", Tags.PYTHON_VERSION, "Python"),
    ("mlflow_version", Tags.MLFLOW_VERSION, "MLflow"),
    ("pipeline_version", Tags.PIPELINE_VERSION, "pipeline"),
    ("git_commit", Tags.GIT_COMMIT, "commit"),
)


def changed(
    run: RunSummary, baseline: list[RunSummary], same_by_design: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """What differs in the recorded environment between a run and its baseline: name ->
    [baseline's value, run's value]. A baseline of several runs counts by its most common
    value. Names in `same_by_design` are left out (a GPU run and its CPU baseline differ in
    device name by design)."""
    diff = {}
    for name, tag, _ in ENVIRONMENT:
        ours = run.tags.get(tag)
        theirs = [b.tags[tag] for b in baseline if tag in b.tags]
        if name in same_by_design or ours is None or not theirs:
            continue
        usual = Counter(theirs).most_common(1)[0][0]
        if usual != ours:
            diff[name] = [usual, ours]
    return diff


def describe_changes(diff: dict[str, list[str]]) -> str:
    """'; changed since the baseline: torch 2.13.0 -> 2.14.1', or nothing."""
    if not diff:
        return ""
    label = {name: text for name, _, text in ENVIRONMENT}
    parts = [f"{label[k]} {old} -> {new}" for k, (old, new) in diff.items()]
    return "; changed since the baseline: " + ", ".join(parts)


def steady_epoch_times(run: RunSummary, history: History | None) -> list[float]:
    """The run's epoch times after the first (which carries one-time costs), by step; none
    when the run has no per-epoch times or no history reader is given."""
    if history is None or Metrics.EPOCH_TIME_S not in run.metrics:
        return []
    times = [value for _, value in sorted(history(run.run_id, Metrics.EPOCH_TIME_S))]
    return times[1:] if len(times) > 1 else times


def speed_confidence(run: RunSummary, baseline: list[RunSummary], history: History | None) -> dict:
    """confidence() of the run's steady epoch times against its baseline's. Histories only
    where the rule needs them: none when the run's `epochs` param says it cannot have
    MIN_SAMPLES steady epochs, and the baseline's only when the run's are enough."""
    epochs = run.params.get(Params.EPOCHS, "")
    if epochs.isdigit() and int(epochs) - 1 < MIN_SAMPLES:
        return {"samples": max(int(epochs) - 1, min(int(epochs), 1))}
    ours = steady_epoch_times(run, history)
    if len(ours) < MIN_SAMPLES:
        return {"samples": len(ours)}
    return confidence(ours, [t for b in baseline for t in steady_epoch_times(b, history)])


def confidence(run_times: list[float], base_times: list[float]) -> dict:
    """How sure a slowdown is: the samples per side; with MIN_SAMPLES or more on both sides,
    the one-sided Mann-Whitney U p-value that the run's epochs take longer, and the 95%
    bootstrap interval of the speed ratio median(baseline) / median(run)."""
    n = min(len(run_times), len(base_times))
    if n < MIN_SAMPLES:
        return {"samples": n}
    import numpy as np
    from scipy import stats

    p_value = stats.mannwhitneyu(run_times, base_times, alternative="greater").pvalue

    def ratio(base, ours, axis=-1):
        return np.median(base, axis=axis) / np.median(ours, axis=axis)

    interval = stats.bootstrap(
        (base_times, run_times), ratio, n_resamples=2000, method="percentile", rng=0
    ).confidence_interval
    return {"samples": n, "p_value": float(p_value), "ratio_ci": [interval.low, interval.high]}


def speed_severity(sure: dict) -> tuple[str, str]:
    """(severity, what to add to the message) of a slowdown past the tolerance."""
    if sure.get("p_value", 1.0) < ALPHA:
        low, high = sure["ratio_ci"]
        return (
            ERROR,
            f"; confirmed (p = {sure['p_value']:.2g} over {sure['samples']}+ epochs a side, "
            f"speed ratio 95% CI {low:.2f}-{high:.2f})",
        )
    return WARNING, f"; unconfirmed ({sure['samples']} samples)"


def latest_cpu(group: Group, host: str | None = None) -> RunSummary | None:
    cpus = [r for r in group.runs if r.device_type == "cpu" and (host is None or r.host == host)]
    return cpus[-1] if cpus else None


def history_of(run: RunSummary, group: Group, n: int) -> list[RunSummary]:
    """The last n earlier finished runs of the run's group on the same device and host."""
    earlier = [
        r
        for r in group.runs
        if r.device == run.device and r.host == run.host and r.start_time < run.start_time
    ]
    return earlier[-n:]


def judge(selection: Selection, tol: Tolerances, history: History | None = None):
    """All findings on the judged runs, and the groups of the finished train runs."""
    groups = groups_of(selection.runs)
    findings: list[Finding] = []

    def add(run: RunSummary, found: list[Finding], group: int | None = None) -> None:
        for f in found:
            f.device, f.host, f.run_name, f.group = run.device, run.host, run.name, group
            if f.kind in NAMES_AN_OPERATION:
                f.message += doctor_note(run, selection.doctors)
            findings.append(f)

    fp32 = fp32_twins(selection.runs)
    for group in groups:
        for run in group.runs:
            if run.run_id in selection.judged:
                found = _check_run(run, group, tol, history)
                found += _precision_loss(run, fp32.get(twin_key(run)), tol)
                add(run, found, group.id)
    for run in selection.failed:
        add(run, _unfinished(run))
    by_id = {r.run_id: r for r in selection.runs}
    for run in selection.tests:
        add(run, [*_single_run(run), *_evaluation_vs_source(run, by_id, tol)])
    return findings, groups


# Findings that mean one of the device's operations gives wrong results.
NAMES_AN_OPERATION = {
    "accuracy-mismatch",
    "accuracy-inconsistent-with-loss",
    "evaluation-mismatch",
    "device-numerics",
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
    verdict = f"found: {found}" if found else "found every checked operation right"
    return f"; doctor run {doctor.run_id[:8]} on this host {verdict}"


def twin_key(run: RunSummary) -> tuple:
    """What a run shares with its fp32 twin: every grouping param but the precision, the
    device that ran, and the host."""
    return (
        tuple(kv for kv in run.group_key if kv[0] != Params.PRECISION),
        run.device,
        run.host,
    )


def fp32_twins(runs: list[RunSummary]) -> dict[tuple, RunSummary]:
    """The latest fp32 run of each twin key (runs without a precision param are fp32)."""
    return {twin_key(r): r for r in runs if r.params.get(Params.PRECISION, "fp32") == "fp32"}


def _precision_loss(run: RunSummary, twin: RunSummary | None, tol: Tolerances) -> list[Finding]:
    """A tf32/bf16/fp16 run whose final accuracy is more than the tolerance below its fp32
    twin's: the same model and data on the same device, in full precision."""
    precision = run.params.get(Params.PRECISION, "fp32")
    acc = run.metrics.get(Metrics.TEST_ACCURACY)
    if precision == "fp32" or twin is None or acc is None:
        return []
    fp32_acc = twin.metrics.get(Metrics.TEST_ACCURACY)
    if fp32_acc is None or acc >= fp32_acc - tol.accuracy:
        return []
    diff = changed(run, [twin])
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "precision-accuracy-loss",
            ERROR,
            f"{run.device} in {precision} reaches {acc:.1%} test accuracy, {fp32_acc - acc:.1%} "
            f"below the same workload in fp32 on it ({fp32_acc:.1%}; tolerance "
            f"{tol.accuracy:.1%})" + describe_changes(diff),
            values={
                "test_accuracy": acc,
                "fp32_test_accuracy": fp32_acc,
                "fp32_run_id": twin.run_id,
                "precision": precision,
                "changed": diff,
            },
        )
    ]


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


def _check_run(run, group, tol, history) -> list[Finding]:
    return [
        *_speed_vs_cpu(run, group, tol, history),
        *_speed_vs_history(run, group, tol, history),
        *_single_run(run),
        *_accuracy_vs_cpu(run, group, tol, history),
        *_accuracy_vs_history(run, group, tol),
        *_loss_not_falling(run, history),
    ]


def _single_run(run) -> list[Finding]:
    """The rules that need nothing but the run itself."""
    return [*_non_finite(run), *_accuracy_vs_loss(run), *_parity(run)]


def _speed_vs_cpu(run, group, tol, history) -> list[Finding]:
    cpu = latest_cpu(group, run.host)
    if run.device_type == "cpu" or cpu is None:
        return []
    found = []
    diff = changed(run, [cpu], same_by_design=("device_name",))
    ratio = speed_ratio(run, cpu)
    if ratio is not None and ratio < 1 - tol.speed:
        sure = speed_confidence(run, [cpu], history)
        severity, how_sure = speed_severity(sure)
        found.append(
            Finding(
                run.run_id,
                SPEED,
                "accelerator-slower-than-cpu",
                severity,
                f"{run.device} trains at {ratio:.2f}× the speed of the CPU on {run.host} "
                f"({1 / ratio:.2f}× slower; tolerance {tol.speed:.0%}){how_sure}"
                + describe_changes(diff),
                values={"speed_vs_cpu": ratio, "cpu_run_id": cpu.run_id, **sure, "changed": diff},
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
                f"{run.device} reached the target accuracy in {a:.2f} s, the CPU in {b:.2f} s"
                + describe_changes(diff),
                values={"time_to_target_s": a, "cpu_time_to_target_s": b, "changed": diff},
            )
        )
    return found


def _speed_vs_history(run, group, tol, history) -> list[Finding]:
    key = speed_figure([run])
    if key is None:
        return []
    earlier = [h for h in history_of(run, group, tol.history) if speed_figure([h]) == key]
    if len(earlier) < MIN_HISTORY:
        return []
    median, allowed = noise_threshold([speed(h, key) for h in earlier], tol.speed, relative=True)
    ratio = speed(run, key) / median
    if ratio >= 1 - allowed:
        return []
    sure = speed_confidence(run, earlier, history)
    severity, how_sure = speed_severity(sure)
    diff = changed(run, earlier)
    return [
        Finding(
            run.run_id,
            SPEED,
            "slower-than-history",
            severity,
            f"{run.device} on {run.host} ran at {ratio:.2f}× the median speed of its last "
            f"{len(earlier)} runs (allowed drop {allowed:.0%}){how_sure}" + describe_changes(diff),
            values={
                "speed_vs_history": ratio,
                "history_runs": len(earlier),
                **sure,
                "changed": diff,
            },
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
    if acc is None or len(history) < MIN_HISTORY:
        return []
    median, allowed = noise_threshold(history, tol.accuracy, relative=False)
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


def _parity(run) -> list[Finding]:
    """The parity probe found the device's predictions unlike the CPU's: fewer than 99% agree,
    or, in bf16/fp16, more than a point fewer than the precision alone explains."""
    agreement = run.metrics.get(Metrics.PARITY_ARGMAX_AGREEMENT)
    expected = run.metrics.get(Metrics.PARITY_PRECISION_ARGMAX_AGREEMENT, 1.0)
    floor = min(PARITY_MIN_AGREEMENT, expected - (1 - PARITY_MIN_AGREEMENT))
    if agreement is None or agreement >= floor:
        return []
    diff = run.metrics.get(Metrics.PARITY_MAX_ABS_LOGIT_DIFF, float("nan"))
    gap = ""
    if Metrics.PARITY_PRECISION_ARGMAX_AGREEMENT in run.metrics:
        gap = f"; the precision alone explains {expected:.1%} agreement"
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "device-numerics",
            ERROR,
            f"{run.device}: the same weights and inputs give the CPU's prediction for only "
            f"{agreement:.1%} of test images (max logit difference {diff:.3g}){gap}",
            values={
                "parity_argmax_agreement": agreement,
                "parity_max_abs_logit_diff": diff,
                "expected_agreement": expected,
            },
        )
    ]


def _loss_not_falling(run, history) -> list[Finding]:
    final = run.metrics.get(Metrics.TRAIN_LOSS)
    if history is None or final is None or not math.isfinite(final):
        return []
    if final < WELL_BELOW_CHANCE_LOSS * math.log(run.num_classes):
        return []  # clearly learned something: no need to read the history
    losses = [value for _, value in sorted(history(run.run_id, Metrics.TRAIN_LOSS))]  # by step
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
