"""compare: scenarios logged straight through the MLflow API, as another script would log them."""

import json
import math
import threading
import time

import pytest
from conftest import ROOT, SMALL, pipeline_in
from mlflow.entities import Metric, Param, RunTag

from pipeline.compare import render
from pipeline.compare import stage as compare_stage
from pipeline.schema import Metrics, Tags
from pipeline.tracking import runs as tracking

REFERENCE = ROOT / "tests" / "fixtures" / "m1-quickstart-2022.json"
EXPERIMENT = "Default"
QUICKSTART = {
    "dataset": "fashion-mnist",
    "model": "mlp-784-512-512-10",
    "epochs": "10",
    "batch_size": "64",
    "lr": "0.001",
    "optimizer": "sgd",
    "seed": "0",
    "loader": "dataloader",
}
_clock = [int(time.time() * 1000) - 10_000_000]


def log_run(
    client,
    device: str,
    *,
    host: str = "box",
    accuracy: list[float] | None = None,
    test_loss: list[float] | None = None,
    train_loss: dict[int, float] | None = None,
    summary: dict[str, float] | None = None,
    params: dict[str, str] | None = None,
    status: str = "FINISHED",
    tags: dict[str, str] | None = None,
) -> str:
    """Log one run under the run schema with nothing but MlflowClient; runs get increasing
    start times in the order they are logged."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    _clock[0] += 60_000
    run = client.create_run(exp_id, start_time=_clock[0], run_name=f"{device}-{_clock[0]}")
    run_id = run.info.run_id
    accuracy = accuracy if accuracy is not None else [0.5, 0.6, 0.7]
    test_loss = test_loss if test_loss is not None else [1.8, 1.2, 0.8]
    train_loss = train_loss if train_loss is not None else {0: 2.3, 100: 1.5, 200: 0.9}
    metrics = [Metric(Metrics.TEST_ACCURACY, a, 0, i + 1) for i, a in enumerate(accuracy)]
    metrics += [Metric(Metrics.TEST_LOSS, v, 0, i + 1) for i, v in enumerate(test_loss)]
    metrics += [Metric(Metrics.TRAIN_LOSS, v, 0, step) for step, v in train_loss.items()]
    metrics += [Metric(k, v, 0, 0) for k, v in (summary or {}).items()]
    all_params = {**QUICKSTART, "epochs": str(len(accuracy)), **(params or {}), "device": device}
    all_tags = {
        Tags.DEVICE_TYPE: device.split(":")[0],
        Tags.HOST: host,
        Tags.STAGE: "train",
        **(tags or {}),
    }
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(k, v) for k, v in all_params.items()],
        tags=[RunTag(k, v) for k, v in all_tags.items()],
    )
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def reference_runs(client) -> dict[str, str]:
    """The M1 quickstart measurement (tests/fixtures, from the published figures), as two runs."""
    ref = json.loads(REFERENCE.read_text())
    ids = {}
    for device, run in ref["runs"].items():
        epochs = run["epochs"]
        train_loss = {
            e * 938 + p["batch"]: p["loss"]
            for e, epoch in enumerate(epochs)
            for p in epoch["train_loss_every_100_batches"]
        }
        ids[device] = log_run(
            client,
            device,
            host="mac-mini-m1",
            accuracy=[e["test_accuracy"] for e in epochs],
            test_loss=[e["test_loss"] for e in epochs],
            train_loss=train_loss,
            summary={Metrics.WALL_TIME_S: run["process_wall_s"]},
        )
    return ids


def compare_json(cli, tmp_path, *args):
    out = tmp_path / "findings.json"
    result = cli("compare", "--output-json", str(out), *args)
    return result, (json.loads(out.read_text()) if out.exists() else None)


def kinds(report, run_id=None):
    return sorted(f["kind"] for f in report["findings"] if run_id in (None, f["run_id"]))


def test_m1_quickstart_case_is_caught(cli, client, tmp_path):
    ids = reference_runs(client)
    result, report = compare_json(cli, tmp_path)
    assert result.code == 1
    assert kinds(report, ids["cpu"]) == []
    mps = {f["kind"]: f for f in report["findings"] if f["run_id"] == ids["mps"]}
    assert set(mps) == {
        "accelerator-slower-than-cpu",
        "accuracy-mismatch",
        "accuracy-inconsistent-with-loss",
    }
    slow = mps["accelerator-slower-than-cpu"]
    assert slow["category"] == "speed"
    assert slow["values"]["speed_vs_cpu"] == pytest.approx(30.635 / 43.98)
    assert "1.44× slower" in slow["message"]
    # one run a side and no epoch times: no noise estimate, a warning past the large effect
    assert slow["severity"] == "warning" and slow["values"]["confidence"] == "insufficient data"
    assert "repeat to confirm (`sweep --repeats 5`)" in slow["message"]
    mismatch = mps["accuracy-mismatch"]
    assert mismatch["category"] == "accuracy" and mismatch["severity"] == "error"
    assert "metric computation on mps is suspect, not the training" in mismatch["message"]
    assert mismatch["values"]["epochs_apart"] == list(range(1, 11))
    for f in report["findings"]:
        assert {"run_id", "category", "kind", "severity", "message"} <= set(f)
    # The terminal shows the table and the findings; the flagged run is tagged for the UI.
    assert "accuracy-mismatch" in result.stdout and "mac-mini-m1" in result.stdout
    assert client.get_run(ids["mps"]).data.tags[Tags.FLAGS] == (
        "accelerator-slower-than-cpu,accuracy-inconsistent-with-loss,accuracy-mismatch"
    )
    assert Tags.FLAGS not in client.get_run(ids["cpu"]).data.tags
    assert len(report["groups"]) == 1 and len(report["groups"][0]["runs"]) == 2


def test_compare_logs_its_own_run_with_report_and_plots(cli, client, tmp_path):
    reference_runs(client)
    assert cli("compare").code == 1
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([exp_id], f"tags.`{Tags.STAGE}` = 'compare'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["findings"] == 3 and run.data.metrics["runs_compared"] == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"report.md", "findings.json", "group-1.png"}
    local = client.download_artifacts(run.info.run_id, "report.md", str(tmp_path))
    with open(local) as f:
        text = f.read()
    assert "accelerator-slower-than-cpu" in text and "| mps |" in text
    png = client.download_artifacts(run.info.run_id, "group-1.png", str(tmp_path))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # A second compare ignores the first compare's run.
    result, report = compare_json(cli, tmp_path)
    assert result.code == 1 and len(report["groups"][0]["runs"]) == 2


def test_healthy_cpu_and_cuda_pair_raises_nothing(cli, client, tmp_path):
    log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: 20_000})
    log_run(client, "cuda:0", summary={Metrics.SAMPLES_PER_S: 90_000})
    result, report = compare_json(cli, tmp_path)
    assert result.code == 0, result.stdout
    assert report["findings"] == []
    cuda_row = next(r for r in report["groups"][0]["runs"] if r["device"] == "cuda:0")
    assert cuda_row["speed_vs_cpu"] == pytest.approx(4.5)


@pytest.mark.parametrize(
    ("cuda_speed", "flagged", "noted"),
    [(9_500, False, False), (8_500, False, True), (7_000, True, False)],
)
def test_speed_tolerance_against_the_cpu(cli, client, tmp_path, cuda_speed, flagged, noted):
    """One run a side, no epochs: no noise estimate, so past the tolerance but short of the
    large-effect threshold (25%) is a note; past it, a warning."""
    log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: 10_000})
    cuda = log_run(client, "cuda:0", summary={Metrics.SAMPLES_PER_S: cuda_speed})
    result, report = compare_json(cli, tmp_path)
    assert kinds(report, cuda) == (["accelerator-slower-than-cpu"] if flagged else [])
    assert result.code == int(flagged)
    assert bool(report["notes"]) == noted


def test_the_cpu_of_another_host_is_not_a_baseline(cli, client, tmp_path):
    log_run(client, "cpu", host="fast-box", summary={Metrics.SAMPLES_PER_S: 50_000})
    log_run(client, "mps", host="mac", summary={Metrics.SAMPLES_PER_S: 10_000})
    result, report = compare_json(cli, tmp_path)
    assert report["findings"] == [] and result.code == 0


def test_noisy_history_with_one_real_slowdown(cli, client, tmp_path):
    speeds = [10_000, 10_400, 9_700, 10_200, 9_600, 10_300, 7_000, 10_100, 9_800, 10_450]
    ids = [log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: s}) for s in speeds]
    result, report = compare_json(cli, tmp_path)
    assert result.code == 1
    assert [(f["run_id"], f["kind"]) for f in report["findings"]] == [
        (ids[6], "slower-than-history")
    ]
    # 7,000 against the geometric mean of the 5 runs before it (10,038)
    assert "0.70× the speed of its last 5 runs" in report["findings"][0]["message"]


def test_a_very_noisy_history_widens_the_threshold(cli, client, tmp_path):
    speeds = [10_000, 6_000, 14_000, 7_000, 13_000, 7_500]
    log_runs = [log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: s}) for s in speeds]
    result, report = compare_json(cli, tmp_path)
    assert kinds(report, log_runs[-1]) == [] and result.code == 0


def test_nan_loss(cli, client, tmp_path):
    bad = log_run(
        client, "cuda:0", train_loss={0: 2.3, 1: math.nan}, test_loss=[1.5, math.nan, math.nan]
    )
    result, report = compare_json(cli, tmp_path)
    assert result.code == 1
    assert kinds(report, bad) == ["non-finite-loss"]
    row = report["groups"][0]["runs"][0]
    assert row["test_loss"] is None  # JSON has no NaN
    assert "nan" in result.stdout


def test_accuracy_inconsistent_with_loss_without_a_cpu_run(cli, client, tmp_path):
    mps = log_run(client, "mps", accuracy=[0.0, 0.0, 0.0], test_loss=[2.1, 1.4, 0.79])
    result, report = compare_json(cli, tmp_path)
    assert result.code == 1
    assert kinds(report, mps) == ["accuracy-inconsistent-with-loss"]


def test_accuracy_mismatch_with_different_losses_blames_training(cli, client, tmp_path):
    log_run(client, "cpu", accuracy=[0.5, 0.6, 0.7], test_loss=[1.8, 1.2, 0.8])
    cuda = log_run(client, "cuda:0", accuracy=[0.5, 0.55, 0.6], test_loss=[1.8, 1.4, 1.1])
    result, report = compare_json(cli, tmp_path)
    assert result.code == 1
    (finding,) = [f for f in report["findings"] if f["run_id"] == cuda]
    assert finding["kind"] == "accuracy-mismatch"
    assert "test losses differ too" in finding["message"]
    assert finding["values"]["epochs_apart"] == [2, 3]


def test_accuracy_within_tolerance_is_not_flagged(cli, client, tmp_path):
    log_run(client, "cpu", accuracy=[0.5, 0.6, 0.700])
    log_run(client, "mps", accuracy=[0.5, 0.6, 0.685])
    result, report = compare_json(cli, tmp_path)
    assert report["findings"] == [] and result.code == 0


def test_accuracy_below_history(cli, client, tmp_path):
    for a in (0.70, 0.71, 0.70, 0.69):
        log_run(client, "cpu", accuracy=[0.5, 0.6, a])
    worse = log_run(client, "cpu", accuracy=[0.5, 0.6, 0.60])
    result, report = compare_json(cli, tmp_path)
    assert kinds(report) == ["accuracy-below-history"] and result.code == 1
    assert report["findings"][0]["run_id"] == worse


def test_training_loss_that_does_not_fall(cli, client, tmp_path):
    flat = {step: 2.30 + 0.01 * (step % 3) for step in range(0, 300, 10)}
    stuck = log_run(
        client, "cpu", train_loss=flat, accuracy=[0.1, 0.1, 0.1], test_loss=[2.3, 2.3, 2.3]
    )
    result, report = compare_json(cli, tmp_path)
    assert kinds(report, stuck) == ["loss-not-falling"] and result.code == 1


def test_unfinished_and_failed_runs_are_left_out(cli, client, tmp_path):
    cpu = log_run(client, "cpu")
    log_run(client, "mps", status="RUNNING", accuracy=[0.0, 0.0, 0.0])
    log_run(client, "mps", status="KILLED", accuracy=[0.0, 0.0, 0.0])
    log_run(client, "mps", status="FAILED", accuracy=[0.0])
    result, report = compare_json(cli, tmp_path)
    assert result.code == 0, result.stdout
    assert [r["run_id"] for g in report["groups"] for r in g["runs"]] == [cpu]
    assert report["left_out"] == {"FAILED": 1, "KILLED": 1, "RUNNING": 1}
    assert "1 FAILED, 1 KILLED, 1 RUNNING" in result.stdout


def test_a_diverged_run_is_reported(cli, client, tmp_path):
    log_run(client, "cpu")
    failed = log_run(
        client,
        "cuda:0",
        status="FAILED",
        train_loss={0: 2.3, 1: math.inf},
        tags={Tags.FAILURE_REASON: "diverged: train_loss became inf at step 1 (epoch 1)"},
    )
    result, report = compare_json(cli, tmp_path)
    assert result.code == 1
    assert kinds(report, failed) == ["diverged"]


def test_only_the_given_runs_are_judged(cli, client, tmp_path):
    log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: 10_000})
    slow = log_run(client, "mps", summary={Metrics.SAMPLES_PER_S: 5_000})
    fast = log_run(client, "mps", host="other", summary={Metrics.SAMPLES_PER_S: 5_000})
    result, report = compare_json(cli, tmp_path, "--run-id", fast)
    assert report["findings"] == [] and result.code == 0
    result, report = compare_json(cli, tmp_path, "--run-id", slow, "--run-id", fast)
    assert kinds(report) == ["accelerator-slower-than-cpu"] and result.code == 1


def test_filter_and_latest(cli, client, tmp_path):
    log_run(client, "cpu", params={"batch_size": "64"}, summary={Metrics.SAMPLES_PER_S: 10})
    log_run(client, "mps", params={"batch_size": "64"}, summary={Metrics.SAMPLES_PER_S: 5})
    log_run(client, "mps", params={"batch_size": "64"}, summary={Metrics.SAMPLES_PER_S: 20})
    log_run(client, "cpu", params={"batch_size": "1024"}, summary={Metrics.SAMPLES_PER_S: 10})
    result, report = compare_json(cli, tmp_path, "--filter", "params.batch_size = '64'")
    assert len(report["groups"]) == 1 and len(report["groups"][0]["runs"]) == 3
    assert kinds(report) == ["accelerator-slower-than-cpu"]
    result, report = compare_json(cli, tmp_path, "--latest")
    assert report["findings"] == [] and result.code == 0
    assert sum(len(g["runs"]) for g in report["groups"]) == 3


def test_no_fail_exits_zero(cli, client, tmp_path):
    reference_runs(client)
    result, report = compare_json(cli, tmp_path, "--no-fail")
    assert result.code == 0 and len(report["findings"]) == 3


def test_missing_and_empty_experiments(cli, client):
    result = cli("compare", "--experiment", "nope")
    assert result.code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: experiment 'nope' does not exist in sqlite:///")
    client.create_experiment("empty")
    result = cli("compare", "--experiment", "empty")
    assert result.code == 2
    assert result.stderr.strip() == "error: no finished train runs to compare in experiment 'empty'"


def test_compare_on_a_store_that_does_not_exist_creates_nothing(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    for args in ([], ["--tracking-uri", "sqlite:///runs/mlflow.db"]):
        result = pipeline_in(folder, "compare", *args, check=False)
        assert result.code == 2
        assert result.stderr.startswith("error: no runs at sqlite:///"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert list(folder.iterdir()) == []  # no mlflow.db, no mlruns/


def test_bad_filter_is_a_usage_error(cli, client):
    log_run(client, "cpu")
    result = cli("compare", "--filter", "params.batch_size >>> 3")
    assert result.code == 2 and result.stderr.startswith("error: bad --filter")


def test_compare_after_train(cli, client, tmp_path):
    """The whole pipeline: two train runs through the CLI, then compare."""
    for name in ("first", "second"):
        assert (
            cli("train", "--device", "cpu", "--epochs", "2", *SMALL, "--run-name", name).code == 0
        )
    result, report = compare_json(cli, tmp_path)
    assert result.code == 0, result.stdout
    (group,) = report["groups"]
    assert [r["run_name"] for r in group["runs"]] == ["first", "second"]
    assert all(r["samples_per_s"] > 0 and r["test_accuracy"] > 0 for r in group["runs"])


def test_device_numerics_from_the_parity_probe(cli, client, tmp_path):
    log_run(client, "cpu")
    good = log_run(
        client,
        "cuda:0",
        summary={Metrics.PARITY_ARGMAX_AGREEMENT: 1.0, Metrics.PARITY_MAX_ABS_LOGIT_DIFF: 2e-6},
    )
    bad = log_run(
        client,
        "mps",
        summary={Metrics.PARITY_ARGMAX_AGREEMENT: 0.12, Metrics.PARITY_MAX_ABS_LOGIT_DIFF: 3.5},
    )
    result, report = compare_json(cli, tmp_path)
    assert result.code == 1
    assert kinds(report, good) == []
    assert kinds(report, bad) == ["device-numerics"]


def test_time_to_target_is_compared_between_devices(cli, client, tmp_path):
    log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: 10_000, Metrics.TIME_TO_TARGET_S: 5})
    cuda = log_run(
        client, "cuda:0", summary={Metrics.SAMPLES_PER_S: 12_000, Metrics.TIME_TO_TARGET_S: 8}
    )
    result, report = compare_json(cli, tmp_path)
    assert kinds(report, cuda) == ["accelerator-slower-to-target"] and result.code == 1
    assert "to target s" in result.stdout
    cuda_row = next(r for r in report["groups"][0]["runs"] if r["device"] == "cuda:0")
    assert cuda_row["time_to_target_s"] == 8


def test_compare_writes_its_verdict_into_the_run_description(cli, client, tmp_path):
    ids = reference_runs(client)
    client.set_tag(ids["mps"], Tags.NOTE, "mps run of the quickstart.")
    assert cli("compare").code == 1
    note = client.get_run(ids["mps"]).data.tags[Tags.NOTE]
    assert note.startswith("mps run of the quickstart.\n\nLatest compare: flagged ")
    assert "accuracy-mismatch" in note
    assert Tags.NOTE not in client.get_run(ids["cpu"]).data.tags  # clean, never flagged


def test_a_model_evaluated_on_another_device_must_score_the_same(cli, client, tmp_path):
    """`pipeline test` runs: the CPU's weights evaluated on mps (logged as the M1 would)."""
    cpu = log_run(client, "cpu", accuracy=[0.5, 0.6, 0.708], test_loss=[1.8, 1.2, 0.786])
    good = log_run(
        client,
        "cpu",
        accuracy=[0.708],
        test_loss=[0.786],
        tags={Tags.STAGE: "test", Tags.SOURCE_RUN_ID: cpu},
    )
    bad = log_run(
        client,
        "mps",
        accuracy=[0.0],
        test_loss=[0.787],
        tags={Tags.STAGE: "test", Tags.SOURCE_RUN_ID: cpu},
    )
    result, report = compare_json(cli, tmp_path)
    assert result.code == 1
    assert kinds(report, good) == []
    # every rule that can apply to a test run does: 0% at that loss is impossible too
    assert kinds(report, bad) == ["accuracy-inconsistent-with-loss", "evaluation-mismatch"]
    (finding,) = [f for f in report["findings"] if f["kind"] == "evaluation-mismatch"]
    assert finding["category"] == "accuracy"
    assert "the evaluation on mps is suspect" in finding["message"]
    assert [r["run_id"] for g in report["groups"] for r in g["runs"]] == [cpu]


