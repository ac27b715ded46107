"""compare at a team's scale: speed does not come from judging less. On a store of a few hundred
runs from a fixed seed (benchmarks/compare_at_scale.py's), the findings are the same with and
without plots, and the number of pictures stays bounded."""

import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_at_scale import populate

from pipeline.compare import render
from pipeline.schema import Stages, Tags


def findings_of(path) -> list[tuple]:
    report = json.loads(path.read_text())
    return sorted((f["run_id"], f["kind"], f["severity"], f["message"]) for f in report["findings"])


def test_plots_change_no_finding_and_stay_bounded(cli, client, store, tmp_path):
    populate(store, 500)  # 20 groups of 5 device/host pairs x 5 repeats
    with_plots, without = tmp_path / "with.json", tmp_path / "without.json"
    assert cli("compare", "--no-fail", "--output-json", str(with_plots)).code == 0
    assert cli("compare", "--no-fail", "--no-plots", "--output-json", str(without)).code == 0
    assert findings_of(with_plots) == findings_of(without)
    report = json.loads(with_plots.read_text())
    flagged_groups = {f["group"] for f in report["findings"]}
    assert flagged_groups and len(report["groups"]) > render.MAX_PLOTTED_GROUPS

    first, second = sorted(
        client.search_runs(["0"], f"tags.`{Tags.STAGE}` = '{Stages.COMPARE}'"),
        key=lambda r: r.info.start_time,
    )
    pictures = [a.path for a in client.list_artifacts(first.info.run_id) if a.path.endswith("png")]
    groups = [p for p in pictures if p.startswith("group-")]
    assert len(groups) == render.MAX_PLOTTED_GROUPS  # every group has several devices
    drawn = {int(p.removeprefix("group-").removesuffix(".png")) for p in groups}
    # a speed-over-commits picture only beside a group picture (every group has history)
    assert sorted(set(pictures) - set(groups)) == sorted(f"history-{g}.png" for g in drawn)
    if len(flagged_groups) >= len(drawn):  # the flagged groups come first
        assert drawn <= flagged_groups
    else:
        assert flagged_groups <= drawn
    assert [a.path for a in client.list_artifacts(second.info.run_id)] == [
        "findings.json",
        "report.md",
    ]
    local = client.download_artifacts(first.info.run_id, "report.md", str(tmp_path))
    with open(local) as f:
        assert "No picture for group" in f.read()


def test_compare_imports_only_what_it_needs(store, tmp_path):
    """No torch in compare; matplotlib only when it draws."""
    import subprocess

    populate(store, 25)
    probe = (
        "import sys; from pipeline import cli; "
        "code = cli.execute(['compare', '--no-fail', '--tracking-uri', {store!r}, {plots!r}]); "
        "print(code, 'torch' in sys.modules, 'matplotlib' in sys.modules)"
    )
    for plots, drew in (("--no-plots", False), ("--plots", True)):
        proc = subprocess.run(
            [sys.executable, "-c", probe.format(store=store, plots=plots)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert proc.stdout.split()[-3:] == ["0", "False", str(drew)], proc.stderr[-2000:]
