"""compare as a CI gate: the selection is the judgement, every run is judged by every rule that
can apply to it, every flagged run carries its flags, and findings say what changed and how
sure they are. Runs are logged straight through MlflowClient, as another script would."""

import math
import statistics

import pytest
from mlflow.entities import Metric
from test_compare import QUICKSTART, compare_json, kinds, log_run

from pipeline.compare import changes as environment
from pipeline.compare import evidence, rules
from pipeline.compare.records import RunSummary, Selection, Tolerances
from pipeline.schema import Metrics, Params, Stages, Tags

DIVERGED = {Tags.FAILURE_REASON: "diverged: train_loss became nan at step 9 (epoch 1)"}


def test_a_failure_outside_the_selection_does_not_fail_the_gate(cli, client, tmp_path):
    """Last month's diverged run fails a plain compare, but not tonight's --latest or
    --run-id gate, whose runs are healthy."""
    old = log_run(client, "cpu", status="FAILED", train_loss={0: math.nan}, tags=DIVERGED)
    tonight = log_run(client, "cpu")
    result, report = compare_json(cli, tmp_path)
    assert kinds(report, old) == ["diverged"] and result.code == 1
    for selection in (["--latest"], ["--run-id", tonight]):
        result, report = compare_json(cli, tmp_path, *selection)
        assert report["findings"] == [] and result.code == 0, selection


def test_selected_runs_are_judged_whatever_their_status(cli, client, tmp_path):
    log_run(client, "cpu")
    killed = log_run(
        client, "cuda:0", status="KILLED", tags={Tags.FAILURE_REASON: "interrupted by SIGTERM"}
    )
    failed = log_run(client, "cuda:0", status="FAILED", tags={Tags.FAILURE_REASON: "OOM"})
    result, report = compare_json(cli, tmp_path)  # no selection: left out, as before
    assert report["findings"] == [] and report["left_out"] == {"FAILED": 1, "KILLED": 1}
    result, report = compare_json(cli, tmp_path, "--run-id", killed, "--run-id", failed)
    assert result.code == 1
    assert kinds(report, killed) == ["run-killed"] and kinds(report, failed) == ["run-failed"]
    message = next(f["message"] for f in report["findings"] if f["run_id"] == killed)
    assert "KILLED" in message and "interrupted by SIGTERM" in message
    # --latest takes the latest run of the group, device and host, whatever its status
    result, report = compare_json(cli, tmp_path, "--latest")
    assert kinds(report) == ["run-failed"] and result.code == 1


def test_latest_keys_on_the_device_that_ran(cli, client, tmp_path):
    """Two GPUs on one host: a broken second one is judged, not hidden behind the first."""
    log_run(client, "cpu")
    log_run(client, "cuda:0")
    broken = log_run(client, "cuda:1", accuracy=[0.5, 0.6, 0.0], test_loss=[1.8, 1.2, 0.8])
    result, report = compare_json(cli, tmp_path, "--latest")
    assert "accuracy-mismatch" in kinds(report, broken) and result.code == 1
    assert {r["device"] for g in report["groups"] for r in g["runs"]} == {
        "cpu",
        "cuda:0",
        "cuda:1",
    }


def log_test_run(client, source_id: str, device: str, accuracy: float, loss: float) -> str:
    return log_run(
        client,
        device,
        accuracy=[accuracy],
        test_loss=[loss],
        train_loss={},
        tags={Tags.STAGE: Stages.TEST, Tags.SOURCE_RUN_ID: source_id},
    )


def test_a_test_run_without_its_source_is_still_judged(cli, client, tmp_path):
    """0% accuracy at a test loss of 0.55 is impossible for a working evaluation, source or
    not; the missing source is said in one line."""
    orphan = log_test_run(client, "0123456789abcdef0123456789abcdef", "mps", 0.0, 0.55)
    result, report = compare_json(cli, tmp_path)
    assert kinds(report, orphan) == ["accuracy-inconsistent-with-loss"] and result.code == 1
    lines = [line for line in result.stdout.splitlines() if "without their source" in line]
    assert len(lines) == 1 and "01234567" in lines[0]
    assert report["notes"] == [lines[0].strip().removeprefix("note: ")]


