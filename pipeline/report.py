"""What `compare` shows: terminal tables, a Markdown report, JSON, and plots."""

import math
from dataclasses import asdict
from pathlib import Path

from mlflow import MlflowClient
from rich.console import Console
from rich.table import Table

from pipeline.compare import (
    Finding,
    Group,
    RunSummary,
    Selection,
    describe_left_out,
    latest_cpu,
    speed_ratio,
)
from pipeline.schema import Metrics, Params

# (title, row key, format) of each column, in the terminal and in Markdown alike.
COLUMNS = [
    ("device", "device", "{}"),
    ("host", "host", "{}"),
    ("device name", "device_name", "{}"),
    ("wall s", "wall_time_s", "{:.2f}"),
    ("train s", "train_time_s", "{:.2f}"),
    ("samples/s", "samples_per_s", "{:,.0f}"),
    ("vs cpu", "speed_vs_cpu", "{:.2f}×"),
    ("to target s", "time_to_target_s", "{:.2f}"),
    ("test acc", "test_accuracy", "{:.1%}"),
    ("test loss", "test_loss", "{:.4f}"),
    ("parity", "parity_argmax_agreement", "{:.1%}"),
    ("flags", "flags", "{}"),
]
TITLE_PARAMS = (Params.DATASET, Params.MODEL, Params.BATCH_SIZE, Params.LR, Params.EPOCHS)
MAX_PLOTTED_GROUPS = 6
MAX_TERMINAL_GROUPS = 20


def row(run: RunSummary, group: Group, findings: list[Finding]) -> dict:
    cpu = latest_cpu(group, run.host)
    m = run.metrics
    return {
        "run_id": run.run_id,
        "run_name": run.name,
        "device": run.device,
        "device_type": run.device_type,
        "host": run.host,
        "device_name": run.device_name,
        "wall_time_s": m.get(Metrics.WALL_TIME_S),
        "train_time_s": m.get(Metrics.TRAIN_TIME_S),
        "samples_per_s": m.get(Metrics.SAMPLES_PER_S),
        "speed_vs_cpu": speed_ratio(run, cpu) if cpu else None,
        "time_to_target_s": m.get(Metrics.TIME_TO_TARGET_S),
        "test_accuracy": m.get(Metrics.TEST_ACCURACY),
        "test_loss": m.get(Metrics.TEST_LOSS),
        "parity_argmax_agreement": m.get(Metrics.PARITY_ARGMAX_AGREEMENT),
        "flags": ", ".join(sorted({f.kind for f in findings if f.run_id == run.run_id})),
    }


def tables(selection: Selection, groups: list[Group], findings: list[Finding]) -> list[dict]:
    """Each group that holds a judged run: its params and one row per judged run."""
    out = []
    for group in groups:
        judged = [r for r in group.runs if r.run_id in selection.judged]
        if judged:
            out.append(
                {
                    "id": group.id,
                    "title": title(group),
                    "params": group.params,
                    "runs": [row(r, group, findings) for r in judged],
                }
            )
    return out


def title(group: Group) -> str:
    p = group.params
    parts = [f"{k}={p[k]}" for k in TITLE_PARAMS if k in p]
    parts += [f"{k}={v}" for k, v in p.items() if k not in TITLE_PARAMS]
    return f"group {group.id}: " + " ".join(parts)


def cell(value, fmt: str) -> str:
    if value is None or value == "":
        return "" if fmt == "{}" else "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return fmt.format(value)


