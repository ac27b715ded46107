"""compare's report read at a glance: the history baseline of each row in the verdict's own
numbers, rows sorted by change, and the pictures (read back from the figure objects)."""

import io
import statistics

import pytest
from matplotlib.container import BarContainer
from rich.console import Console
from test_compare import compare_json, log_run

from pipeline import plots
from pipeline.compare import render
from pipeline.compare.records import Group, RunSummary, Selection
from pipeline.schema import MEMORY_CUDA, MEMORY_MIXED, MEMORY_VMHWM, Metrics, Params, Tags
from pipeline.sweep.crossover import crossover_table

SPEEDS = [10_000, 10_400, 9_700, 10_200, 9_600, 10_300, 7_000, 10_100, 9_800, 10_450]


def test_rows_show_their_history_baseline_sorted_by_change_and_groups_draw_their_history(
    cli, client, tmp_path
):
    """A cpu history over ten commits (one slow run) and a cpu/mps pair without history: each
    row with a history carries the baseline the verdict used, the largest slowdown first; the
    pair's table has no baseline column; only the group with history gets a picture over
    commits, listed in report.md."""
    ids = [
        log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: s}, tags={Tags.GIT_COMMIT: f"c{i}"})
        for i, s in enumerate(SPEEDS)
    ]
    pair = {Params.BATCH_SIZE: "128"}
    log_run(client, "cpu", params=pair, summary={Metrics.SAMPLES_PER_S: 20_000})
    log_run(client, "mps", params=pair, summary={Metrics.SAMPLES_PER_S: 30_000})
    out = tmp_path / "out"
    result, report = compare_json(cli, tmp_path, "--output-dir", str(out))
    assert result.code == 1
    history, no_history = report["groups"]
    rows = history["runs"]
    # the largest slowdown first, then the runs with no baseline (under two earlier runs)
    ratios = [r["baseline_ratio"] for r in rows if r["baseline_ratio"] is not None]
    assert len(ratios) == 8 and ratios == sorted(ratios)
    assert [r["run_id"] for r in rows[:1] + rows[-2:]] == [ids[6], ids[0], ids[1]]
    assert all(r["baseline_median"] is None for r in rows[-2:] + no_history["runs"])
    # the slow run's baseline is the one its finding was judged against
    (finding,) = report["findings"]
    slow, values = rows[0], finding["values"]
    assert slow["baseline_median"] == statistics.median(SPEEDS[1:6])
    assert slow["baseline_runs"] == values["history_runs"] == 5
    assert slow["baseline_figure"] == Metrics.SAMPLES_PER_S
    assert slow["baseline_ratio"] == pytest.approx(values["speed_vs_history"])
    low, high = slow["baseline_ratio_ci"]
    assert low < slow["baseline_ratio"] < high == pytest.approx(values["ratio_bound"])
    assert slow["baseline_ratio_ci_level"] == pytest.approx(2 * values["level"] - 1)
    text = (out / "report.md").read_text()
    first, second = text.split("## group 2")
    assert "| baseline |" in first and "| baseline |" not in second
    assert f"| 7,000 | {render.describe_baseline(slow)} |" in first
    assert render.describe_baseline(slow).startswith("10,200 (0.70× [")
    assert {p.name for p in out.glob("*.png")} == {"group-1.png", "history-1.png", "group-2.png"}
    assert "![history-1: group 1: " in first and "history-" not in second


def report_row(**values) -> dict:
    row = {key: None for _, key, _ in render.COLUMNS} | {key: None for key in render.BASELINE}
    return {**row, "run_id": "r1", "run_ids": ["r1"], "flags": "", **values}


BASELINED = {
    "baseline_figure": Metrics.SAMPLES_PER_S,
    "baseline_median": 31_900.0,
    "baseline_runs": 5,
    "baseline_ratio": 0.94,
    "baseline_ratio_ci": [0.9, 0.98],
    "baseline_ratio_ci_level": 0.9984,
}


