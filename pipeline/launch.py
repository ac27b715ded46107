"""Where `train` and `test` run: a program without the command line.

Once Typer has parsed and checked the options, `pipeline train` and `pipeline test` replace
their program (exec) with `python -m pipeline.launch STAGE`, the options in its environment
as JSON. The process id stays, so signals, exit codes and `mlflow run` see no difference, but
the program that trains never loads Typer, click or pydantic (which Typer loads to convert
options): 8 MiB less in the process being measured (benchmarks/cli_memory.py). The CLI
imports this module before the exec, so it imports neither those nor torch at the top.
"""

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.console import err
from pipeline.errors import UserError

# Windows has no exec that keeps the process; the tests set it to run the stage in theirs.
IN_PROCESS = os.name == "nt"
OPTIONS_VAR = "PIPELINE_STAGE_OPTIONS"


def start(stage: str, options: dict) -> None:
    """Run `stage` (train or test) with the CLI's options, as a fresh program in this process;
    in this program itself when IN_PROCESS. Exits with the stage's status when it is not 0."""
    if IN_PROCESS:
        code = run(stage, options)
        if code:
            sys.exit(code)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # In the environment, not on the command line: `ps` shows every user the command line,
    # and the tracking URI may hold a password.
    env = {**os.environ, OPTIONS_VAR: json.dumps(options, default=str)}
    os.execve(sys.executable, [sys.executable, "-m", "pipeline.launch", stage], env)


def run(stage: str, options: dict) -> int:
    """Run `stage` in this program; return its exit status."""
    from pipeline.writer import Writer

    writer = Writer()  # it imports MLflow in a process of its own while this one imports torch
    return exit_status(lambda: STAGES[stage](options, writer))


def exit_status(stage: Callable[[], object]) -> int:
    """Run a stage; a failure is one line on stderr and the exit status it implies."""
    from pipeline import stages
    from pipeline.writer import TrackingError

    try:
        stage()
    except UserError as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        return 2
    except stages.Interrupted as e:
        err.print(f"{e}: run ended as KILLED, metrics logged so far kept")
        return e.code
    except stages.Diverged as e:
        err.print(f"error: {e}; run ended as FAILED")
        return 1
    except TrackingError as e:
        err.print(f"error: {e}", markup=False)
        return 1
    return 0


def _train(o: dict, writer) -> str:
    from pipeline import data, stages

    cfg = stages.TrainConfig(
        device=o["device"],
        data=data.DataSpec(
            o["dataset"], Path(o["data_dir"]), o["seed"], o["train_size"], o["test_size"]
        ),
        hidden=o["hidden"],
        layers=o["layers"],
        epochs=o["epochs"],
        batch_size=o["batch_size"],
        lr=o["lr"],
        seed=o["seed"],
        loader=o["loader"],
        target_accuracy=o["target_accuracy"],
        system_metrics=o["system_metrics"] and o["system_metrics_interval"],
    )
    return stages.train(cfg, _target(o), writer, o["quiet"])


def _test(o: dict, writer) -> str:
    from pipeline import stages

    return stages.test(
        o["model_uri"],
        o["device"],
        Path(o["data_dir"]),
        o["batch_size"],
        _target(o),
        writer,
        o["quiet"],
    )


def _target(o: dict):
    from pipeline import stages

    return stages.Target(o["experiment"], o["tracking_uri"], o["run_name"], o["host"])


STAGES = {"train": _train, "test": _test}


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], json.loads(os.environ.pop(OPTIONS_VAR))))
