"""compare's speed rules: a run slower than the CPU of its host, or than its own history.

Pure functions over pipeline.records. A run's speed is its steady-state training throughput
(samples_per_s), else the inverse of its training time, else of its whole command's time
(the M1 record has nothing else). A sweep's repeated runs of one cell are one measurement:
their medians are compared. How sure a finding is comes from pipeline.evidence; what changed
in the environment from pipeline.environment.
"""

import math
import statistics

from pipeline import evidence
from pipeline.environment import changed, describe_changes
from pipeline.records import (
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
    return [v for _, v in sorted(history(run.run_id, Metrics.EPOCH_SAMPLES_PER_S))][1:]


def speed_evidence(
    ours: list[RunSummary], base: list[RunSummary], key: str, tol: float, history: History | None
) -> dict:
    """evidence.speed_confidence of a run side against a baseline side: runs by their speed
    figure; when the baseline has too few runs, the latest run of each side by its steady
    epochs (histories read only when the `epochs` params allow enough of them)."""
    runs = ([speed(r, key) for r in ours], [speed(r, key) for r in base])
    if len(base) >= evidence.MIN_SAMPLES or key != Metrics.SAMPLES_PER_S:
        return evidence.speed_confidence(runs, ([], []), tol)
    planned = [steady_epochs_planned(r) for r in (ours[-1], base[-1])]
    if min(planned) < evidence.MIN_SAMPLES:
        return evidence.insufficient((len(ours), len(base)), (planned[0], planned[1]))
    epochs = (steady_epochs(ours[-1], history), steady_epochs(base[-1], history))
    return evidence.speed_confidence(runs, epochs, tol)


def steady_epochs_planned(run: RunSummary) -> int:
    """How many steady epochs the run's `epochs` param allows (a large number when unknown)."""
    planned = run.params.get(Params.EPOCHS, "")
    return int(planned) - 1 if planned.isdigit() else evidence.MIN_SAMPLES


def speed_severity(sure: dict) -> str:
    return ERROR if sure["confidence"] == evidence.CONFIRMED else WARNING


def speed_vs_cpu(run: RunSummary, group: Group) -> float | None:
    """The run's speed against the latest CPU run of its group on its host, each taken with
    its repeats (medians); None without such a CPU run or a shared speed figure."""
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


def slower_than_cpu(
    run: RunSummary,
    group: Group,
    tol: Tolerances,
    history: History | None,
    operations: Operations | None = None,
) -> list[Finding]:
    cpu = latest_cpu(group, run.host)
    if run.device_type == "cpu" or cpu is None:
        return []
    found = []
    diff = changed(run, [cpu], same_by_design=("device_name",))
    ratio = speed_vs_cpu(run, group)
    if ratio is not None and ratio < 1 - tol.speed:
        ours, base = repeats(run, group.runs), repeats(cpu, group.runs)
        sure = speed_evidence(ours, base, speed_figure(ours + base), tol.speed, history)
        why = where_time_goes(run, cpu, operations)
        found.append(
            Finding(
                run.run_id,
                SPEED,
                "accelerator-slower-than-cpu",
                speed_severity(sure),
                f"{run.device} trains at {ratio:.2f}× the speed of the CPU on {run.host} "
                f"({1 / ratio:.2f}× slower; tolerance {tol.speed:.0%})"
                + evidence.describe(sure)
                + describe(why)
                + fallbacks_named(run)
                + describe_changes(diff),
                values={
                    "speed_vs_cpu": ratio,
                    "cpu_run_id": cpu.run_id,
                    **sure,
                    "operations": why,
                    "changed": diff,
                },
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


def slower_than_history(
    run: RunSummary,
    group: Group,
    tol: Tolerances,
    history: History | None,
    operations: Operations | None = None,
) -> list[Finding]:
    ours = repeats(run, group.runs)
    key = speed_figure(ours)
    if key is None:
        return []
    earlier = [h for h in history_of(run, group, tol.history) if speed_figure([h]) == key]
    if len(earlier) < MIN_HISTORY:
        return []
    median, allowed = evidence.noise_threshold(
        [speed(h, key) for h in earlier], tol.speed, relative=True
    )
    ratio = statistics.median(speed(r, key) for r in ours) / median
    if ratio >= 1 - allowed:
        return []
    sure = speed_evidence(ours, earlier, key, tol.speed, history)
    diff = changed(run, earlier)
    why = where_time_goes(run, earlier[-1], operations)
    return [
        Finding(
            run.run_id,
            SPEED,
            "slower-than-history",
            speed_severity(sure),
            f"{run.device} on {run.host} ran at {ratio:.2f}× the median speed of its last "
            f"{len(earlier)} runs (allowed drop {allowed:.0%})"
            + evidence.describe(sure)
            + describe(why)
            + describe_changes(diff),
            values={
                "speed_vs_history": ratio,
                "history_runs": len(earlier),
                **sure,
                "operations": why,
                "changed": diff,
            },
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


def describe(explained: list[dict]) -> str:
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