def test_the_baseline_column_in_markdown_and_the_terminal():
    table = {"id": 1, "title": "group 1", "params": {"model": "mlp"}, "runs": [
        report_row(device="cpu", host="h", samples_per_s=30_000.0, **BASELINED),
        report_row(device="mps", host="h", samples_per_s=9_000.0),
        report_row(device="cuda:0", host="g", samples_per_s=8_000.0, **{
            **BASELINED, "baseline_figure": Metrics.TRAIN_TIME_S, "baseline_median": 12.3,
            "baseline_ratio_ci": None, "baseline_ratio_ci_level": None,
        }),
    ]}  # fmt: skip
    lines = render.markdown([table], [], {}, None).splitlines()
    assert "| device | host | samples/s | baseline |" in lines
    assert "| cpu | h | 30,000 | 31,900 (0.94× [0.90, 0.98] 99.8%) |" in lines
    assert "| mps | h | 9,000 |  |" in lines  # no history: nothing
    assert "| cuda:0 | g | 8,000 | 12.30 s (0.94×) |" in lines  # a time, no noise estimate
    close = {**BASELINED, "baseline_ratio_ci_level": 0.999992}  # a level never shown as 100%
    assert render.describe_baseline(close) == "31,900 (0.94× [0.90, 0.98] 99.999%)"
    screen = io.StringIO()
    render.print_terminal(Console(file=screen, width=200), [table], [], {})
    assert "31,900 (0.94× [0.90, 0.98] 99.8%)" in screen.getvalue()
    assert "baseline" in screen.getvalue()


def test_a_peak_memory_column_that_mixes_methods_names_each_figures_method():
    """The CPU's peak RSS (the whole process) and a GPU allocator's peak are different
    quantities: side by side, each says what it is, and a line under the table why."""

    def summary(device: str, source: str) -> RunSummary:
        return RunSummary(
            run_id=device, name=device, experiment_id="0", start_time=1, status="FINISHED",
            params={}, metrics={Metrics.PEAK_MEMORY_MB: 900.0 if device == "cpu" else 300.0},
            tags={Tags.DEVICE: device, Tags.HOST: "h", Tags.PEAK_MEMORY_SOURCE: source},
        )  # fmt: skip

    def group(*runs: RunSummary) -> dict:  # as compare's tables() makes it
        selection = Selection(list(runs), {r.run_id for r in runs}, {}, [], ["0"])
        (table,) = render.tables(selection, [Group(1, {}, list(runs))], [])
        return table

    cpu = summary("cpu", MEMORY_VMHWM)
    mixed = group(cpu, summary("cuda:0", MEMORY_CUDA))
    lines = render.markdown([mixed], [], {}, None).splitlines()
    assert "| cpu | h | 1 | 900 (process peak RSS) |" in lines
    assert "| cuda:0 | h | 1 | 300 (allocator peak) |" in lines
    assert MEMORY_MIXED in lines
    screen = io.StringIO()
    render.print_terminal(Console(file=screen, width=300), [mixed], [], {})
    assert "300 (allocator peak)" in screen.getvalue() and "different ways" in screen.getvalue()
    # one way of measuring: the figures alone
    same = group(cpu, summary("cpu:2", MEMORY_VMHWM))
    lines = render.markdown([same], [], {}, None).splitlines()
    assert "| cpu | h | 1 | 900 |" in lines and MEMORY_MIXED not in lines


def test_past_the_terminal_rows_the_largest_changes_stay():
    changed = [report_row(run_id=f"b{i}", **{**BASELINED, "baseline_ratio": 0.5 + i / 100})
               for i in range(22)]  # fmt: skip
    unbased = [report_row(run_id=f"n{i}") for i in range(3)]
    flagged = [report_row(run_id="f", flags="slower-than-history")]
    shown = render.terminal_rows(render.by_change(unbased + changed[::-1] + flagged))
    assert [r["run_id"] for r in shown] == [f"b{i}" for i in range(19)] + ["f"]