def print_terminal(
    console: Console, groups: list[dict], findings: list[Finding], left_out: dict[str, int]
) -> None:
    flagged = {f.group for f in findings}
    shown = (
        groups if len(groups) <= MAX_TERMINAL_GROUPS else [g for g in groups if g["id"] in flagged]
    )
    for group in shown:
        table = Table(title=group["title"], title_justify="left")
        for heading, _, _ in COLUMNS:
            table.add_column(heading, overflow="fold")
        for r in group["runs"]:
            table.add_row(*(cell(r[key], fmt) for _, key, fmt in COLUMNS))
        console.print(table)
    if len(shown) < len(groups):
        console.print(
            f"{len(groups) - len(shown)} groups without findings not shown (all are in report.md)"
        )
    if left_out:
        console.print(f"left out (not finished): {describe_left_out(left_out)}")
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
    groups: list[dict], findings: list[Finding], left_out: dict[str, int], plots: list[Path]
) -> str:
    lines = ["# Device comparison", ""]
    lines += [f"{len(findings)} finding(s) in {sum(len(g['runs']) for g in groups)} runs.", ""]
    if left_out:
        lines += [f"Left out (not finished): {describe_left_out(left_out)}.", ""]
    if findings:
        lines += ["## Findings", ""]
        for f in findings:
            lines.append(
                f"- **{f.severity}** `{f.category}/{f.kind}` {f.run_name} (`{f.run_id}`): "
                f"{f.message}"
            )
        lines.append("")
    for group in groups:
        lines += [f"## {group['title']}", ""]
        lines.append("| " + " | ".join(h for h, _, _ in COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
        for r in group["runs"]:
            lines.append("| " + " | ".join(cell(r[k], fmt) for _, k, fmt in COLUMNS) + " |")
        lines.append("")
        for plot in plots:
            if plot.stem == f"group-{group['id']}":
                lines += [f"![{group['title']}]({plot.name})", ""]
    return "\n".join(lines)


def to_json(groups: list[dict], findings: list[Finding], left_out: dict[str, int]) -> dict:
    return _finite(
        {
            "findings": [asdict(f) for f in findings],
            "groups": groups,
            "left_out": left_out,
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


def plot_groups(
    client: MlflowClient,
    groups: list[Group],
    tables_: list[dict],
    findings: list[Finding],
    out_dir: Path,
) -> list[Path]:
    """One PNG per group worth a picture (flagged first, then several devices): the latest run of
    each device and host, with its per-batch train_loss, test_accuracy per epoch, throughput."""
    plt = _pyplot()
    flagged = {f.group for f in findings}
    shown = {t["id"] for t in tables_}
    by_id = {g.id: g for g in groups}
    candidates = [
        by_id[i] for i in shown if i in flagged or len({r.device_type for r in by_id[i].runs}) > 1
    ]
    candidates.sort(key=lambda g: (g.id not in flagged, g.id))
    paths = []
    for group in candidates[:MAX_PLOTTED_GROUPS]:
        latest: dict[tuple[str, str], RunSummary] = {}
        for r in group.runs:
            latest[(r.device, r.host)] = r
        fig, (ax_loss, ax_acc, ax_speed) = plt.subplots(1, 3, figsize=(16, 4.5))
        labels, speeds = [], []
        for (device, host), r in sorted(latest.items()):
            label = f"{device} @ {host}"
            for ax, key in ((ax_loss, Metrics.TRAIN_LOSS), (ax_acc, Metrics.TEST_ACCURACY)):
                history = client.get_metric_history(r.run_id, key)
                ax.plot(
                    [m.step for m in history],
                    [m.value for m in history],
                    label=label,
                    marker="o" if key == Metrics.TEST_ACCURACY else None,
                    linewidth=1,
                )
            labels.append(label)
            speeds.append(r)
        ax_loss.set(title="train_loss per batch", xlabel="batch", ylabel="loss")
        ax_acc.set(title="test_accuracy per epoch", xlabel="epoch", ylabel="accuracy")
        ax_acc.set_ylim(-0.03, 1.03)
        key = next(
            k
            for k in (Metrics.SAMPLES_PER_S, Metrics.TRAIN_TIME_S, Metrics.WALL_TIME_S, "")
            if not k or all(k in r.metrics for r in speeds)
        )
        ax_speed.bar(labels, [r.metrics.get(key, 0.0) for r in speeds], color="tab:blue")
        ax_speed.set(
            title="training throughput"
            if key == Metrics.SAMPLES_PER_S
            else f"{key} (lower is faster)",
            ylabel=key,
        )
        ax_speed.tick_params(axis="x", labelrotation=20)
        for ax in (ax_loss, ax_acc):
            ax.legend(fontsize="small")
        fig.suptitle(title(group), fontsize="medium")
        fig.tight_layout()
        path = out_dir / f"group-{group.id}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_run(
    losses: list[float], epochs: list[tuple[int, float, float]], title_: str, path: Path
) -> None:
    """One train run's curves: every batch's loss; test accuracy and loss per epoch."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(range(len(losses)), losses, linewidth=0.8, label="train_loss (batch)")
    steps_per_epoch = len(losses) / max(len(epochs), 1)
    ax_loss.plot(
        [e * steps_per_epoch - 1 for e, _, _ in epochs],
        [loss for _, _, loss in epochs],
        marker="o",
        label="test_loss (epoch end)",
    )
    ax_loss.set(title="loss", xlabel="batch")
    ax_loss.legend(fontsize="small")
    ax_acc.plot([e for e, _, _ in epochs], [a for _, a, _ in epochs], marker="o")
    ax_acc.set(title="test_accuracy", xlabel="epoch")
    ax_acc.set_ylim(-0.03, 1.03)
    fig.suptitle(title_, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sweep(summary: dict, path: Path) -> None:
    """Throughput against batch size: a colour per device, a line style per width."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    widths = sorted({r["hidden"] for r in summary["rows"]})
    styles = ["-", "--", ":", "-."]
    for c, device in enumerate(summary["devices"]):
        for w, hidden in enumerate(widths):
            points = sorted(
                (r["batch_size"], r["samples_per_s"][device])
                for r in summary["rows"]
                if r["hidden"] == hidden and device in r["samples_per_s"]
            )
            if points:
                ax.plot(
                    [x for x, _ in points],
                    [y for _, y in points],
                    marker="o",
                    color=f"C{c}",
                    linestyle=styles[w % len(styles)],
                    label=f"{device}, hidden {hidden}",
                )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(
        xlabel="batch size",
        ylabel="steady-state samples/s",
        title="sweep: throughput against workload size",
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
