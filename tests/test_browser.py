"""The MLflow UI's run comparison, in a real (headless) Chromium, driven by Playwright."""

import json
import os
import shutil
import tempfile
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ROOT, SMALL, pipeline_process
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from test_server import start_server, stop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("PIPELINE_TEST_ARTIFACTS", ROOT / "test-artifacts"))


@contextmanager
def browser_of(playwright, height: int):
    """Debian's Chromium, headless, with a fresh profile, 1400 pixels wide."""
    with playwright.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            viewport={"width": 1400, "height": height},
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--no-first-run",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def new_page(browser, height: int):
    """A page of the browser, 1400 pixels wide, closed when done."""
    page = browser.new_page()
    page.set_viewport_size({"width": 1400, "height": height})
    try:
        yield page
    finally:
        page.close()


def shown(value: float) -> set[str]:
    """The ways the UI may print a metric."""
    fixed = f"{value:.3f}"
    return {fixed, fixed.rstrip("0").rstrip("."), f"{value:g}"}


def test_the_ui_compares_runs(cli, tmp_path):
    """Two runs in the comparison page; then the M1 replay's train_loss chart."""
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium (Debian: apt-get install chromium)")
    proc, port = start_server(f"sqlite:///{tmp_path / 'ui.db'}", tmp_path / "artifacts")
    try:
        uri = f"http://127.0.0.1:{port}"
        for extra in (["--lr", "0.05"], ["--lr", "0.1", "--batch-size", "32"]):
            # No system metrics: the page draws only the first rows of its metrics table that
            # fit, and a run slowed past 10 s by a busy machine adds seven system/* rows
            # there, ahead of test_accuracy.
            args = ("train", "--device", "cpu", "--epochs", "2", *SMALL, *extra)
            args += ("--no-system-metrics", "--tracking-uri", uri)
            if extra[1] == "0.05":  # as a user runs it: a process of its own, the model kept
                done = pipeline_process(*args, "--register-model", "ui", cwd=tmp_path)
                assert done.code == 0, done.stderr[-2000:]
            else:
                assert cli(*args).code == 0
        client = MlflowClient(uri)
        exp_id = client.get_experiment_by_name("Default").experiment_id
        runs = client.search_runs([exp_id])
        ids = [r.info.run_id for r in runs]
        url = (
            f"{uri}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
            f"&experiments={urllib.parse.quote(json.dumps([exp_id]))}"
        )
        # one browser, one page at a time: two at once time each other out here
        with browser_of(playwright, height=1800) as browser:
            with new_page(browser, height=1800) as page:
                page.goto(url)
                for r in runs:
                    page.get_by_text(r.info.run_name, exact=True).first.wait_for(timeout=60_000)
                page.get_by_text("test_accuracy", exact=True).first.wait_for(timeout=60_000)
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=ARTIFACTS / "compare-runs.png", full_page=True)
                text = page.inner_text("body")
            check_the_m1_replay(browser, uri)
            user_run = next(r for r in runs if r.data.params["lr"] == "0.05")
            check_the_run_page(browser, uri, exp_id, user_run)
    finally:
        stop(proc)
    for r in runs:
        assert r.info.run_name in text
        assert shown(r.data.metrics["test_accuracy"]) & set(text.split())
    rows = [line.split("\t") for line in text.splitlines()]
    assert ["device", "cpu", "cpu"] in rows  # the params table: one column per run
    assert (ARTIFACTS / "compare-runs.png").stat().st_size > 10_000


def log_m1_replay(client: MlflowClient) -> list[str]:
    """The M1 quickstart measurement (tests/fixtures, the published 2022 figures) as two runs
    named as the replay they are."""
    ref = json.loads((ROOT / "tests" / "fixtures" / "m1-quickstart-2022.json").read_text())
    ids = []
    for device, run in ref["runs"].items():
        created = client.create_run("0", run_name=f"M1 replay: {device}")
        metrics = [Metric("wall_time_s", run["process_wall_s"], 0, 0)]
        for e, epoch in enumerate(run["epochs"]):
            metrics += [
                Metric("train_loss", p["loss"], 0, e * 938 + p["batch"])
                for p in epoch["train_loss_every_100_batches"]
            ]
            metrics += [
                Metric("test_accuracy", epoch["test_accuracy"], 0, e + 1),
                Metric("test_loss", epoch["test_loss"], 0, e + 1),
            ]
        note = f"The published M1 quickstart figures (May 2022) on {device}, replayed."
        tags = {
            "pipeline.device": device,
            "pipeline.host": "mac-mini-m1",
            "mlflow.note.content": note,
        }
        client.log_batch(
            created.info.run_id,
            metrics=metrics,
            params=[Param("device", device), Param("model", "mlp-784-512-512-10")],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        client.set_terminated(created.info.run_id)
        ids.append(created.info.run_id)
    return ids


def check_the_m1_replay(browser, uri: str) -> None:
    """The README's picture: the M1 replay's CPU and mps runs compared, the MLflow Assistant
    closed, their train_loss on one chart (docs/compare-runs.png is this screenshot)."""
    ids = log_m1_replay(MlflowClient(uri))
    runs, experiments = (urllib.parse.quote(json.dumps(x)) for x in (ids, ["0"]))
    url = f"{uri}/#/compare-runs?runs={runs}&experiments={experiments}"
    with new_page(browser, height=900) as page:
        page.goto(url)
        page.get_by_text("M1 replay: mps").first.wait_for(timeout=60_000)
        close = page.get_by_role("button", name="Close")  # the MLflow Assistant's panel
        if close.count():
            close.first.click()
        page.get_by_role("link", name="train_loss").first.click()
        page.get_by_text("M1 replay: mps (train_loss)").first.wait_for(timeout=60_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "m1-replay-train-loss.png")
        legend = [page.get_by_text(f"M1 replay: {d} (train_loss)").count() for d in ("cpu", "mps")]
        assistant_open = page.get_by_text("Ask questions about your experiments").count()
    assert legend == [1, 1]  # both devices' curves on the one chart
    assert assistant_open == 0
    assert (ARTIFACTS / "m1-replay-train-loss.png").stat().st_size > 10_000


def check_the_run_page(browser, uri: str, exp_id: str, run) -> None:
    """A `python -m pipeline train` run's page shows what MLflow's users look for: who ran it,
    its source and commit, its data sets, its logged and registered model."""
    tags = run.data.tags
    url = f"{uri}/#/experiments/{exp_id}/runs/{run.info.run_id}"
    with new_page(browser, height=2400) as page:
        page.goto(url)
        page.get_by_text("About this run").first.wait_for(timeout=60_000)
        page.get_by_text("Logged models").first.wait_for(timeout=60_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTIFACTS / "run-page.png", full_page=True)
        text = page.inner_text("body")
    about = text[text.index("About this run") :]
    assert "Created by\n" + tags["mlflow.user"] in about
    assert "__main__.py" in about  # the source, as a fluent start_run names it
    assert tags["mlflow.source.git.commit"][:7] in about
    (test_input,) = [i for i in run.inputs.dataset_inputs if i.tags[0].value == "test"]
    assert test_input.dataset.digest in text  # the data set, with its full-bytes digest
    assert "\nui\n" in text  # the registered model, beside the logged one
