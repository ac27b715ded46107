"""The speed rules: a run slower than the CPU of its host, or than its own history.

Pure functions over records.py. A run's speed is its steady-state training throughput
(samples_per_s), else the inverse of its training time, else of its whole command's time
(the M1 record has nothing else). A sweep's repeated runs of one cell are one side of a
comparison together. Each rule makes a `Comparison`; the command judges all of its
comparisons at one level (`verdict_of`, with evidence.family_alpha), so that its false-alarm
rate holds per command. How sure a finding is comes from evidence.py; what changed in the
environment from changes.py.
"""

import math
import statistics
from dataclasses import dataclass

from pipeline.compare import evidence
from pipeline.compare.changes import changed, describe_changes
from pipeline.compare.records import (
    ERROR,
    SPEED,
    WARNING,
    Finding,
    Group,
    History,
    Operations,
    RunSummary,
    Tolerances,
    history_of,
    latest_cpu,
    repeats,
)
from pipeline.schema import Metrics, Params, Tags

MIN_HISTORY = 2  # earlier runs before a history is a baseline at all

# A run's speed, in order of preference (the times inverted: higher is faster).
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


def steady_epochs(run: RunSummary, history: History | None) -> list[float]:
    """The run's training throughput in each epoch after the first (which carries one-time
    costs), by step; none when the run has not logged it or no history reader is given."""
    if history is None or Metrics.EPOCH_SAMPLES_PER_S not in run.metrics:
        return []
    steps = [v for _, v in sorted(history(run.run_id, Metrics.EPOCH_SAMPLES_PER_S))][1:]
    return [v for v in steps if 0 < v < math.inf]  # a broken epoch is no sample


def steady_epochs_planned(run: RunSummary) -> int:
    """How many steady epochs the run's `epochs` param allows (a large number when unknown)."""
    planned = run.params.get(Params.EPOCHS, "")
    return max(int(planned) - 1, 0) if planned.isdigit() else evidence.MIN_EPOCHS


def speed_vs_cpu(run: RunSummary, group: Group) -> float | None:
    """The run's speed against the latest CPU run of its group on its host, each taken with
    its repeats (medians): the table's `vs cpu`; None without such a CPU run or a shared
    speed figure."""
    cpu = latest_cpu(group, run.host)
    if cpu is None:
        return None
    ours, base = repeats(run, group.runs), repeats(cpu, group.runs)
    key = speed_figure(ours + base)
    if key is None:
        return None
    return statistics.median(speed(r, key) for r in ours) / statistics.median(
        speed(r, key) for r in base
    )


@dataclass
class Comparison:
    """One speed comparison of a run side with a baseline side, before its verdict: the
    command tests all of its comparisons together (evidence.family_alpha)."""

    kind: str  # accelerator-slower-than-cpu | slower-than-history
    run: RunSummary  # the latest run of the run side, which a finding is reported on
    group: int
    ours: list[RunSummary]
    base: list[RunSummary]  # the baseline runs kept (slow outliers set aside)
    ratio: float  # of the two sides' speeds
    test: evidence.Test | None  # None: no noise estimate
    sizes: dict  # {"runs": [m, n], "epochs": [e, e]}: what each side had
    set_aside: list[RunSummary]
    figure: str  # the speed figure both sides were compared by (SPEED_FIGURES)


def compare_sides(
    kind: str,
    run: RunSummary,
    group: Group,
    ours: list[RunSummary],
    base: list[RunSummary],
    key: str,
    history: History | None,
) -> Comparison:
    """The comparison of two sides by their speed figure: their runs when a side has two or
    more, else the steady epochs of one run against one (read only when the `epochs` params
    allow enough of them), else no noise estimate."""
    a, b = [speed(r, key) for r in ours], [speed(r, key) for r in base]
    aside = evidence.slow_outliers(b)
    kept = [r for i, r in enumerate(base) if i not in aside]
    test = evidence.runs_test(a, b, aside)
    epochs = [0, 0]
    if test is None and key == Metrics.SAMPLES_PER_S:
        planned = [steady_epochs_planned(r) for r in (ours[-1], base[-1])]
        epochs = planned
        if min(planned) >= evidence.MIN_EPOCHS:
            ea, eb = steady_epochs(ours[-1], history), steady_epochs(base[-1], history)
            epochs = [len(ea), len(eb)]
            test = evidence.epochs_test(ea, eb)
    if test is not None and test.kind == evidence.RUNS:
        ratio = math.exp(test.log_ratio)  # of the geometric means, as the bound
    else:  # one run a side: the ratio of their speeds, as the table's
        ratio = statistics.median(a) / statistics.median(b)
    sizes = {"runs": [len(a), len(kept)], "epochs": epochs}
    skipped = [base[i] for i in aside]
    return Comparison(kind, run, group.id, ours, kept, ratio, test, sizes, skipped, key)


