"""What changed in the recorded environment between a run and its baseline: the part of a
finding that names what differs (torch, CUDA, driver, ...), over the list of what a run
records (pipeline.tracking.environment's ENVIRONMENT)."""

from collections import Counter

from pipeline.compare.records import RunSummary
from pipeline.tracking.environment import ENVIRONMENT


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
