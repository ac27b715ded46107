"""sweep: every device against every workload size, as child runs of one parent run."""

import itertools
import json
import os
from dataclasses import replace

import pytest
import torch
from conftest import SMALL
from test_errors import assert_no_run
from test_trust import dead_process

from pipeline import devices
from pipeline.schema import MEMORY_MIXED, Params, Stages, Tags, memory_method
from pipeline.sweep import stage as sweep
from pipeline.sweep import tables as render
from pipeline.training import costs, data

# Two children on this machine; the product of the grid's axes is checked on the Grid itself
# (test_models_and_precisions_are_axes_of_the_grid).
GRID = ["--devices", "cpu,cuda:3,mps", "--batch-sizes", "32,64", "--hidden", "16"]
SWEEP = ["sweep", *GRID, "--epochs", "1", *[a for a in SMALL if a != "--lr" and a != "0.05"]]


@pytest.fixture(autouse=True)
def only_the_cpu(monkeypatch):
    """This machine, as the grid's tests see it, has the CPU alone (cuda:3 and mps missing),
    whatever it really has: the sweep decides what to skip in this process."""
    monkeypatch.setattr(devices, "available", lambda: ["cpu"])


def sweep_runs(client):
    exp_id = client.get_experiment_by_name("Default").experiment_id
    runs = client.search_runs([exp_id])
    parents = [r for r in runs if r.data.tags.get(Tags.STAGE) == Stages.SWEEP]
    kids = [r for r in runs if r.data.tags.get(Tags.PARENT)]
    return parents, kids


def test_sweep_runs_children_under_one_parent_and_resume_reruns_what_did_not_finish(
    cli, client, tmp_path
):
    result = cli(*SWEEP)
    assert result.code == 0, result.stderr
    assert "skipping cuda:3" in result.stderr and "skipping mps" in result.stderr
    (parent,), kids = sweep_runs(client)
    assert parent.info.status == "FINISHED"
    assert {k.data.tags[Tags.PARENT] for k in kids} == {parent.info.run_id}
    every = [("32", "16"), ("64", "16")]
    assert sorted(combo(k) for k in kids) == every
    assert all(k.info.status == "FINISHED" and k.data.params[Params.DEVICE] == "cpu" for k in kids)
    # children run one at a time, each in a process of its own, after the previous one ended
    ordered = sorted(kids, key=lambda k: k.info.start_time)
    assert all(a.info.end_time <= b.info.start_time for a, b in itertools.pairwise(ordered))
    assert len({k.data.tags[Tags.PID] for k in kids} | {str(os.getpid())}) == 3
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"sweep.md", "sweep.json", "throughput.png"}
    local = client.download_artifacts(parent.info.run_id, "sweep.json", str(tmp_path))
    with open(local) as f:
        summary = json.load(f)
    assert summary["devices"] == ["cpu"] and len(summary["rows"]) == 2
    assert all(row["peak_memory_mb"]["cpu"] > 0 for row in summary["rows"])  # each child's
    # ... labelled with how it was measured (on Linux the process's VmHWM, "process peak RSS")
    method = memory_method(costs.PeakMemory(torch.device("cpu")).source)
    assert all(row["memory_method"] == {"cpu": method} for row in summary["rows"])
    assert "samples/s" in result.stdout and "no accelerator in this sweep" in result.stdout

    # Killed outright: one child interrupted, the parent left RUNNING with its dead process's
    # tags. Resumed, the parent records the process resuming it and drops the failure reason
    # its death left; only the child that did not finish runs again.
    victim = kids[0]
    client.set_terminated(victim.info.run_id, "KILLED")
    parent_id = parent.info.run_id
    dead_pid, dead_token = dead_process()
    client.update_run(parent_id, status="RUNNING")
    client.set_tag(parent_id, Tags.PID, str(dead_pid))
    client.set_tag(parent_id, Tags.PROCESS_START, dead_token)
    result = cli("sweep", "--resume", parent_id)
    assert result.code == 0, result.stderr
    assert result.stderr.count("already done") == 1
    assert f"sweep run {parent_id} (to resume it: --resume " in result.stderr
    (resumed,), kids = sweep_runs(client)
    assert resumed.info.status == "FINISHED"
    assert Tags.FAILURE_REASON not in resumed.data.tags
    assert resumed.data.tags[Tags.PID] == str(os.getpid())  # the process that resumed it
    assert sorted(combo(k) for k in kids if k.info.status == "FINISHED") == every
    killed = [combo(k) for k in kids if k.info.status == "KILLED"]
    assert killed == [combo(victim)]  # re-run once, the rest left alone


