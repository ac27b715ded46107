"""Pictures, with matplotlib's Agg backend (imported only when something is drawn): a train
run's curves, a compare group's devices side by side, a sweep's throughput."""

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.schema import Metrics

if TYPE_CHECKING:  # matplotlib is imported only when something is drawn
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def integer_ticks(axis: "Axis") -> None:
    """Whole numbers only on an axis that counts (epochs, commits)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def save(fig: "Figure", path: Path, dpi: int) -> None:
    """Write the picture and free it."""
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def plot_run(
    losses: list[float], epochs: list[tuple[int, float, float]], title_: str, path: Path
) -> None:
    """run_figure, written to `path`."""
    save(run_figure(losses, epochs, title_), path, dpi=90)


def run_figure(
    losses: list[float], epochs: list[tuple[int, float, float]], title_: str
) -> "Figure":
    """One train run's curves: every batch's loss; test accuracy and loss per epoch."""
    plt = pyplot()
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
    integer_ticks(ax_acc.xaxis)
    fig.suptitle(title_, fontsize="medium")
    # Fixed margins: tight_layout would draw the figure once more only to measure it, a
    # third of the picture's cost, paid outside the epochs of every run.
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.87, wspace=0.15)
    return fig


# What a sweep row's workload is besides its batch size (the x axis); a line each.
SWEEP_AXES = ("dataset", "model", "precision", "hidden", "optimizer", "compile")


def plot_sweep(summary: dict, path: Path) -> None:
    """sweep_figure, written to `path`."""
    fig = sweep_figure(summary)
    fig.tight_layout()
    save(fig, path, dpi=90)


def sweep_figure(summary: dict) -> "Figure":
    """Throughput against batch size: a colour per device, a line style per workload, each
    line named by its device and every axis that varies across the sweep's rows."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))

    def workload(r: dict) -> tuple:
        return tuple(r.get(k) for k in SWEEP_AXES)

    workloads = sorted({workload(r) for r in summary["rows"]}, key=str)
    varying = [i for i, k in enumerate(SWEEP_AXES) if len({w[i] for w in workloads}) > 1]
    styles = ["-", "--", ":", "-."]
    for c, device in enumerate(summary["devices"]):
        for n, w in enumerate(workloads):
            points = sorted(
                (r["batch_size"], r["samples_per_s"][device])
                for r in summary["rows"]
                if workload(r) == w and device in r["samples_per_s"]
            )
            if points:
                named = " ".join(f"{SWEEP_AXES[i]}={w[i]}" for i in varying)
                ax.plot(
                    [x for x, _ in points],
                    [y for _, y in points],
                    marker="o",
                    color=f"C{c}",
                    linestyle=styles[n % len(styles)],
                    label=f"{device}, {named}" if named else device,
                )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(
        xlabel="batch size",
        ylabel="steady-state samples/s",
        title="sweep: throughput against workload size",
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return fig


@dataclass
class Series:
    """One device and host in a group's picture."""

    label: str
    train_loss: list[tuple[int, float]]  # (step, value), by step
    test_accuracy: list[tuple[int, float]]
    speed: float  # the value of the group's speed figure
    speed_ci: tuple[float, float] | None = None  # its repeats' interval (the table row's)
    cpu_of: str = ""  # a CPU run: its host, whose reference line it draws


def plot_group(title: str, series: list[Series], speed_figure: str, path: Path) -> None:
    """group_figure, written to `path`."""
    save(group_figure(title, series, speed_figure), path, dpi=80)


def group_figure(title: str, series: list[Series], speed_figure: str) -> "Figure":
    """A group's devices side by side: per-batch train_loss and per-epoch test_accuracy
    overlaid, and each one's speed with its repeats' interval, the CPU of each host a
    reference line."""
    plt = pyplot()
    fig, (ax_loss, ax_acc, ax_speed) = plt.subplots(1, 3, figsize=(13, 3.6))
    for s in series:
        for ax, points, marker in (
            (ax_loss, s.train_loss, None),
            (ax_acc, s.test_accuracy, "o"),
        ):
            ax.plot([x for x, _ in points], [y for _, y in points], label=s.label, marker=marker)
    ax_loss.set(title="train_loss per batch", xlabel="batch", ylabel="loss")
    ax_acc.set(title="test_accuracy per epoch", xlabel="epoch", ylabel="accuracy")
    ax_acc.set_ylim(-0.03, 1.03)
    integer_ticks(ax_acc.xaxis)
    ax_loss.legend(fontsize="small")
    errors = [
        (s.speed - s.speed_ci[0], s.speed_ci[1] - s.speed) if s.speed_ci else (0.0, 0.0)
        for s in series
    ]
    ax_speed.bar(
        [s.label for s in series],
        [s.speed for s in series],
        yerr=list(zip(*errors, strict=True)) if any(s.speed_ci for s in series) else None,
        capsize=4,
        color="tab:blue",
    )
    for n, s in enumerate(x for x in series if x.cpu_of):
        ax_speed.axhline(
            s.speed, color="tab:red", linestyle=("--", ":", "-.")[n % 3], label=f"CPU on {s.cpu_of}"
        )
    if any(s.cpu_of for s in series):
        ax_speed.legend(fontsize="small")
    throughput = speed_figure == Metrics.SAMPLES_PER_S
    ax_speed.set(
        title="training throughput" if throughput else f"{speed_figure} (lower is faster)",
        ylabel=speed_figure,
    )
    ax_speed.tick_params(axis="x", labelrotation=15, labelsize="small")
    fig.suptitle(title, fontsize="medium")
    # A fixed layout: tight_layout would draw the figure once more to measure it.
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.2, top=0.82, wspace=0.25)
    return fig


def plot_history(
    title: str, lines: dict[str, list[tuple[int, str, float]]], speed_figure: str, path: Path
) -> None:
    """history_figure, written to `path`."""
    save(history_figure(title, lines, speed_figure), path, dpi=80)


def history_figure(
    title: str, lines: dict[str, list[tuple[int, str, float]]], speed_figure: str
) -> "Figure":
    """A group's speed over the commits its runs record, oldest first, a line per device and
    host (`lines`: label -> its runs' (start time in ms, commit or '', speed figure)); over
    the runs' start times when a run has no commit."""
    from datetime import UTC, datetime

    from matplotlib.ticker import FuncFormatter

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    points = sorted(p for line in lines.values() for p in line)  # by start time
    by_commit = all(commit for _, commit, _ in points)
    order = {c: i for i, c in enumerate(dict.fromkeys(commit for _, commit, _ in points))}

    def x(start: int, commit: str):
        return order[commit] if by_commit else datetime.fromtimestamp(start / 1000, UTC)

    for label, line in lines.items():
        line = sorted(line)
        ax.plot([x(t, c) for t, c, _ in line], [v for _, _, v in line], marker="o", label=label)
    if by_commit:
        integer_ticks(ax.xaxis)
        names = list(order)
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _: names[int(v)][:8] if 0 <= v < len(names) else "")
        )
        ax.set_xlabel("commit (oldest first)")
    else:
        ax.set_xlabel("run start (UTC)")
        fig.autofmt_xdate()
    throughput = speed_figure == Metrics.SAMPLES_PER_S
    ax.set(
        title=title,
        ylabel=speed_figure if throughput else f"{speed_figure} (lower is faster)",
    )
    ax.tick_params(axis="x", labelrotation=30, labelsize="small")
    ax.legend(fontsize="small")
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.25, top=0.9)
    return fig
