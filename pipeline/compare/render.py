"""What compare shows: terminal tables, Markdown, JSON. Plain data in, text out."""

import math
import statistics
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.compare import evidence
from pipeline.compare.records import Finding, Group, RunSummary, Selection
from pipeline.compare.speed import speed_vs_cpu
from pipeline.console import cell
from pipeline.schema import MEMORY_MIXED, Metrics, Params, Tags, memory_method

# (title, row key, format) of each column, in the terminal and in Markdown alike.
COLUMNS = [
    ("device", "device", "{}"),
    ("host", "host", "{}"),
    ("device name", "device_name", "{}"),
    ("wall s", "wall_time_s", "{:.2f}"),
    ("train s", "train_time_s", "{:.2f}"),
    ("runs", "repeats", "{}"),
    ("samples/s", "samples_per_s", "{:,.0f}"),
    ("baseline", "baseline_median", "{}"),  # the history baseline: median (ratio [ci] level)
    ("vs cpu", "speed_vs_cpu", "{:.2f}×"),
    ("to target s", "time_to_target_s", "{:.2f}"),
    ("test acc", "test_accuracy", "{:.1%}"),
    ("test loss", "test_loss", "{:.4f}"),
    ("parity", "parity_argmax_agreement", "{:.1%}"),
    ("peak MiB", "peak_memory_mb", "{:,.0f}"),
    ("energy J", "energy_j", "{:,.0f}"),
    ("flags", "flags", "{}"),
]
TITLE_PARAMS = (Params.DATASET, Params.MODEL, Params.BATCH_SIZE, Params.LR, Params.EPOCHS)
UNUSUAL = {Params.PRECISION: "fp32", Params.OPTIMIZER: "sgd", Params.COMPILE: "none"}
MAX_TERMINAL_GROUPS = 20
MAX_TERMINAL_ROWS = 20  # a group's rows in the terminal, flagged ones always
MAX_PLOTTED_GROUPS = 6
BASELINE = (
    "baseline_figure",
    "baseline_median",
    "baseline_runs",
    "baseline_ratio",
    "baseline_ratio_ci",
    "baseline_ratio_ci_level",
)


def row(runs: list[RunSummary], group: Group, findings: list[Finding]) -> dict:
    """One table row: a run, or a sweep cell's repeated runs as their medians (the latest
    run's id and name), with the interval of the median throughput and its level."""
    latest = runs[-1]

    def median(key: str) -> float | None:
        values = [r.metrics[key] for r in runs if key in r.metrics]
        return statistics.median(values) if values else None

    ids = {r.run_id for r in runs}
    speeds = [r.metrics[Metrics.SAMPLES_PER_S] for r in runs if Metrics.SAMPLES_PER_S in r.metrics]
    interval = evidence.median_interval(speeds)
    return {
        "run_id": latest.run_id,
        "run_name": latest.name,
        "run_ids": [r.run_id for r in runs],
        "repeats": len(runs),
        "device": latest.device,
        "device_type": latest.device_type,
        "host": latest.host,
        "device_name": latest.device_name,
        "wall_time_s": median(Metrics.WALL_TIME_S),
        "train_time_s": median(Metrics.TRAIN_TIME_S),
        "samples_per_s": median(Metrics.SAMPLES_PER_S),
        "samples_per_s_ci": list(interval[:2]) if interval else None,
        "samples_per_s_ci_level": interval[2] if interval else None,
        "speed_vs_cpu": speed_vs_cpu(latest, group),
        "time_to_target_s": median(Metrics.TIME_TO_TARGET_S),
        "test_accuracy": median(Metrics.TEST_ACCURACY),
        "test_loss": median(Metrics.TEST_LOSS),
        "parity_argmax_agreement": median(Metrics.PARITY_ARGMAX_AGREEMENT),
        "peak_memory_mb": median(Metrics.PEAK_MEMORY_MB),
        "memory_method": memory_method(latest.tags.get(Tags.PEAK_MEMORY_SOURCE)),
        "energy_j": median(Metrics.ENERGY_J),
        "flags": ", ".join(sorted({f.kind for f in findings if f.run_id in ids})),
        **{key: group.baselines.get(latest.run_id, {}).get(key) for key in BASELINE},
    }


def by_change(rows: list[dict]) -> list[dict]:
    """Rows by their change against their history baseline, the largest slowdown first (as
    asv's compare sorts), then the rows without one in their order."""
    return sorted(rows, key=lambda r: (r["baseline_ratio"] is None, r["baseline_ratio"] or 0.0))


def tables(selection: Selection, groups: list[Group], findings: list[Finding]) -> list[dict]:
    """Each group that holds a judged run: its params and one row per judged run, a sweep
    cell's repeats (same parent, device and host) making one row."""
    out = []
    for group in groups:
        rows: dict[tuple | str, list[RunSummary]] = {}
        for r in group.runs:
            if r.run_id in selection.judged:
                key = (r.parent, r.device, r.host) if r.parent else r.run_id
                rows.setdefault(key, []).append(r)
        if rows:
            out.append(
                {
                    "id": group.id,
                    "title": title(group),
                    "params": group.params,
                    "runs": by_change([row(runs, group, findings) for runs in rows.values()]),
                }
            )
            out[-1]["memory_mixed"] = memory_mixed(out[-1]["runs"])
    return out


