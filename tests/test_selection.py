"""A gate's cost follows its selection: `compare --filter`/`--run-id` read the selected runs and
only the baselines they need, and judge them exactly as a read of every run does, on a store
that mixes runs of other tools (no workload tag), runs with today's workload tag, runs whose
tag carries a newer key, a bf16 run beside its fp32 twin, and a sweep's repeats."""

import json
import random
import sys
from dataclasses import asdict

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_at_scale import write_runs

from pipeline.compare import baselines, reading, rules
from pipeline.compare.records import Selection, Tolerances
from pipeline.config import workload

PAIRS = [("cpu", "a"), ("cuda:0", "a"), ("cpu", "mac"), ("mps", "mac")]
COMMITS = 50


def mixed_runs() -> list[dict]:
    """Per commit, the four pairs of each kind of run; slow and wrong runs now and then; the
    last commit's runs also in bf16, and a sweep over them with two repeats a pair."""
    rng = random.Random(1)
    runs, start = [], 1_000_000
    params = {"dataset": "synthetic", "model": "mlp-784-64-10", "batch_size": "64", "lr": "0.001"}
    params |= {"epochs": "3", "seed": "0", "optimizer": "sgd", "loader": "tensors"}
    kinds = {
        "other-tool": lambda p: {},
        "today": lambda p: {"pipeline.workload": workload(p)},
        "newer": lambda p: {"pipeline.workload": newer_workload(p)},
    }

    def add(commit, kind, device, host, precision="fp32", parent="", name="", tag=""):
        nonlocal start
        start += 1_000
        p = {**params, "precision": precision, "device": device}
        if kind == "other-tool":
            p["tool_option"] = "x"
        slow = (commit % 17 == 16 or (commit == COMMITS - 1 and not parent)) and device != "cpu"
        speed = 30_000 if device != "cpu" else 20_000
        speed *= (0.5 if slow else 1) * rng.uniform(0.97, 1.03)
        acc = 0.1 if (commit % 23 == 22 and device == "mps") else 0.8 + rng.uniform(-0.003, 0.003)
        tags = {
            **kinds[kind](p),
            "pipeline.stage": "train",
            "pipeline.device": device,
            "pipeline.device_type": device.split(":")[0],
            "pipeline.host": host,
            "pipeline.git_commit": tag or f"c{commit}",
        }
        if parent:
            tags["mlflow.parentRunId"] = parent
        metrics = [("samples_per_s", speed, 0), ("test_accuracy", acc, 3), ("test_loss", 0.5, 3)]
        name = name or f"{kind}-{device}"
        runs.append({"name": name, "start": start, "params": p, "tags": tags, "metrics": metrics})
        runs[-1]["run_id"] = f"{start:032x}"

    for commit in range(COMMITS):
        for kind in kinds:
            for device, host in PAIRS:
                add(commit, kind, device, host)
    last = COMMITS - 1
    for device, host in PAIRS:
        add(last, "today", device, host, precision="bf16")
    start += 1_000
    sweep = f"{start:032x}"
    tags = {"pipeline.stage": "sweep", "pipeline.git_commit": "sweep"}
    runs.append({"name": "sweep", "start": start, "params": {}, "metrics": [], "tags": tags})
    runs[-1]["run_id"] = sweep
    for repeat in range(2):
        for device, host in PAIRS:
            add(last, "today", device, host, parent=sweep, name=f"{device}-{repeat}", tag="sweep")
    return runs


def newer_workload(params: dict) -> str:
    """The tag as a newer version writes it: today's keys and one more."""
    keys = {**json.loads(workload(params)), "zz_new": "1"}
    return json.dumps(keys, sort_keys=True, separators=(",", ":"))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The store, written once for the module (compare reads it only: nothing is logged)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mixed") / "mlflow.db"
    write_runs(db, mixed_runs())
    return MlflowClient(f"sqlite:///{db}")


def judged(selection: Selection) -> list[tuple]:
    findings, _, notes = rules.judge(selection, Tolerances())
    return sorted(
        json.dumps({**asdict(f), "group": None}, sort_keys=True, default=str) for f in findings
    ), sorted(notes)


def as_full_read(client, selection: Selection) -> Selection:
    """The same judged runs against every run of the experiment, as compare read them before
    its reading followed the selection."""
    everything = reading.select(client, None)
    return Selection(
        runs=everything.runs,
        judged=selection.judged,
        left_out=selection.left_out,
        unfinished=selection.unfinished,
        experiment_ids=selection.experiment_ids,
        tests=selection.tests,
        doctors=everything.doctors,
    )


@pytest.mark.parametrize(
    ("commit", "share"),
    [
        (f"c{COMMITS - 1}", 0.5),  # the gate: the latest commit
        ("sweep", 0.5),  # a sweep and its children, with their repeats
        ("c16", 1.0),  # mid-history: every later run is read too (the latest CPU run counts)
    ],
)
def test_a_selection_reads_what_it_needs_and_judges_as_a_full_read(
    mixed, commit, share, monkeypatch
):
    monkeypatch.setattr(baselines, "LOOKBACK", 30)  # the bf16 runs have no history to find
    where = f"tags.`pipeline.git_commit` = '{commit}'"
    chosen = mixed.search_runs(["0"], where, max_results=1000)
    every = reading.select(mixed, None)
    selection = reading.select(mixed, None, filter_string=where)
    assert selection.judged == {r.info.run_id for r in chosen}
    findings, notes = judged(selection)
    assert findings or commit == "sweep", "the selection should raise findings"
    assert (findings, notes) == judged(as_full_read(mixed, selection))
    assert len(selection.runs) <= len(every.runs) * share  # the gate: half at most


def test_run_ids_read_what_they_need(mixed, monkeypatch):
    monkeypatch.setattr(baselines, "LOOKBACK", 30)
    every = reading.select(mixed, None)
    picked = [r.run_id for r in every.runs if r.tags.get("pipeline.git_commit") == "c30"]
    selection = reading.select(mixed, None, run_ids=picked[:5])
    assert selection.judged == set(picked[:5])
    assert judged(selection) == judged(as_full_read(mixed, selection))
    assert len(selection.runs) <= len(every.runs)
