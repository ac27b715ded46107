"""What compare draws, as plain data (pipeline.plots draws it): which groups get a picture,
each device's speed with its repeats' interval and each host's CPU for the group picture, and
a group's speed over commits. No I/O here."""

from pipeline.compare import render, speed
from pipeline.compare.baselines import LOOKBACK
from pipeline.compare.records import Finding, Group, RunSummary
from pipeline.schema import Metrics, Tags


def drawn(groups: list[Group], tables: list[dict], findings: list[Finding]) -> list[Group]:
    """The groups worth a picture, at most MAX_PLOTTED_GROUPS: the flagged ones first, then
    those with several devices, each by its number."""
    flagged = {f.group for f in findings}
    by_id = {g.id: g for g in groups}
    candidates = [
        by_id[t["id"]]
        for t in tables
        if t["id"] in flagged or len({r.device_type for r in by_id[t["id"]].runs}) > 1
    ]
    candidates.sort(key=lambda g: (g.id not in flagged, g.id))
    return candidates[: render.MAX_PLOTTED_GROUPS]


def surely_drawn(groups: list[Group], judged: set[str]) -> list[Group]:
    """The groups drawn whatever the findings turn out to be: with no more groups to report
    (those holding a judged run) than pictures, each one with several devices."""
    reported = [g for g in groups if any(r.run_id in judged for r in g.runs)]
    if len(reported) > render.MAX_PLOTTED_GROUPS:
        return []
    return [g for g in reported if len({r.device_type for r in g.runs}) > 1]


def latest_of_series(group: Group) -> list[RunSummary]:
    """The latest run of each device and host, by device and host."""
    return [runs[-1] for _, runs in sorted(group.series.items())]


def bar(run: RunSummary, table: dict | None, key: str) -> tuple[float, tuple | None]:
    """The run's speed bar: its table row's median and interval when the row holds it (a
    sweep cell's repeats) and the figure is throughput, else the run's own figure."""
    row = next((r for r in (table or {}).get("runs", []) if run.run_id in r["run_ids"]), None)
    if row and key == Metrics.SAMPLES_PER_S and row["samples_per_s"] is not None:
        ci = row["samples_per_s_ci"]
        return row["samples_per_s"], (tuple(ci) if ci else None)
    return run.metrics[key], None


def has_history(group: Group) -> bool:
    """Whether some device and host of the group ran more than once (a sweep cell's repeats
    count once)."""
    return any(len({r.parent or r.run_id for r in runs}) > 1 for runs in group.series.values())


def history_lines(group: Group) -> tuple[dict[str, list[tuple[int, str, float]]], str] | None:
    """Each device and host's speed over its last LOOKBACK runs ((start time, commit or '',
    speed figure) each), by the figure its latest runs share, and that figure; None for a
    group without history."""
    if not has_history(group):
        return None
    key = speed.speed_figure(latest_of_series(group))
    if key is None:
        return None
    lines = {
        f"{device} @ {host}": [
            (r.start_time, r.tags.get(Tags.GIT_COMMIT, ""), r.metrics[key])
            for r in runs[-LOOKBACK:]
            if key in r.metrics
        ]
        for (device, host), runs in sorted(group.series.items())
    }
    return lines, key
