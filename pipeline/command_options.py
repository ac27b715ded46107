"""The options one command has of its own, each in its --help panel: compare's selection,
judging and reports, sweep's grid, doctor's report; and the program's --version. The options
several commands share are pipeline.config's."""

from pathlib import Path
from typing import Annotated, Literal

import typer

import pipeline
from pipeline.config import (
    WORKLOAD_PANEL,
    compile_list,
    dataset_list,
    optimizer_list,
    precision_list,
    whole_numbers,
)
from pipeline.console import out
from pipeline.run_options import OUTPUT_PANEL, TRACKING_PANEL

SELECTION_PANEL, JUDGING_PANEL, GRID_PANEL = "Selection", "Judging", "Grid"


def print_version(asked: bool) -> None:
    """--version: the package's version (what runs record as pipeline.version), then exit 0;
    also from a checkout that is not installed."""
    if asked:
        out.print(f"pipeline {pipeline.__version__}", markup=False, highlight=False)
        raise typer.Exit()


Version = Annotated[
    bool,
    typer.Option(
        "--version", is_eager=True, callback=print_version, help="Print the version and exit"
    ),
]

# --- compare ---------------------------------------------------------------------------------

RunIds = Annotated[
    list[str] | None,
    typer.Option(
        "--run-id",
        rich_help_panel=SELECTION_PANEL,
        help="Judge only these runs (repeat the option)",
    ),
]
Filter = Annotated[
    str,
    typer.Option(
        "--filter",
        rich_help_panel=SELECTION_PANEL,
        help="MLflow search filter, e.g. params.batch_size = '64'",
        show_default="none: every finished run",
    ),
]
Latest = Annotated[
    bool,
    typer.Option(
        "--latest",
        rich_help_panel=SELECTION_PANEL,
        help="Judge only the latest run of each group, device and host",
    ),
]
SpeedTolerance = Annotated[
    float,
    typer.Option(
        min=0.0, max=1.0, rich_help_panel=JUDGING_PANEL, help="Allowed slowdown, a fraction"
    ),
]
AccuracyTolerance = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        rich_help_panel=JUDGING_PANEL,
        help="Allowed accuracy difference, absolute",
    ),
]
History = Annotated[
    int,
    typer.Option(
        min=1, rich_help_panel=JUDGING_PANEL, help="Earlier runs that make a run's baseline"
    ),
]
FailOn = Annotated[
    Literal["error", "warning", "never"],
    typer.Option(
        rich_help_panel=JUDGING_PANEL,
        help="The least severe finding that makes the command exit 1: error (confirmed "
        "findings only), warning (any finding), never",
    ),
]
NoFail = Annotated[
    bool,
    typer.Option("--no-fail", rich_help_panel=JUDGING_PANEL, help="The same as --fail-on never"),
]
OutputJson = Annotated[
    Path | None,
    typer.Option(rich_help_panel=OUTPUT_PANEL, help="Write the findings as JSON"),
]
OutputJunit = Annotated[
    Path | None,
    typer.Option(
        rich_help_panel=OUTPUT_PANEL,
        help="Write JUnit XML: a test case per group and device, findings fail",
    ),
]
OutputDir = Annotated[
    Path | None,
    typer.Option(rich_help_panel=OUTPUT_PANEL, help="Also write report.md and the plots here"),
]
Plots = Annotated[
    bool,
    typer.Option(
        "--plots/--no-plots",
        rich_help_panel=OUTPUT_PANEL,
        help="Draw the flagged groups (at most 6) into the report",
    ),
]

# --- sweep: each axis of the grid a comma-separated list --------------------------------------


def axis(text: str, callback=None):
    """A grid axis: a comma-separated list, checked by `callback`."""
    return Annotated[str, typer.Option(rich_help_panel=GRID_PANEL, callback=callback, help=text)]


Devices = axis("Comma-separated devices; those this machine lacks are skipped")
BatchSizes = axis("Comma-separated batch sizes", whole_numbers)
Widths = axis("Comma-separated widths of the mlp", whole_numbers)
Models = axis("Comma-separated models: mlp, cnn, vit, package.module:factory")
Precisions = axis("Comma-separated: fp32,tf32,bf16,fp16", precision_list)
Datasets = axis(
    "Comma-separated data sets (as train's --dataset), each in its default order", dataset_list
)
Optimizers = axis("Comma-separated: sgd,adamw", optimizer_list)
CompileModes = axis(
    "Comma-separated torch.compile modes: none (eager), default, reduce-overhead, max-autotune",
    compile_list,
)
Repeats = Annotated[
    int,
    typer.Option(
        min=1,
        rich_help_panel=GRID_PANEL,
        help="Runs of each cell, each in a fresh process (compare takes their median)",
    ),
]
Strict = Annotated[
    bool,
    typer.Option(
        "--strict",
        rich_help_panel=GRID_PANEL,
        help="A listed device this machine lacks is an error",
    ),
]
Resume = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=TRACKING_PANEL,
        help="Parent run id of a sweep to finish; its grid is reused",
    ),
]

# --- doctor ----------------------------------------------------------------------------------

ChecksJson = Annotated[
    Path | None, typer.Option(rich_help_panel=OUTPUT_PANEL, help="Write the checks as JSON")
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        rich_help_panel=OUTPUT_PANEL,
        help="List every check, the passing ones too (by default only those that failed, "
        "raised or are unsupported)",
    ),
]
DoctorNoFail = Annotated[
    bool, typer.Option("--no-fail", help="Exit 0 even when a check fails or raises")
]
ModelUri = Annotated[
    str,
    typer.Option(
        rich_help_panel=WORKLOAD_PANEL, help="A model logged by train, e.g. runs:/<run id>/model"
    ),
]
