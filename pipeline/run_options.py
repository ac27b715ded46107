"""Where runs go and what is printed: the options of every command that logs (defined once;
pipeline.config re-exports them)."""

from typing import Annotated

import typer

# The panels of `--help`.
TRACKING_PANEL, OUTPUT_PANEL = "Tracking", "Output"

# --- where runs go, and what is printed: every command that logs takes these ----------------

TrackingUri = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=TRACKING_PANEL,
        envvar="MLFLOW_TRACKING_URI",
        show_envvar=True,
        help="MLflow tracking URI",
        show_default="MLflow's own, sqlite:///mlflow.db in this folder",
    ),
]
Experiment = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=TRACKING_PANEL,
        envvar="MLFLOW_EXPERIMENT_NAME",
        show_envvar=True,
        help="MLflow experiment",
        show_default="the one `mlflow run` chose, else MLflow's Default",
    ),
]
Host = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=TRACKING_PANEL,
        envvar="PIPELINE_HOST",
        show_envvar=True,
        help="Host name to record",
        show_default="hostname",
    ),
]
RunName = Annotated[
    str | None,
    typer.Option(rich_help_panel=TRACKING_PANEL, help="Run name", show_default="what the run is"),
]
RegisterModel = Annotated[
    str | None,
    typer.Option(
        rich_help_panel=TRACKING_PANEL,
        help="Register the trained model under this name in MLflow's model registry",
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", rich_help_panel=OUTPUT_PANEL, help="No progress, tables or per-epoch lines"
    ),
]

ProfileBatches = Annotated[
    int,
    typer.Option(
        rich_help_panel=OUTPUT_PANEL,
        min=0,
        help="Training batches profiled after the first epoch, outside the timed epochs, on "
        "a copy of the model: the operation table operations.json (0: none)",
    ),
]
ProfileTrace = Annotated[
    bool,
    typer.Option(
        "--profile-trace",
        rich_help_panel=OUTPUT_PANEL,
        help="Also log the profiled window as trace.json (for Perfetto or Chrome's tracing)",
    ),
]
SystemMetrics = Annotated[
    bool,
    typer.Option(
        rich_help_panel=OUTPUT_PANEL, help="Log MLflow's system metrics (CPU, memory, GPU)"
    ),
]
SystemMetricsInterval = Annotated[
    float,
    typer.Option(
        rich_help_panel=TRACKING_PANEL,
        min=0.1,
        help="Seconds between system-metrics samples (each costs the training thread a few "
        "ms: at 1 s, about 5% of an epoch on 2 cores)",
    ),
]
