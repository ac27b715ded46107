"""Which runs a selection needs besides itself, so that a gate's cost follows the selection and
not the history: plain data in, search filters and a yes/no out (stage.py does the reading).

A selected finished train run is judged against its group: the last --history earlier runs of
its device and host, the group's latest CPU run on its host and on any host, the latest fp32
run of its workload in another precision, and a sweep cell's repeats. compare finds them by
what every run of the group carries, its workload (the tag pipeline.workload, or for runs of
other tools their params), and reads that workload's runs newest first until each need is met
or LOOKBACK runs older than the selection have been read. Newest first means every run newer
than the selection is read, so the latest CPU and fp32 runs are those a full read finds.
"""

from collections import defaultdict

from pipeline.compare.records import RunSummary
from pipeline.compare.rules import twin_key
from pipeline.schema import NOT_GROUPING_PARAMS, Params, Tags

# Runs of one workload older than the selection that compare reads at most for its
# baselines; and the newest runs of an experiment --latest picks from.
LOOKBACK = 1000


def workload_filter(run: RunSummary) -> str:
    """An MLflow search filter that every run of the run's group matches, whatever its
    precision (so that its fp32 twin matches too): its workload tag, precision left open; for
    runs without the tag, their grouping params but the precision, by value as written. ''
    where no such filter can be written (then every run of the experiment is a candidate)."""
    workload = run.tags.get(Tags.WORKLOAD)
    if workload is not None:
        if "'" in workload or "\\" in workload:
            return ""
        key = f'"{Params.PRECISION}":"'
        start = workload.find(key)
        if start < 0:
            return f"tags.`{Tags.WORKLOAD}` = '{workload}'"
        end = workload.find('"', start + len(key))
        pattern = workload[: start + len(key)] + "%" + workload[end:]
        return f"tags.`{Tags.WORKLOAD}` LIKE '{pattern}'"
    parts = [
        f"params.`{k}` = '{v}'"
        for k, v in sorted(run.params.items())
        if k not in NOT_GROUPING_PARAMS and k != Params.PRECISION
        if "'" not in v and "\\" not in v and "`" not in k
    ]
    return " and ".join(parts)


def needs_met(
    needy: list[RunSummary], read: list[RunSummary], history: int, parents: dict[str, int]
) -> bool:
    """Whether the runs read (newest first, none skipped) hold everything the needy runs are
    judged against: for each, `history` earlier runs of its group, device and host (its own
    repeats not counted), a CPU run of its group on its host and on any, its fp32 twin when it
    ran in another precision, and every run since its sweep parent started (`parents`: parent
    run id -> start time)."""
    oldest = min((r.start_time for r in read), default=None)
    series: dict[tuple, list[RunSummary]] = defaultdict(list)
    cpus, fp32 = set(), set()
    for r in read:
        series[(r.group_key, r.device, r.host)].append(r)
        if r.device_type == "cpu":
            cpus |= {(r.group_key, r.host), (r.group_key, None)}
        if r.params.get(Params.PRECISION, "fp32") == "fp32":
            fp32.add(twin_key(r))
    for run in needy:
        if oldest is None or oldest > run.start_time:
            return False  # not even the run itself yet
        if run.parent and oldest >= parents.get(run.parent, oldest + 1):
            return False
        if {(run.group_key, run.host), (run.group_key, None)} - cpus:
            return False
        if run.params.get(Params.PRECISION, "fp32") != "fp32" and twin_key(run) not in fp32:
            return False
        earlier = [
            r
            for r in series[(run.group_key, run.device, run.host)]
            if r.start_time < run.start_time and not (run.parent and r.parent == run.parent)
        ]
        if len(earlier) < history or not history:
            return False
    return True
