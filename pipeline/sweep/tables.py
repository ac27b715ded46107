"""What a sweep shows: the terminal table of each workload's samples/s on each device (with
the speed-up over the CPU, peak memory and energy), and sweep.md, the same table in Markdown
with where each accelerator starts to beat the CPU. Plain data in (the stage's summary),
text out."""

from rich.table import Table

from pipeline.schema import MEMORY_MIXED

SWEEP_KEYS = ("model", "precision", "dataset", "optimizer", "compile", "hidden", "batch_size")
HEADINGS = ("model", "precision", "data", "optimizer", "compile", "hidden", "batch")


def memory_methods(summary: dict) -> set[str]:
    """How the table's peak-memory figures were measured (short names)."""
    return {m for row in summary["rows"] for m in row.get("memory_method", {}).values()}


def cells(row: dict, device_names: list[str], sep: str = "\n", label: bool = False) -> list[str]:
    """One table row's entries: samples/s, with the speed-up over the CPU where there is one,
    then peak memory (`label`: followed by how it was measured, for a table that mixes
    methods) and energy where the run measured them."""
    out = []
    for d in device_names:
        speed, up = row["samples_per_s"].get(d), row["speedup_vs_cpu"].get(d)
        if speed is None:
            out.append("-")
            continue
        costs = []
        if (memory := row.get("peak_memory_mb", {}).get(d)) is not None:
            method = row.get("memory_method", {}).get(d, "unlabelled")
            costs.append(f"{memory:,.0f} MiB" + (f" ({method})" if label else ""))
        if (energy := row.get("energy_j", {}).get(d)) is not None:
            costs.append(f"{energy:,.0f} J")
        text = f"{speed:,.0f}" + (f" ({up:.2f}×)" if up else "")
        out.append(sep.join([text, " · ".join(costs)]) if costs else text)
    return out


def workload_cells(row: dict) -> list[str]:
    return ["-" if row.get(k) is None else str(row[k]) for k in SWEEP_KEYS]


def sweep_table(summary: dict) -> Table:
    title = "sweep: steady-state samples/s (speed-up over the CPU), peak memory, energy"
    table = Table(title=title)
    for heading in (*HEADINGS, *summary["devices"]):
        table.add_column(heading)
    label = len(memory_methods(summary)) > 1
    for row in summary["rows"]:
        table.add_row(*workload_cells(row), *cells(row, summary["devices"], label=label))
    if label:
        table.caption = MEMORY_MIXED
    return table


def sweep_markdown(summary: dict) -> str:
    lines = ["# Sweep", "", "Steady-state training samples/s (speed-up over the CPU); peak memory"]
    lines += ["and energy where the run measured them.", ""]
    lines.append("| " + " | ".join((*HEADINGS, *summary["devices"])) + " |")
    lines.append("|" + "---|" * (len(HEADINGS) + len(summary["devices"])))
    label = len(memory_methods(summary)) > 1
    for row in summary["rows"]:
        entries = [*workload_cells(row), *cells(row, summary["devices"], "<br>", label)]
        lines.append("| " + " | ".join(entries) + " |")
    if label:
        lines += ["", MEMORY_MIXED]
    lines += ["", "## Crossover", ""]
    lines += crossover_lines(summary) or ["No accelerator in this sweep."]
    return "\n".join(lines) + "\n"


def crossover_lines(summary: dict) -> list[str]:
    """Where each accelerator starts to beat the CPU, for each model and precision."""
    out = []
    for c in summary["crossover"]:
        setup = [c.get("dataset"), c.get("optimizer", "sgd"), c.get("compile", "none")]
        setup = [v for v in setup if v and v not in ("sgd", "none")]
        what = f"- {c['device']}, {c['model']} {' '.join([c['precision'], *setup])}"
        if c["batch_size"] is None:
            out.append(f"{what}: never in the range swept")
            continue
        width = f"hidden {c['hidden']}, " if c["hidden"] is not None else ""
        out.append(
            f"{what}: beats the CPU from {width}batch {c['batch_size']} on "
            f"({c['speedup_vs_cpu']:.2f}×)"
        )
    return out