def baseline(c: Comparison, alpha: float) -> dict:
    """What a table row shows of the baseline its comparison used, in the verdict's own
    numbers: the median of the kept baseline runs' speed figure, the verdict's ratio, and the
    interval whose upper end is the verdict's bound (evidence.ratio_interval; none without a
    noise estimate)."""
    interval = evidence.ratio_interval(c.test, alpha) if c.test is not None else None
    return {
        "baseline_figure": c.figure,
        "baseline_median": statistics.median(r.metrics[c.figure] for r in c.base),
        "baseline_runs": len(c.base),
        "baseline_ratio": c.ratio,
        "baseline_ratio_ci": list(interval[:2]) if interval else None,
        "baseline_ratio_ci_level": interval[2] if interval else None,
    }


def vs_cpu(run: RunSummary, group: Group, history: History | None) -> Comparison | None:
    """An accelerator run (with its repeats) against the latest CPU run of its group on its
    host (with its repeats)."""
    cpu = latest_cpu(group, run.host)
    if run.device_type == "cpu" or cpu is None:
        return None
    ours, base = repeats(run, group.runs), repeats(cpu, group.runs)
    key = speed_figure(ours + base)
    if key is None:
        return None
    return compare_sides("accelerator-slower-than-cpu", run, group, ours, base, key, history)


def vs_history(
    run: RunSummary, group: Group, tol: Tolerances, history: History | None
) -> Comparison | None:
    """A run (with its repeats) against the last --history earlier runs of its group, device
    and host."""
    ours = repeats(run, group.runs)
    key = speed_figure(ours)
    if key is None:
        return None
    earlier = [h for h in history_of(run, group, tol.history) if speed_figure([h]) == key]
    if len(earlier) < MIN_HISTORY:
        return None
    return compare_sides("slower-than-history", run, group, ours, earlier, key, history)


def comparisons(
    run: RunSummary, group: Group, tol: Tolerances, history: History | None
) -> list[Comparison]:
    """Every speed comparison the run's side takes part in."""
    found = (vs_cpu(run, group, history), vs_history(run, group, tol, history))
    return [c for c in found if c is not None]


def verdict_of(
    c: Comparison, alpha: float, k: int, tol: Tolerances, operations: Operations | None
) -> Finding | str | None:
    """The comparison's verdict at the per-comparison level α: a finding; a note (a drop past
    the tolerance that the evidence cannot call); or None."""
    confidence = evidence.verdict(c.test, c.ratio, alpha, tol.speed)
    what = _what(c, tol)
    if confidence is None:
        if c.ratio >= 1 - tol.speed:
            return None
        if c.test is None:
            why = evidence.describe(None, alpha, k, c.sizes)
            return f"{what}: not flagged, a drop under {evidence.LARGE_EFFECT:.0%}; {why}"
        below = evidence.threshold(c.test, alpha)
        needs = f"a finding here needs below {below:.2f}×" if below >= 0.01 else "too noisy to call"
        return (
            f"{what}: within what the noise explains, not flagged ({needs}; "
            + evidence.describe(c.test, alpha, k, c.sizes)
            + ")"
        )
    sure = {"confidence": confidence, **evidence.values(c.test, alpha, k, c.sizes)}
    if c.set_aside:
        sure["set_aside"] = [r.run_id for r in c.set_aside]
    diff = changed(
        c.run, c.base, same_by_design=("device_name",) if c.kind != "slower-than-history" else ()
    )
    why = where_time_goes(c.run, c.base[-1], operations)
    if c.kind == "slower-than-history":
        figures = {"speed_vs_history": c.ratio, "history_runs": len(c.base)}
        extra = ""
    else:
        figures = {"speed_vs_cpu": c.ratio, "cpu_run_id": c.base[-1].run_id}
        extra = fallbacks_named(c.run)
    prefix = "" if confidence == evidence.INSUFFICIENT else f"{confidence}: "
    return Finding(
        c.run.run_id,
        SPEED,
        c.kind,
        ERROR if confidence == evidence.CONFIRMED else WARNING,
        f"{what}; {prefix}"
        + evidence.describe(c.test, alpha, k, c.sizes)
        + describe_slowdown(why)
        + extra
        + describe_changes(diff),
        values={**figures, **sure, "operations": why, "changed": diff},
    )


