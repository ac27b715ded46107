"""The MLflow UI's run comparison, in a real (headless) Chromium, driven by Playwright."""

import json
import os
import shutil
import tempfile
import urllib.parse
from pathlib import Path

import pytest
from conftest import ROOT, SMALL
from mlflow import MlflowClient
from test_server import start_server, stop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("PIPELINE_TEST_ARTIFACTS", ROOT / "test-artifacts"))


def shown(value: float) -> set[str]:
    """The ways the UI may print a metric."""
    fixed = f"{value:.3f}"
    return {fixed, fixed.rstrip("0").rstrip("."), f"{value:g}"}


def test_compare_page_shows_both_runs(cli, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if not Path(CHROMIUM).exists():
        pytest.skip("no Chromium at /usr/bin/chromium (Debian: apt-get install chromium)")
    proc, port = start_server(f"sqlite:///{tmp_path / 'ui.db'}", tmp_path / "artifacts")
    try:
        uri = f"http://127.0.0.1:{port}"
        for extra in (["--lr", "0.05"], ["--lr", "0.1", "--batch-size", "32"]):
            args = ("train", "--device", "cpu", "--epochs", "2", *SMALL, *extra)
            assert cli(*args, "--tracking-uri", uri).code == 0
        client = MlflowClient(uri)
        exp_id = client.get_experiment_by_name("Default").experiment_id
        runs = client.search_runs([exp_id])
        ids = [r.info.run_id for r in runs]
        url = (
            f"{uri}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
            f"&experiments={urllib.parse.quote(json.dumps([exp_id]))}"
        )
        with playwright.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            browser = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                viewport={"width": 1400, "height": 1800},
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                ],
            )
            page = browser.new_page()
            page.goto(url)
            for r in runs:
                page.get_by_text(r.info.run_name, exact=True).first.wait_for(timeout=60_000)
            page.get_by_text("test_accuracy", exact=True).first.wait_for(timeout=30_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=ARTIFACTS / "compare-runs.png", full_page=True)
            text = page.inner_text("body")
            browser.close()
    finally:
        stop(proc)
    for r in runs:
        assert r.info.run_name in text
        assert shown(r.data.metrics["test_accuracy"]) & set(text.split())
    rows = [line.split("\t") for line in text.splitlines()]
    assert ["device", "cpu", "cpu"] in rows  # the params table: one column per run
    assert (ARTIFACTS / "compare-runs.png").stat().st_size > 10_000
