"""Which runs a selection needs besides itself, so that a gate's cost follows the selection and
not the history: plain data in, a yes or no out (reading.py reads).

A selected finished train run is judged against its group: the last --history earlier runs of
its device and host, the group's latest CPU run on its host and on any host, the latest fp32
run of its workload in another precision, the latest eager run of a compiled workload, and a
sweep cell's repeats. compare reads the experiment's runs by what every run carries, its start
time: newest first, until each need is met or LOOKBACK runs older than the selection have been
read, and groups them as a full read does (by workload tag, else params). Newest first means
every run newer than the selection is read, so the latest CPU, fp32 and eager runs are those a
full read finds; a need that lies further back than the window (a run with fewer earlier runs
than --history on its device and host, a group without a CPU run) is judged with what the
window holds.
"""

from collections import defaultdict

from pipeline.compare import twins
from pipeline.compare.records import RunSummary
from pipeline.schema import Stages

# Runs of one workload older than the selection that compare reads at most for its
# baselines; and the newest runs of an experiment --latest picks from.
LOOKBACK = 1000


def needs_met(
    needy: list[RunSummary], read: list[RunSummary], history: int, parents: dict[str, int]
) -> bool:
    """Whether the runs read (newest first, none skipped) hold everything the needy runs are
    judged against: for each, `history` earlier runs of its group, device and host (its own
    repeats not counted), a CPU run of its group on its host and on any, its fp32 twin when it
    ran in another precision, its eager twin when compiled, and every run since its sweep
    parent started (`parents`: parent run id -> start time)."""
    oldest = min((r.start_time for r in read), default=None)
    series: dict[tuple, list[RunSummary]] = defaultdict(list)
    cpus, references = set(), set()
    for r in read:  # what groups hold: finished train runs (reading.py)
        if r.stage != Stages.TRAIN or r.status != "FINISHED":
            continue
        series[(r.group_key, r.device, r.host)].append(r)
        if r.device_type == "cpu":
            cpus |= {(r.group_key, r.host), (r.group_key, None)}
        for setting in twins.REFERENCE:
            if twins.value(r, setting) == twins.REFERENCE[setting]:
                references.add((setting, twins.key(r, setting)))
    for run in needy:
        if oldest is None or oldest > run.start_time:
            return False  # not even the run itself yet
        if run.parent and oldest >= parents.get(run.parent, oldest + 1):
            return False
        if {(run.group_key, run.host), (run.group_key, None)} - cpus:
            return False
        for setting, reference in twins.REFERENCE.items():
            wanted = (setting, twins.key(run, setting))
            if twins.value(run, setting) != reference and wanted not in references:
                return False
        earlier = [
            r
            for r in series[(run.group_key, run.device, run.host)]
            if r.start_time < run.start_time and not (run.parent and r.parent == run.parent)
        ]
        if len(earlier) < history or not history:
            return False
    return True