def _what(c: Comparison, tol: Tolerances) -> str:
    """The comparison's figure in words."""
    if c.kind == "slower-than-history":
        n = len(c.base)
        return (
            f"{c.run.device} on {c.run.host} ran at {c.ratio:.2f}× the speed of its last {n} "
            f"run{'s' * (n != 1)} (geometric mean; tolerance {tol.speed:.0%})"
        )
    return (
        f"{c.run.device} trains at {c.ratio:.2f}× the speed of the CPU on {c.run.host} "
        f"({1 / c.ratio:.2f}× slower; tolerance {tol.speed:.0%})"
    )


def slower_to_target(run: RunSummary, group: Group, tol: Tolerances) -> list[Finding]:
    """An accelerator run that reached the target accuracy later than its host's CPU."""
    cpu = latest_cpu(group, run.host)
    if run.device_type == "cpu" or cpu is None:
        return []
    a, b = run.metrics.get(Metrics.TIME_TO_TARGET_S), cpu.metrics.get(Metrics.TIME_TO_TARGET_S)
    if not (a and b and a > b * (1 + tol.speed)):
        return []
    diff = changed(run, [cpu], same_by_design=("device_name",))
    return [
        Finding(
            run.run_id,
            SPEED,
            "accelerator-slower-to-target",
            WARNING,
            f"{run.device} reached the target accuracy in {a:.2f} s, the CPU in {b:.2f} s"
            + describe_changes(diff),
            values={"time_to_target_s": a, "cpu_time_to_target_s": b, "changed": diff},
        )
    ]


def cpu_fallback(run: RunSummary) -> list[Finding]:
    """An accelerator run some of whose operations its back end ran on the CPU."""
    count = run.metrics.get(Metrics.CPU_FALLBACKS, 0)
    if run.device_type == "cpu" or not count:
        return []
    names = run.tags.get(Tags.CPU_FALLBACKS, "")
    return [
        Finding(
            run.run_id,
            SPEED,
            "cpu-fallback",
            WARNING,
            f"{run.device}: {count:.0f} operation{'s' * (count != 1)} ran on the CPU instead "
            f"(the back end lacks them): {names}",
            values={"cpu_fallbacks": names.split(", ") if names else []},
        )
    ]


def fallbacks_named(run: RunSummary) -> str:
    names = run.tags.get(Tags.CPU_FALLBACKS, "none")
    return "" if names in ("", "none") else f"; ran on the CPU instead: {names}"


def where_time_goes(run: RunSummary, base: RunSummary, operations: Operations | None) -> list[dict]:
    """explain() of the two runs' profiled windows, when both logged one (read only then)."""
    windows = Metrics.PROFILE_BATCHES in run.metrics and Metrics.PROFILE_BATCHES in base.metrics
    if operations is None or not windows:
        return []
    ours, theirs = operations(run.run_id), operations(base.run_id)
    return explain(ours, theirs) if ours and theirs else []


# --- where the time goes: the operation tables of the two sides ------------------------


def explain(ours: list[dict], base: list[dict], top: int = 3) -> list[dict]:
    """The operations that account for most of a slowdown: each operation's time per batch
    on the run side minus the baseline's, largest first, with its share of that
    difference, its share of the run's window, and its time per call on each side."""
    theirs = {r["operation"]: r for r in base}
    mine = {r["operation"]: r for r in ours}
    gaps = []
    for name in mine.keys() | theirs.keys():
        a, b = mine.get(name, {}), theirs.get(name, {})
        gap = a.get("us_per_batch", 0.0) - b.get("us_per_batch", 0.0)
        if gap > 0:
            gaps.append((gap, name, a, b))
    total = sum(g for g, *_ in gaps) or 1.0
    gaps.sort(reverse=True)
    return [
        {
            "operation": name,
            "share_of_slowdown": gap / total,
            "share_of_run": a.get("share", 0.0),
            "us_per_call": a.get("us_per_call"),
            "baseline_us_per_call": b.get("us_per_call"),
        }
        for gap, name, a, b in gaps[:top]
    ]


def describe_slowdown(explained: list[dict]) -> str:
    """'; where the time goes: aten::addmm 71% of the difference (412 vs 130 us a call), ...'"""
    if not explained:
        return ""
    parts = []
    for e in explained:
        calls = ""
        if e["us_per_call"] is not None and e["baseline_us_per_call"] is not None:
            calls = f" ({e['us_per_call']:,.0f} vs {e['baseline_us_per_call']:,.0f} µs a call)"
        parts.append(f"{e['operation']} {e['share_of_slowdown']:.0%} of the difference{calls}")
    return "; where the time goes: " + ", ".join(parts)
