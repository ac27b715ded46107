"""The plain data compare works on: a run as search_runs returns it, a group of comparable
runs, what was selected for judgement, a finding, the tolerances. No I/O here."""

import json
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise

from pipeline.schema import NOT_GROUPING_PARAMS, Params, Tags

DEFAULT_CLASSES = 10
SPEED, ACCURACY, RUN = "speed", "accuracy", "run"  # a finding's category
ERROR, WARNING = "error", "warning"  # its severity

# (run id, metric key) -> [(step, value), ...]: a metric's history, as compare reads it
History = Callable[[str, str], list[tuple[int, float]]]
# run id -> the rows of its operations.json (the profiled window), [] when it has none
Operations = Callable[[str], list[dict]]


@dataclass
class RunSummary:
    """One run as compare sees it: what search_runs returns, flattened."""

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
        """The device that ran: the tag, as the `device` param may hold a request (`auto`)."""
        return self.tags.get(Tags.DEVICE) or self.params.get(Params.DEVICE, "?")

    @property
    def device_type(self) -> str:
        return self.tags.get(Tags.DEVICE_TYPE) or self.device.split(":")[0]

    @property
    def stage(self) -> str:
        return self.tags.get(Tags.STAGE, "train")

    @property
    def host(self) -> str:
        return self.tags.get(Tags.HOST, "?")

    @property
    def device_name(self) -> str:
        return self.tags.get(Tags.DEVICE_NAME, "")

    @property
    def parent(self) -> str:
        """The sweep parent run this run is a child of, or ''."""
        return self.tags.get(Tags.PARENT, "")

    @cached_property
    def group_key(self) -> tuple[tuple[str, str], ...]:
        """What makes runs comparable: the workload the pipeline recorded (pipeline.workload),
        whoever launched it; for runs logged by other tools, every param but those in
        NOT_GROUPING_PARAMS."""
        try:
            items = json.loads(self.tags[Tags.WORKLOAD]).items()
        except (KeyError, ValueError, AttributeError):
            items = ((k, v) for k, v in self.params.items() if k not in NOT_GROUPING_PARAMS)
        return tuple(sorted((k, canonical(str(v))) for k, v in items))

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
    category: str  # speed | accuracy | run (a selected run that did not finish)
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
    # run id -> the history baseline its speed verdict used (speed.baseline), from rules.judge
    baselines: dict[str, dict] = field(default_factory=dict)

    @cached_property
    def series(self) -> dict[tuple[str, str], list[RunSummary]]:
        """The runs of each device and host, in the order of `runs`."""
        by_series: dict[tuple[str, str], list[RunSummary]] = defaultdict(list)
        for r in self.runs:
            by_series[(r.device, r.host)].append(r)
        return dict(by_series)

    @cached_property
    def cells(self) -> dict[tuple[str, str, str], list[RunSummary]]:
        """The runs of each sweep parent, device and host (a sweep cell's repeats)."""
        by_cell: dict[tuple[str, str, str], list[RunSummary]] = defaultdict(list)
        for r in self.runs:
            by_cell[(r.parent, r.device, r.host)].append(r)
        return dict(by_cell)

    @cached_property
    def starts(self) -> dict[tuple[str, str], list[int]] | None:
        """Each series' start times, or None when `runs` is not in start-time order."""
        times = [r.start_time for r in self.runs]
        if any(a > b for a, b in pairwise(times)):
            return None
        return {k: [r.start_time for r in rs] for k, rs in self.series.items()}

    @cached_property
    def latest_cpus(self) -> dict[str | None, RunSummary]:
        """The last CPU run of each host, and (key None) of any host."""
        latest: dict[str | None, RunSummary] = {}
        for r in self.runs:
            if r.device_type == "cpu":
                latest[r.host] = latest[None] = r
        return latest


@dataclass
class Selection:
    """What `load` found: the runs to judge, the finished runs they are judged against, and
    what it left out."""

    runs: list[RunSummary]  # finished train runs, oldest first: the groups and histories
    judged: set[str]  # ids of the runs to judge, of any stage and status
    left_out: dict[str, int]  # status -> count of runs not judged for their status
    unfinished: list[RunSummary]  # judged runs of any stage that did not finish
    experiment_ids: list[str]
    tests: list[RunSummary] = field(default_factory=list)  # judged finished `test` runs
    unsourced: list[RunSummary] = field(default_factory=list)  # tests whose source is not read
    # the latest doctor run of each (device, host)
    doctors: dict[tuple[str, str], RunSummary] = field(default_factory=dict)
    checked: list[RunSummary] = field(default_factory=list)  # judged finished `doctor` runs

    @property
    def judged_runs(self) -> list[RunSummary]:
        """Every judged run that a rule looks at: train (finished or not), test, doctor, and
        any other stage's that did not finish."""
        every = [r for r in self.runs if r.run_id in self.judged]
        return every + self.unfinished + self.tests + self.checked


@dataclass
class Tolerances:
    speed: float = 0.10
    accuracy: float = 0.02
    history: int = 5


def groups_of(runs: list[RunSummary]) -> list[Group]:
    by_key: dict[tuple, list[RunSummary]] = defaultdict(list)
    for r in runs:
        by_key[r.group_key].append(r)
    return [Group(i, dict(key), members) for i, (key, members) in enumerate(by_key.items(), 1)]


def latest_cpu(group: Group, host: str | None = None) -> RunSummary | None:
    """The group's last CPU run on that host (None: on any)."""
    return group.latest_cpus.get(host)


def history_of(run: RunSummary, group: Group, n: int) -> list[RunSummary]:
    """The last n earlier finished runs of the run's group on the same device and host, not
    counting its own repeats (all of them when n is 0). Found by bisection in the run's
    series, so judging stays linear in the runs however long a series grows."""
    key = (run.device, run.host)
    series = group.series.get(key, [])
    if group.starts is not None:
        series = series[: bisect_left(group.starts.get(key, []), run.start_time)]
    earlier: list[RunSummary] = []
    for r in reversed(series):
        if n and len(earlier) == n:
            break
        if r.start_time < run.start_time and not (run.parent and r.parent == run.parent):
            earlier.append(r)
    return earlier[::-1]


def repeats(run: RunSummary, runs: list[RunSummary]) -> list[RunSummary]:
    """The run and its repeats up to it: the runs of the same sweep parent, device and host
    among `runs` (one group's), oldest first. A run outside a sweep is a measurement alone."""
    if not run.parent:
        return [run]
    return [
        r
        for r in runs
        if (r.parent, r.device, r.host) == (run.parent, run.device, run.host)
        and r.start_time <= run.start_time
    ]