def test_every_flagged_run_carries_its_flags_and_loses_them_when_clean(cli, client, tmp_path):
    cpu = log_run(client, "cpu", accuracy=[0.7])
    wrong = log_test_run(client, cpu, "mps", 0.6, 0.9)  # the same weights score 10 points less
    diverged = log_run(client, "cuda:0", status="FAILED", train_loss={0: math.nan}, tags=DIVERGED)
    result, report = compare_json(cli, tmp_path)
    assert kinds(report, wrong) == ["evaluation-mismatch"] and result.code == 1
    for run_id, kind in ((wrong, "evaluation-mismatch"), (diverged, "diverged")):
        tags = client.get_run(run_id).data.tags
        assert tags[Tags.FLAGS] == kind
        assert f"Latest compare: flagged {kind}." in tags[Tags.NOTE]
    # a wider tolerance: the test run is clean again and loses both
    result, report = compare_json(cli, tmp_path, "--accuracy-tolerance", "0.2", "--run-id", wrong)
    assert report["findings"] == [] and result.code == 0
    tags = client.get_run(wrong).data.tags
    assert Tags.FLAGS not in tags and "Latest compare: no findings." in tags[Tags.NOTE]


def test_findings_say_what_changed_since_the_baseline(cli, client, tmp_path):
    env = {
        Tags.TORCH_VERSION: "2.13.0",
        Tags.PYTHON_VERSION: "3.11.7",
        Tags.GIT_COMMIT: "aaaa",
    }
    for speed in (10_000, 10_200, 9_900, 10_100, 10_000):
        log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: speed}, tags=env)
    slow = log_run(
        client,
        "cpu",
        summary={Metrics.SAMPLES_PER_S: 6_000},
        tags={**env, Tags.TORCH_VERSION: "2.14.1", Tags.GIT_COMMIT: "bbbb"},
    )
    result, report = compare_json(cli, tmp_path)
    (finding,) = [f for f in report["findings"] if f["run_id"] == slow]
    assert finding["kind"] == "slower-than-history" and result.code == 1
    assert finding["values"]["changed"] == {
        "torch_version": ["2.13.0", "2.14.1"],
        "git_commit": ["aaaa", "bbbb"],
    }
    assert (
        "changed since the baseline: torch 2.13.0 -> 2.14.1, commit aaaa -> bbbb"
        in (finding["message"])
    )


def test_an_accelerator_baseline_does_not_count_the_device_name_as_a_change():
    cpu = summary("c", "cpu", {Tags.DEVICE_NAME: "Xeon", Tags.TORCH_VERSION: "2.14.1"})
    gpu = summary("g", "cuda:0", {Tags.DEVICE_NAME: "H100", Tags.TORCH_VERSION: "2.14.1"})
    assert environment.changed(gpu, [cpu], same_by_design=("device_name",)) == {}
    assert environment.changed(gpu, [cpu]) == {"device_name": ["Xeon", "H100"]}


def test_a_change_of_host_allocator_is_named():
    """A run measured with glibc's default allocator against one that kept freed memory."""
    before = summary("b", "cpu", {Tags.HOST_ALLOCATOR: "system default"})
    after = summary("a", "cpu", {Tags.HOST_ALLOCATOR: "glibc, freed memory kept"})
    diff = environment.changed(after, [before])
    assert diff == {"host_allocator": ["system default", "glibc, freed memory kept"]}
    assert environment.describe_changes(diff) == (
        "; changed since the baseline: host allocator system default -> glibc, freed memory kept"
    )


def timed_run(client, device: str, epoch_speeds: list[float], **kw) -> str:
    """A run whose epochs trained at these samples/s; its samples_per_s is what train logs,
    the harmonic mean of the epochs after the first."""
    steady = epoch_speeds[1:] or epoch_speeds
    run_id = log_run(
        client,
        device,
        summary={Metrics.SAMPLES_PER_S: statistics.harmonic_mean(steady)},
        params={Params.EPOCHS: str(len(epoch_speeds))},
        **kw,
    )
    client.log_batch(
        run_id,
        metrics=[
            Metric(Metrics.EPOCH_SAMPLES_PER_S, v, 0, i + 1) for i, v in enumerate(epoch_speeds)
        ],
    )
    return run_id