def combo(run) -> tuple[str, str]:
    return run.data.params[Params.BATCH_SIZE], run.data.params[Params.HIDDEN]


def test_strict_makes_a_missing_device_an_error(cli, client):
    result = cli(*SWEEP, "--strict")
    assert result.code == 2 and "cuda:3" in result.stderr
    assert_no_run(client)  # nothing half-logged


def record(model, hidden, batch, device, speed, flops, precision="fp32"):
    return {
        "model": model,
        "precision": precision,
        "hidden": hidden,
        "batch_size": batch,
        "device": device,
        "samples_per_s": speed,
        "flops_per_sample": flops,
    }


def test_crossover_is_the_smallest_workload_an_accelerator_wins_for_each_model():
    mlp = {512: 1_000_000, 2048: 10_000_000}  # forward FLOPs per sample
    speeds = {
        (512, 64): {"cpu": 1000.0, "cuda:0": 800.0, "mps": 500.0},
        (512, 256): {"cpu": 1500.0, "cuda:0": 3000.0, "mps": 900.0},
        (2048, 64): {"cpu": 300.0, "cuda:0": 1200.0, "mps": 250.0},
    }
    records = [
        record("mlp", h, b, d, v, mlp[h]) for (h, b), by in speeds.items() for d, v in by.items()
    ]
    records += [  # the conv net: mps wins from batch 256 on
        record("cnn", None, 64, "cpu", 500.0, 20_000_000),
        record("cnn", None, 64, "mps", 400.0, 20_000_000),
        record("cnn", None, 256, "cpu", 520.0, 20_000_000),
        record("cnn", None, 256, "mps", 1500.0, 20_000_000),
    ]
    summary = sweep.crossover_table(records)
    mlp_rows = [(r["hidden"], r["batch_size"]) for r in summary["rows"] if r["model"] == "mlp"]
    assert mlp_rows == [(512, 64), (512, 256), (2048, 64)]  # by FLOPs per batch
    assert summary["devices"] == ["cpu", "cuda:0", "mps"]
    found = {(c["device"], c["model"]): c for c in summary["crossover"]}
    assert found[("cuda:0", "mlp")] == {
        "device": "cuda:0",
        "model": "mlp",
        "precision": "fp32",
        "dataset": "",
        "optimizer": "sgd",
        "compile": "none",
        "hidden": 512,
        "batch_size": 256,
        "speedup_vs_cpu": 2.0,
    }
    assert found[("mps", "mlp")]["batch_size"] is None
    assert found[("mps", "cnn")]["batch_size"] == 256
    assert ("cuda:0", "cnn") not in found  # it never ran the conv net
    text = render.sweep_markdown(summary)
    assert "- cuda:0, mlp fp32: beats the CPU from hidden 512, batch 256 on (2.00×)" in text
    assert "- mps, cnn fp32: beats the CPU from batch 256 on (2.88×)" in text
    assert "- mps, mlp fp32: never in the range swept" in text


def test_bad_grid_is_a_usage_error(cli):
    result = cli("sweep", "--batch-sizes", "64,zero")
    assert result.code == 2 and "--batch-sizes" in result.stderr
    result = cli("sweep", "--resume", "0123456789abcdef")
    assert result.code == 2 and "no sweep run '0123456789abcdef' to resume" in result.stderr