def test_the_group_picture_shows_intervals_a_cpu_line_and_whole_epochs():
    accuracy = [(1, 0.5), (2, 0.6), (3, 0.7)]
    series = [
        plots.Series("cpu @ box", [(0, 2.3)], accuracy, 1000.0, (900.0, 1100.0), cpu_of="box"),
        plots.Series("mps @ box", [(0, 2.3)], accuracy, 700.0, (650.0, 760.0)),
        plots.Series("cuda:0 @ gpu", [(0, 2.3)], accuracy, 4000.0),
    ]
    fig = plots.group_figure("group 1", series, Metrics.SAMPLES_PER_S)
    try:
        _, ax_acc, ax_speed = fig.axes
        (bars,) = [c for c in ax_speed.containers if isinstance(c, BarContainer)]
        assert [b.get_height() for b in bars] == [1000.0, 700.0, 4000.0]
        (whiskers,) = bars.errorbar.lines[2]
        ends = [sorted(y for _, y in segment) for segment in whiskers.get_segments()]
        assert ends == [[900.0, 1100.0], [650.0, 760.0], [4000.0, 4000.0]]
        (cpu_line,) = [line for line in ax_speed.get_lines() if line.get_label() == "CPU on box"]
        assert list(cpu_line.get_ydata()) == [1000.0, 1000.0]
        assert [t.get_text() for t in ax_speed.get_legend().get_texts()] == ["CPU on box"]
        assert all(float(v).is_integer() for v in ax_acc.get_xticks())
    finally:
        plots.pyplot().close(fig)


def test_the_run_picture_counts_whole_epochs():
    fig = plots.run_figure([2.3, 2.0, 1.5], [(1, 0.5, 1.9), (2, 0.6, 1.5), (3, 0.7, 1.2)], "run")
    try:
        assert all(float(v).is_integer() for v in fig.axes[1].get_xticks())
    finally:
        plots.pyplot().close(fig)


def test_the_sweep_legend_names_every_axis_that_varies():
    records = [
        {"model": "mlp", "precision": "fp32", "hidden": hidden, "batch_size": batch,
         "device": device, "samples_per_s": 1000.0 * batch / hidden, "flops_per_sample": 1.0,
         "optimizer": optimizer}
        for hidden in (256, 512) for batch in (32, 64) for device in ("cpu", "mps")
        for optimizer in ("sgd", "adamw")
    ]  # fmt: skip
    fig = plots.sweep_figure(crossover_table(records))
    try:
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert len(labels) == len(set(labels)) == 8
        assert "cpu, hidden=256 optimizer=adamw" in labels
        assert "mps, hidden=512 optimizer=sgd" in labels
    finally:
        plots.pyplot().close(fig)


@pytest.mark.parametrize("commits", [True, False])
def test_the_speed_over_commits_picture(commits):
    runs = [(60_000 * i, f"c{i}" + "f" * 38 if commits else "", 1000.0 + i) for i in range(4)]
    lines = {"cpu @ box": runs[::2], "mps @ box": runs[1::2]}
    fig = plots.history_figure("group 1", lines, Metrics.SAMPLES_PER_S)
    try:
        (ax,) = fig.axes
        assert [line.get_label() for line in ax.get_lines()] == ["cpu @ box", "mps @ box"]
        assert list(ax.get_lines()[1].get_ydata()) == [1001.0, 1003.0]
        if commits:  # the commits in order, named by their first 8 characters
            assert ax.get_xlabel() == "commit (oldest first)"
            assert list(ax.get_lines()[1].get_xdata()) == [1, 3]
            assert ax.xaxis.get_major_formatter()(3, 0) == "c3ffffff"
            assert all(float(v).is_integer() for v in ax.get_xticks())
        else:
            assert ax.get_xlabel() == "run start (UTC)"
    finally:
        plots.pyplot().close(fig)