def report_row(**values) -> dict:
    row = {key: None for _, key, _ in render.COLUMNS}
    return {**row, "run_id": "r1", "run_ids": ["r1"], "flags": "", **values}


def test_the_report_shows_columns_with_a_value_short_titles_escaped_cells_and_links():
    params = {"dataset": "synthetic", "model": "mlp", "batch_size": "64", "loader": "a|b"}
    table = {"id": 3, "title": "group 3: ...", "params": params, "runs": [
        report_row(device="cpu", host="h|1", samples_per_s=1000.0),
        report_row(device="mps", host="h|1", samples_per_s=700.0, device_name="M1\nPro"),
    ]}  # fmt: skip
    header = {"Selected": "--filter \"tags.pipeline.git_commit = 'abc'\"", "Commits": "abc"}
    url = "https://mlflow.example/#/experiments/1/runs/"
    text = render.markdown([table], [], {}, None, header=header, runs_url=url)
    lines = text.splitlines()
    assert "- **Selected**: --filter \"tags.pipeline.git_commit = 'abc'\"" in lines
    assert "- **Commits**: abc" in lines
    assert "## group 3: dataset=synthetic model=mlp batch_size=64" in lines  # short title
    assert "| device | host | device name | samples/s |" in lines  # no all-empty column
    assert f"| [cpu]({url}r1) | h\\|1 |  | 1,000 |" in lines  # a pipe escaped, a run linked
    assert f"| [mps]({url}r1) | h\\|1 | M1 Pro | 700 |" in lines  # a line break too
    assert "Workload: dataset=synthetic model=mlp batch_size=64 loader=a\\|b" in lines