def test_models_and_precisions_are_axes_of_the_grid(cli, client):
    from pipeline.config import TrainConfig

    grid = sweep.Grid(("cpu",), (64, 256), (32, 64), ("mlp", "cnn"), ("fp32", "bf16"))
    workloads = [
        (w.model, w.precision, w.hidden, w.batch_size) for w in grid.workloads(TrainConfig())
    ]
    assert len(workloads) == 2 * 2 * 2 + 1 * 2 * 2  # the widths are the MLP's alone
    assert ("cnn", "bf16", 32, 256) in workloads and ("cnn", "fp32", 64, 64) not in workloads

    args = ["--devices", "cpu", "--batch-sizes", "64", "--hidden", "16", "--epochs", "1"]
    small = [a for a in SMALL if a not in ("--lr", "0.05")]
    result = cli("sweep", *args, "--models", "mlp,cnn", *small)
    assert result.code == 0, result.stderr
    (parent,), kids = sweep_runs(client)
    assert parent.info.status == "FINISHED"
    assert sorted(k.data.params["model"] for k in kids) == ["cnn", "mlp-784-16-16-10"]
    assert "cpu, cnn fp32" not in result.stdout  # no accelerator: no crossover lines
    assert "mlp" in result.stdout and "cnn" in result.stdout  # both rows in the table


def test_sweep_cells_show_peak_memory_and_energy_where_measured():
    rss, allocator = "process peak RSS", "allocator peak"
    records = [
        {**record("mlp", 512, 64, "cpu", 1000.0, 1), "peak_memory_mb": 300.0},
        {**record("mlp", 512, 64, "cpu", 1100.0, 1), "peak_memory_mb": 310.0},
        {**record("mlp", 512, 64, "cpu", 1200.0, 1), "peak_memory_mb": 320.0},
        {**record("mlp", 512, 64, "cuda:0", 4000.0, 1), "peak_memory_mb": 50.0, "energy_j": 900.0},
    ]
    for r in records:
        r["memory_method"] = rss if r["device"] == "cpu" else allocator
    summary = sweep.crossover_table(records)
    (row,) = summary["rows"]
    assert row["peak_memory_mb"] == {"cpu": 310.0, "cuda:0": 50.0}  # a cell's median
    assert row["energy_j"] == {"cuda:0": 900.0}  # nothing where no counter exists
    assert render.cells(row, summary["devices"], sep=" | ") == [
        "1,100 | 310 MiB",
        "4,000 (3.64×) | 50 MiB · 900 J",
    ]
    # The table mixes two ways of measuring memory: each figure says which, and a line why.
    markdown = render.sweep_markdown(summary)
    assert "| 4,000 (3.64×)<br>50 MiB (allocator peak) · 900 J |" in markdown
    assert "| 1,100<br>310 MiB (process peak RSS) |" in markdown
    assert MEMORY_MIXED in markdown and render.sweep_table(summary).caption == MEMORY_MIXED
    # One way only: the figures stand alone.
    same = sweep.crossover_table([r for r in records if r["device"] == "cpu"])
    assert "| 1,100<br>310 MiB |" in render.sweep_markdown(same)
    assert MEMORY_MIXED not in render.sweep_markdown(same)


def test_a_refused_child_stops_the_sweep_and_fails_its_parent(cli, client, tmp_path):
    root = data.write_synthetic(tmp_path, seed=0, train_size=64, test_size=64)
    images = root / "SyntheticFashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])  # every child would be refused alike
    args = ["--epochs", "1", "--dataset", "synthetic", "--train-size", "64", "--test-size", "64"]
    result = cli("sweep", *GRID, *args, "--data-dir", str(tmp_path), data=False)
    assert result.code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: sweep stopped: cpu mlp")
    (parent,), kids = sweep_runs(client)
    assert parent.info.status == "FAILED"
    assert "sweep stopped" in parent.data.tags[Tags.FAILURE_REASON]
    assert kids == []  # the child was refused before its run existed; no other child started