def memory_mixed(rows: list[dict]) -> bool:
    """Whether the rows' peak memory was measured in more than one way (pipeline's tag
    pipeline.peak_memory_source): then each figure is shown with its method."""
    return len({r["memory_method"] for r in rows if r["peak_memory_mb"] is not None}) > 1


def title(group: Group, short: bool = False) -> str:
    """'group 3: dataset=... model=... batch_size=...', every param, or (short) the main ones."""
    if short:
        return heading({"id": group.id, "params": group.params})
    p = group.params
    parts = [f"{k}={p[k]}" for k in TITLE_PARAMS if k in p]
    parts += [f"{k}={v}" for k, v in p.items() if k not in TITLE_PARAMS]
    return f"group {group.id}: " + " ".join(parts)


def shown_columns(rows: list[dict]) -> list[tuple[str, str, str]]:
    """The columns that carry a value in some row (device and host always)."""
    return [
        c
        for c in COLUMNS
        if c[1] in ("device", "host") or any(r.get(c[1]) not in (None, "") for r in rows)
    ]


def heading(table: dict) -> str:
    """A group's short title: its number and main params (dataset, model, batch size, ...),
    then the settings that make it another workload than the plain one (a precision other
    than fp32, an optimizer other than SGD, a compile mode)."""
    p = table["params"]
    main = [f"{k}={p[k]}" for k in TITLE_PARAMS if k in p]
    main += [f"{k}={p[k]}" for k, plain in UNUSUAL.items() if p.get(k, plain) != plain]
    return f"group {table['id']}: " + " ".join(main)


def identity(table: dict) -> str:
    """A group's full workload, every param, for under its table."""
    return " ".join(f"{k}={v}" for k, v in table["params"].items())


def escape(text: str) -> str:
    """A Markdown table cell: no pipe, line break or HTML ends or reshapes it."""
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return " ".join(text.splitlines())


def row_cell(r: dict, key: str, fmt: str, memory_mixed: bool = False) -> str:
    """A table row's entry; repeated runs' throughput with its interval and level; the
    history baseline with the ratio to it and that ratio's interval and level."""
    if key == "samples_per_s" and r.get("samples_per_s_ci"):
        low, high = r["samples_per_s_ci"]
        interval = evidence.describe_interval((low, high, r["samples_per_s_ci_level"]))
        return f"{cell(r[key], fmt)} ({interval})"
    if key == "baseline_median" and r.get(key) is not None:
        return describe_baseline(r)
    if key == "peak_memory_mb" and memory_mixed and r[key] is not None:
        return f"{cell(r[key], fmt)} ({r['memory_method']})"
    return cell(r[key], fmt)


def describe_baseline(r: dict) -> str:
    """'31,900 (0.94× [0.90, 0.98] 99.8%)': the history median of the speed figure, the
    verdict's ratio of speeds and its interval with its level ('12.30 s (...)' for a time)."""
    median = r["baseline_median"]
    figure = (
        f"{median:,.0f}" if r["baseline_figure"] == Metrics.SAMPLES_PER_S else f"{median:.2f} s"
    )
    ratio = f"{r['baseline_ratio']:.2f}×"
    if r.get("baseline_ratio_ci"):
        low, high = r["baseline_ratio_ci"]
        upper = f"{high:.2f}" if high is not None and high < evidence.USEFUL_BOUND else "∞"
        ratio += f" [{low:.2f}, {upper}] {percent(r['baseline_ratio_ci_level'])}"
    return f"{figure} ({ratio})"


def percent(level: float) -> str:
    """A level with the decimals that keep it under 100% (99.9%, 99.996%)."""
    digits = 1
    while round(level * 100, digits) >= 100 and digits < 6:
        digits += 1
    return f"{level:.{digits}%}"


def terminal_rows(rows: list[dict]) -> list[dict]:
    """A group's rows as the terminal shows them: all, or past MAX_TERMINAL_ROWS the flagged
    ones and, up to that many, the others with the largest changes against their baseline,
    then the latest without one; in the table's order."""
    if len(rows) <= MAX_TERMINAL_ROWS:
        return rows
    flagged = [i for i, r in enumerate(rows) if r["flags"]]
    others = [i for i, r in enumerate(rows) if not r["flags"] and r["baseline_ratio"] is not None]
    others += [i for i, r in reversed(list(enumerate(rows))) if not (r["flags"] or i in others)]
    keep = set(flagged) | set(others[: max(0, MAX_TERMINAL_ROWS - len(flagged))])
    return [r for i, r in enumerate(rows) if i in keep]