def test_run_links_only_for_a_server_and_never_with_credentials():
    from pipeline.compare import stage

    assert stage.ui_runs_url("sqlite:///mlflow.db", "1") == ""
    assert (
        stage.ui_runs_url("https://ci:secret@mlflow.example:5000/", "7")
        == "https://mlflow.example:5000/#/experiments/7/runs/"
    )


def test_each_history_is_read_once_whoever_asks(client, monkeypatch):
    """The rules and the pictures share one reader: a history a rule read is not read again for
    a picture; the pictures' are read beforehand, in the background, each under its own pair;
    one asked for while it is being read is waited for, one not begun yet is read at once by
    the caller (not after the others queued before it)."""
    run_ids = [client.create_run("0").info.run_id for _ in range(4)]
    for n, run_id in enumerate(run_ids):
        for step in range(4):
            client.log_metric(run_id, Metrics.TRAIN_LOSS, 10 * n + step, step=step)
    asked, reads = [], client.get_metric_history
    reading, release = threading.Semaphore(0), threading.Event()

    def read(run_id, key):
        by_caller = threading.current_thread() is threading.main_thread()
        asked.append((run_id, key, by_caller))
        if not by_caller:  # a background read: held until released
            reading.release()
            assert release.wait(10), "never released"
        return reads(run_id, key)

    monkeypatch.setattr(client, "get_metric_history", read)
    monkeypatch.setattr(tracking, "LOCAL_READS", 2)
    with compare_stage.HistoryReader(client) as history:
        assert history(run_ids[0], Metrics.TRAIN_LOSS) == [(s, float(s)) for s in range(4)]
        wanted = [(r, Metrics.TRAIN_LOSS) for r in run_ids]
        history.read_ahead(wanted)
        history.read_ahead(wanted)  # asked again while they are being read
        assert reading.acquire(timeout=10) and reading.acquire(timeout=10)
        # runs 1 and 2 are being read by the two threads; run 3 waits for one of them
        assert history(*wanted[3]) == [(s, float(30 + s)) for s in range(4)]  # read here
        history(run_ids[0], Metrics.TRAIN_LOSS).clear()  # a caller's copy
        release.set()
        assert [history(*w) for w in wanted] == [
            [(s, float(10 * n + s)) for s in range(4)] for n in range(4)
        ]
    assert sorted(a[:2] for a in asked) == sorted(wanted)  # each once
    assert [a[:2] for a in asked if a[2]] == [wanted[0], wanted[3]]  # by the caller


def test_an_error_leaves_the_reader_without_waiting_for_its_reads(client, monkeypatch):
    """Ctrl-C or an error while a background read hangs (a slow server): compare stops at
    once; the read ends on its own."""
    run_id = client.create_run("0").info.run_id
    reading, release = threading.Event(), threading.Event()

    def read(run_id, key):
        reading.set()
        release.wait(30)
        return []

    monkeypatch.setattr(client, "get_metric_history", read)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), compare_stage.HistoryReader(client) as history:
        history.read_ahead([(run_id, Metrics.TRAIN_LOSS)])
        assert reading.wait(10)
        raise KeyboardInterrupt
    assert time.monotonic() - start < 10  # not the 30 s the read hangs
    release.set()