def test_a_failed_child_fails_the_sweep_and_the_rest_go_on(cli, client):
    """A child that diverges (exit 1) is named, the other cells still run, and the sweep exits
    1 with one line saying how many failed."""
    grid = ["--devices", "cpu", "--batch-sizes", "32,64", "--hidden", "16", "--epochs", "1"]
    small = [a for a in SMALL if a not in ("--lr", "0.05")]
    result = cli("sweep", *grid, *small, "--lr", "1e30")
    assert result.code == 1
    assert result.stderr.count("failed (exit code 1)") == 2
    assert "error: 2 of the sweep's runs failed (lines above)" in result.stderr
    (parent,), kids = sweep_runs(client)
    assert {k.data.tags[Tags.PARENT] for k in kids} == {parent.info.run_id}
    assert sorted(k.info.status for k in kids) == ["FAILED", "FAILED"]


def test_data_sets_optimizers_and_compile_modes_are_axes_of_the_grid():
    from pipeline.config import TrainConfig

    grid = sweep.Grid(("cpu",), (64,), (32,), ("mlp",), ("fp32",), 1, ("synthetic", "cifar10"))
    grid = replace(grid, optimizers=("sgd", "adamw"), compiles=("none", "default"))
    cells = [
        (w.data.name, w.data.shuffle, w.optimizer, w.compile) for w in grid.workloads(TrainConfig())
    ]
    assert len(cells) == 8 and ("cifar10", True, "adamw", "default") in cells
    assert ("synthetic", False, "sgd", "none") in cells  # each data set in its default order
    assert sweep.Grid.from_params(grid.as_params()) == grid  # what --resume rebuilds
    records = [
        {**record("mlp", 32, 64, "cpu", speed, 1), "compile": mode}
        for mode, speed in (("none", 1000.0), ("default", 1500.0))
    ]
    rows = sweep.crossover_table(records)["rows"]
    assert [(r["compile"], r["samples_per_s"]) for r in rows] == [
        ("default", {"cpu": 1500.0}),
        ("none", {"cpu": 1000.0}),
    ]  # eager beside compiled, not one cell
    assert "| mlp | fp32 |  | sgd | default | 32 | 64 | 1,500 |" in render.sweep_markdown(
        sweep.crossover_table(records)
    )


def test_shape_and_classes_apply_only_to_the_data_sets_that_take_them(cli, client):
    """--input-shape goes to synthetic and image folders, --classes to synthetic: each other
    data set's child gets neither, so that it reads its own shape and classes from its data."""
    from pipeline.config import RunTarget

    names = ("fashion-mnist", "synthetic", "imagefolder:pets")  # the first takes neither
    options = {"dataset": ",".join(names), "data_dir": "data", "seed": 0, "train_size": 64}
    options |= {"test_size": 64, "input_shape": "3x8x8", "classes": 5, "layers": 1}
    options |= {"weight_decay": 0.0, "momentum": 0.0, "epochs": 1, "lr": 0.1}
    base = sweep.base_config(options)
    grid = sweep.Grid(("cpu",), (64,), (32,), datasets=names)
    given = {}
    for cell in grid.workloads(base):
        args = sweep.child_command(cell, RunTarget(), "parent")
        given[cell.data.name] = {
            a: v for a, v in itertools.pairwise(args) if a in ("--input-shape", "--classes")
        }
    assert given == {
        "fashion-mnist": {},
        "synthetic": {"--input-shape": "3x8x8", "--classes": "5"},
        "imagefolder:pets": {"--input-shape": "3x8x8"},
    }
    for option, value in (("--classes", "5"), ("--input-shape", "3x8x8")):
        result = cli("sweep", "--devices", "cpu", "--dataset", "mnist,cifar10", option, value)
        assert result.code == 2 and "applies to" in result.stderr
        assert "not mnist, cifar10" in result.stderr
    assert_no_run(client)