def speed_findings(
    cli, tmp_path, run_id: str | None = None, *args: str
) -> tuple[list[dict], dict, int]:
    result, report = compare_json(cli, tmp_path, *args)
    found = [
        f for f in report["findings"] if f["category"] == "speed" and run_id in (None, f["run_id"])
    ]
    return found, report, result.code


def speed_finding(cli, tmp_path, run_id: str | None = None) -> tuple[dict, int]:
    (finding,), _, code = speed_findings(cli, tmp_path, run_id)
    return finding, code


def test_a_slowdown_the_epochs_confirm_is_an_error(cli, client, tmp_path):
    """One run against one run: their steady epochs are the samples."""
    timed_run(client, "cpu", [15_000, 20_000, 19_800, 20_200, 20_100, 19_900, 20_000])
    timed_run(client, "cuda:0", [5_000, 10_000, 9_900, 10_100, 10_050, 9_950, 10_000])
    finding, code = speed_finding(cli, tmp_path)
    assert finding["severity"] == "error" and code == 1
    values = finding["values"]
    assert values["confidence"] == "confirmed" and values["sample_kind"] == "epochs"
    assert values["samples"] == {"epochs": [6, 6]}
    assert values["speed_vs_cpu"] <= values["ratio_bound"] < 0.9  # clear of the tolerance
    assert values["level"] == pytest.approx(1 - evidence.family_alpha(values["comparisons"]))
    assert values["level"] >= 1 - 0.01 / values["comparisons"]  # the command's 99% holds
    assert "confirmed: speed ratio at most" in finding["message"]
    assert "99% together" in finding["message"]


def test_a_slowdown_the_epochs_cannot_support_is_a_note(cli, client, tmp_path):
    """Epochs that overlap: the point estimate is past the tolerance, but the noise explains
    it: a note, no finding, no flag, exit 0."""
    timed_run(client, "cpu", [9_000, 10_000, 5_000, 9_000, 5_500, 8_000, 6_000])
    cuda = timed_run(client, "cuda:0", [9_000, 5_000, 9_000, 4_500, 8_000, 5_000, 6_500])
    found, report, code = speed_findings(cli, tmp_path)
    assert found == [] and code == 0
    (note,) = report["notes"]
    assert "within what the noise explains, not flagged" in note and "cuda:0" in note
    assert "pipeline.flags" not in str(client.get_run(cuda).data.tags)


def test_two_runs_with_too_few_epochs_are_insufficient_data(cli, client, tmp_path):
    """No noise estimate: a drop past the large-effect threshold is a warning that says to
    repeat; a smaller one is a note."""
    timed_run(client, "cpu", [15_000, 20_000, 20_000])
    timed_run(client, "cuda:0", [5_000, 10_000, 10_000])
    finding, code = speed_finding(cli, tmp_path)
    assert finding["severity"] == "warning" and code == 1
    assert finding["values"]["confidence"] == "insufficient data"
    assert "ratio_bound" not in finding["values"]
    assert "insufficient data (1 baseline run, 2 steady epochs a side" in finding["message"]
    assert "repeat to confirm (`sweep --repeats 5`)" in finding["message"]


def test_a_moderate_drop_without_a_noise_estimate_is_a_note(cli, client, tmp_path):
    timed_run(client, "cpu", [15_000, 20_000, 20_000])
    timed_run(client, "cuda:0", [12_000, 16_000, 16_000])  # 0.80×: past 10%, not past 25%
    found, report, code = speed_findings(cli, tmp_path)
    assert found == [] and code == 0
    (note,) = report["notes"]
    assert "0.80×" in note and "not flagged, a drop under 25%" in note