def print_terminal(
    console: Console,
    groups: list[dict],
    findings: list[Finding],
    left_out: dict[str, int],
    quiet: bool = False,
    notes: list[str] = (),
) -> None:
    """The tables (none when quiet), what was left out, the notes, and the findings."""
    flagged = {f.group for f in findings}
    shown = (
        groups if len(groups) <= MAX_TERMINAL_GROUPS else [g for g in groups if g["id"] in flagged]
    )
    if quiet:
        shown = []
    for group in shown:
        mixed = group.get("memory_mixed", False)  # tables() sets it
        rows = terminal_rows(group["runs"])
        hidden = len(group["runs"]) - len(rows)
        caption = f"{hidden} more unflagged rows not shown (all are in report.md)"
        columns = shown_columns(group["runs"])
        under = identity(group) + (f"; {caption}" if hidden else "")
        under += f"\n{MEMORY_MIXED}" if mixed else ""
        table = Table(
            title=heading(group), title_justify="left", caption=under, caption_justify="left"
        )
        for name, _, _ in columns:
            table.add_column(name, overflow="fold")
        for r in rows:
            table.add_row(*(row_cell(r, k, fmt, mixed) for _, k, fmt in columns))
        console.print(table)
    if len(shown) < len(groups) and not quiet:
        console.print(
            f"{len(groups) - len(shown)} groups without findings not shown (all are in report.md)"
        )
    if left_out:
        console.print(f"left out (not finished): {describe_left_out(left_out)}")
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    if not findings:
        console.print("[green]no findings[/green]")
        return
    console.print(f"[bold]{len(findings)} finding(s)[/bold]")
    for f in findings:
        colour = "red" if f.severity == "error" else "yellow"
        console.print(
            f"[{colour}]{f.severity}[/{colour}] {f.category}/{f.kind} "
            f"{f.run_name or f.run_id} ({f.run_id[:8]}): {f.message}",
            markup=True,
            highlight=False,
        )


def markdown(
    groups: list[dict],
    findings: list[Finding],
    left_out: dict[str, int],
    plots: list[Path] | None,
    notes: list[str] = (),
    header: dict[str, str] | None = None,
    runs_url: str = "",
) -> str:
    """report.md: what was compared (`header`: what was selected, the baselines, the
    tolerances, the commits), the findings, then each group's table and picture, each run
    linked to its page in the MLflow UI when `runs_url` (the UI's address of the experiment's
    runs) is given; `plots` None for a report that carries no pictures (a CI job summary)."""
    lines = ["# Device comparison", ""]
    lines += [f"- **{k}**: {v}" for k, v in (header or {}).items()]
    lines += [""] if header else []
    lines += [f"{len(findings)} finding(s) in {sum(len(g['runs']) for g in groups)} runs.", ""]
    if left_out:
        lines += [f"Left out (not finished): {describe_left_out(left_out)}.", ""]
    if notes:
        lines += ["## Notes", ""]
        lines += [f"- {note}" for note in notes]
        lines.append("")
    if findings:
        lines += ["## Findings", ""]
        for f in findings:
            lines.append(
                f"- **{f.severity}** `{f.category}/{f.kind}` {f.run_name} (`{f.run_id}`): "
                f"{f.message}"
            )
        lines.append("")
    for group in groups:
        mixed = group.get("memory_mixed", False)
        columns = shown_columns(group["runs"])
        lines += [f"## {heading(group)}", ""]
        lines.append("| " + " | ".join(h for h, _, _ in columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for r in group["runs"]:
            cells = [escape(row_cell(r, k, fmt, mixed)) for _, k, fmt in columns]
            if runs_url:
                cells[0] = f"[{cells[0]}]({runs_url}{r['run_id']})"
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Workload: {escape(identity(group))}", ""]
        lines += [MEMORY_MIXED, ""] if mixed else []
        for plot in plots or []:
            if plot.stem in (f"group-{group['id']}", f"history-{group['id']}"):
                lines += [f"![{plot.stem}: {heading(group)}]({plot.name})", ""]
    drawn = {plot.stem for plot in plots or []}
    undrawn = [str(g["id"]) for g in groups if f"group-{g['id']}" not in drawn]
    if undrawn and plots is not None:
        lines += [
            f"No picture for group {', '.join(undrawn)}: compare draws the flagged groups first, "
            f"then groups with several devices, at most {MAX_PLOTTED_GROUPS} (none with "
            "--no-plots).",
            "",
        ]
    return "\n".join(lines)


def to_json(
    groups: list[dict], findings: list[Finding], left_out: dict[str, int], notes: list[str] = ()
) -> dict:
    return _finite(
        {
            "findings": [asdict(f) for f in findings],
            "groups": groups,
            "left_out": left_out,
            "notes": list(notes),
        }
    )


def _finite(value):
    """JSON has no NaN or Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def describe_left_out(left_out: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(left_out.items()))


def describe_unsourced(tests: list[RunSummary]) -> str:
    """One line for the test runs whose source run is not among the runs read."""
    if not tests:
        return ""
    names = ", ".join(
        f"{t.name or t.run_id} (source {t.tags.get(Tags.SOURCE_RUN_ID, '?')[:8]})" for t in tests
    )
    return f"judged without their source run, which is not among the runs read: {names}"
