"""Pictures, with matplotlib's Agg backend (imported only when something is drawn): a train
run's curves, a compare group's devices side by side, a sweep's throughput."""

from dataclasses import dataclass
from pathlib import Path

from pipeline.schema import Metrics


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(
    losses: list[float], epochs: list[tuple[int, float, float]], title_: str, path: Path
) -> None:
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
    fig.suptitle(title_, fontsize="medium")
    # Fixed margins: tight_layout would draw the figure once more only to measure it, a
    # third of the picture's cost, paid outside the epochs of every run.
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.87, wspace=0.15)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sweep(summary: dict, path: Path) -> None:
    """Throughput against batch size: a colour per device, a line style per workload (model,
    precision and width)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    workloads = sorted(
        {(r["model"], r["precision"], r["hidden"] or 0) for r in summary["rows"]}, key=str
    )
    styles = ["-", "--", ":", "-."]
    for c, device in enumerate(summary["devices"]):
        for w, (model, precision, hidden) in enumerate(workloads):
            points = sorted(
                (r["batch_size"], r["samples_per_s"][device])
                for r in summary["rows"]
                if (r["model"], r["precision"], r["hidden"] or 0) == (model, precision, hidden)
                and device in r["samples_per_s"]
            )
            if points:
                ax.plot(
                    [x for x, _ in points],
                    [y for _, y in points],
                    marker="o",
                    color=f"C{c}",
                    linestyle=styles[w % len(styles)],
                    label=f"{device}, {model} {precision}",
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
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@dataclass
class Series:
    """One run in a group's picture."""

    label: str
    train_loss: list[tuple[int, float]]  # (step, value), by step
    test_accuracy: list[tuple[int, float]]
    speed: float  # the value of the group's speed figure


def plot_group(title: str, series: list[Series], speed_figure: str, path: Path) -> None:
    """A group's devices side by side: per-batch train_loss and per-epoch test_accuracy
    overlaid, and each one's speed."""
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
    ax_loss.legend(fontsize="small")
    ax_speed.bar([s.label for s in series], [s.speed for s in series], color="tab:blue")
    throughput = speed_figure == Metrics.SAMPLES_PER_S
    ax_speed.set(
        title="training throughput" if throughput else f"{speed_figure} (lower is faster)",
        ylabel=speed_figure,
    )
    ax_speed.tick_params(axis="x", labelrotation=15, labelsize="small")
    fig.suptitle(title, fontsize="medium")
    # A fixed layout: tight_layout would draw the figure once more to measure it.
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.2, top=0.82, wspace=0.25)
    fig.savefig(path, dpi=80)
    plt.close(fig)