@pytest.mark.parametrize(
    ("history", "new", "confidence"),
    [
        # the new run inside the history's spread: its drop may be noise
        ([10_000, 10_000, 10_000, 10_000, 6_000], 8_000, None),
        # slower than every history run by more than the tolerance
        ([10_000, 9_800, 10_200, 9_900, 10_100], 5_000, "confirmed"),
    ],
)
def test_history_runs_are_the_samples(cli, client, tmp_path, history, new, confidence):
    """Five earlier runs and a new one: runs are the samples (epochs of several runs pooled
    would not be independent); a drop the history's own spread explains is a note."""
    for speed in history:
        log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: speed})
    run_id = log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: new})
    found, report, code = speed_findings(cli, tmp_path, run_id, "--run-id", run_id)
    if confidence is None:
        assert found == [] and code == 0
        assert any("within what the noise explains" in n for n in report["notes"])
        return
    (finding,) = found
    assert finding["kind"] == "slower-than-history" and code == 1
    values = finding["values"]
    assert values["confidence"] == confidence and values["sample_kind"] == "runs"
    assert values["samples"] == {"runs": [1, 5]}
    assert finding["severity"] == "error"


def test_a_short_history_without_spread_is_insufficient_data(cli, client, tmp_path):
    for speed in (10_000, 10_000):
        log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: speed})
    log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: 5_000})
    finding, code = speed_finding(cli, tmp_path)
    assert finding["kind"] == "slower-than-history" and code == 1
    assert finding["values"]["confidence"] == "insufficient data"
    assert finding["severity"] == "warning"


@pytest.mark.parametrize(("fail_on", "code"), [("warning", 1), ("error", 0), ("never", 0)])
def test_fail_on_chooses_what_fails_the_gate(cli, client, tmp_path, fail_on, code):
    """A warning (no noise estimate) fails the default gate, not --fail-on error; JUnit
    follows: below the fail level a finding is in the case's system-out, not a failure."""
    timed_run(client, "cpu", [15_000, 20_000, 20_000])
    timed_run(client, "cuda:0", [5_000, 10_000, 10_000])
    junit = tmp_path / "junit.xml"
    result, report = compare_json(cli, tmp_path, "--fail-on", fail_on, "--output-junit", str(junit))
    assert result.code == code and [f["severity"] for f in report["findings"]] == ["warning"]
    xml = junit.read_text()
    assert ("<failure" in xml) == (fail_on == "warning")
    assert ("<system-out>" in xml) == (fail_on != "warning")
    tags = client.get_run(report["findings"][0]["run_id"]).data.tags
    assert tags[Tags.FLAGS] == "accelerator-slower-than-cpu"  # flagged whatever fails


def test_no_fail_is_fail_on_never(cli, client, tmp_path):
    timed_run(client, "cpu", [15_000, 20_000, 20_000])
    timed_run(client, "cuda:0", [5_000, 10_000, 10_000])
    assert cli("compare", "--no-fail").code == 0
    assert cli("compare").code == 1


def summary(run_id: str, device: str, tags: dict, **metrics: float) -> RunSummary:
    return RunSummary(
        run_id,
        run_id,
        "0",
        0,
        "FINISHED",
        {**QUICKSTART, Params.DEVICE: device},
        dict(metrics),
        {Tags.HOST: "box", **tags},
    )


def test_the_loss_history_is_read_in_step_order():
    """A store may return points in any order: the rule sorts them by step."""
    run = summary("r", "cpu", {}, **{Metrics.TRAIN_LOSS: 1.9})
    falling = [(s, 2.3 - 0.02 * s) for s in range(20)]  # 2.30 down to 1.92

    def history(run_id, key):
        return list(reversed(falling))

    selection = Selection([run], {"r"}, {}, [], ["0"])
    findings, _, _ = rules.judge(selection, Tolerances(), history)
    assert findings == []


@pytest.mark.parametrize(("a", "b"), [("1e-3", "0.001"), ("64", "64.0"), ("0.5", "5e-1")])
def test_numbers_group_by_value(cli, client, tmp_path, a, b):
    log_run(client, "cpu", params={Params.LR: a})
    log_run(client, "mps", params={Params.LR: b})
    result, report = compare_json(cli, tmp_path)
    assert len(report["groups"]) == 1 and len(report["groups"][0]["runs"]) == 2
    assert result.code == 0