def test_a_sweep_cells_bar_is_its_rows_median_with_its_interval():
    from pipeline.compare import pictures
    from pipeline.compare.records import Group, RunSummary

    def run(run_id: str, start: int, speed: float, parent: str = "") -> RunSummary:
        tags = {Tags.HOST: "box", Tags.DEVICE: "cpu", Tags.PARENT: parent}
        metrics = {Metrics.SAMPLES_PER_S: speed}
        return RunSummary(run_id, run_id, "0", start, "FINISHED", {}, metrics, tags)

    repeats = [run(f"r{i}", i, s, parent="sweep") for i, s in enumerate((900.0, 1000.0, 1100.0))]
    row = report_row(run_ids=["r0", "r1", "r2"], samples_per_s=1000.0,
                     samples_per_s_ci=[900.0, 1100.0])  # fmt: skip
    assert pictures.bar(repeats[-1], {"runs": [row]}, Metrics.SAMPLES_PER_S) == (
        1000.0,
        (900.0, 1100.0),
    )
    assert pictures.bar(repeats[-1], None, Metrics.SAMPLES_PER_S) == (1100.0, None)
    # one sweep cell's repeats are no history; a second run of the series is
    assert not pictures.has_history(Group(1, {}, repeats))
    assert pictures.history_lines(Group(1, {}, repeats)) is None
    again = Group(1, {}, [*repeats, run("r3", 9, 1050.0)])
    lines, figure = pictures.history_lines(again)
    assert figure == Metrics.SAMPLES_PER_S
    assert lines == {"cpu @ box": [(i, "", s) for i, s in ((0, 900.0), (1, 1000.0), (2, 1100.0),
                                                         (9, 1050.0))]}  # fmt: skip


def test_a_group_title_names_what_makes_it_another_workload_than_the_plain_one():
    plain = {"dataset": "synthetic", "model": "mlp", "batch_size": "64", "lr": "0.001",
             "epochs": "2", "precision": "fp32", "optimizer": "sgd", "seed": "0"}  # fmt: skip
    assert render.heading({"id": 1, "params": plain}) == (
        "group 1: dataset=synthetic model=mlp batch_size=64 lr=0.001 epochs=2"
    )
    other = plain | {"precision": "bf16", "optimizer": "adamw", "compile": "default"}
    assert render.heading({"id": 2, "params": other}).endswith(
        "epochs=2 precision=bf16 optimizer=adamw compile=default"
    )


def test_the_groups_read_ahead_are_drawn_whatever_the_findings():
    """compare reads the histories of pictures.surely_drawn's groups before it judges: each of
    them is drawn, whichever groups the findings flag (all subsets tried, 1 to 8 groups, one
    of them without a judged run)."""
    from itertools import combinations

    from pipeline.compare import pictures
    from pipeline.compare.records import Finding

    def run(run_id: str, device: str) -> RunSummary:
        tags = {Tags.DEVICE: device, Tags.HOST: "h"}
        return RunSummary(run_id, run_id, "0", 1, "FINISHED", {}, {}, tags)

    for size in range(1, 9):
        groups = [
            Group(i, {}, [run(f"{i}a", "cpu"), run(f"{i}b", "cuda:0" if i % 3 else "cpu")])
            for i in range(1, size + 1)
        ]
        runs = [r for g in groups for r in g.runs]
        judged = {r.run_id for r in runs if not r.run_id.startswith("2")}  # group 2: history
        selection = Selection(runs, judged, {}, [], ["0"])
        surely = {g.id for g in pictures.surely_drawn(groups, judged)}
        reported = size - (size >= 2)  # the groups holding a judged run
        assert bool(surely) == (reported <= render.MAX_PLOTTED_GROUPS)  # not vacuous
        for flagged in (c for k in range(size + 1) for c in combinations(groups, k)):
            findings = [Finding(g.runs[0].run_id, "speed", "x", "error", "", group=g.id)
                        for g in flagged]  # fmt: skip
            tables = render.tables(selection, groups, findings)
            assert surely <= {g.id for g in pictures.drawn(groups, tables, findings)}
