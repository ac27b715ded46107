"""The journeys on the lowest MLflow the package declares (pyproject: mlflow>=LOW), in a fresh
virtual environment: everything else as constraints.txt pins it.

    python benchmarks/mlflow_lower_bound.py            # mlflow==3.0.0, into a temporary venv
    python benchmarks/mlflow_lower_bound.py --keep DIR # the venv in DIR, kept for a look

Each journey runs as a user runs it, in an empty folder with nothing of MLFLOW_* set, and
prints its exit code and its last line: train (registering the model), test from the
registered model, compare, doctor, a small sweep, `mlflow run` of the project, and the model
loaded back with mlflow.pytorch.load_model. Exit code 0 when every journey passed.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMALL = [
    "--dataset",
    "synthetic",
    "--train-size",
    "640",
    "--test-size",
    "128",
    "--epochs",
    "2",
    "--lr",
    "0.05",
]


def lowest_mlflow() -> str:
    declared = re.search(r'"mlflow>=([\d.]+)', (ROOT / "pyproject.toml").read_text())
    return declared.group(1)


def install(venv: Path, version: str) -> Path:
    """A fresh venv with the project, MLflow at `version` and the rest as constraints.txt pins
    it (MLflow's own packages left free for pip to match that version)."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pins = [
        line
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if not line.lower().startswith(("mlflow", "#")) and line.strip()
    ]
    constraints = venv / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "-e", str(ROOT), f"mlflow=={version}",
         "-c", str(constraints)],
        check=True,
    )  # fmt: skip
    return python


def journeys(python: Path, folder: Path) -> list[tuple[str, int, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_"))}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PATH"] = f"{python.parent}:{env['PATH']}"
    pipe = [str(python), "-m", "pipeline"]
    pairs = zip(SMALL[::2], SMALL[1::2], strict=True)
    project = [a for o, v in pairs for a in ("-P", f"{o[2:].replace('-', '_')}={v}")]
    project += ["-P", "device=cpu"]
    steps = [
        ("train", [*pipe, "train", "--device", "cpu", *SMALL, "--register-model", "low"]),
        ("test models:/low/1", [*pipe, "test", "--model-uri", "models:/low/1"]),
        ("compare", [*pipe, "compare"]),
        ("doctor", [*pipe, "doctor", "--device", "cpu"]),
        (
            "sweep",
            [*pipe, "sweep", "--devices", "cpu", "--batch-sizes", "64", "--hidden", "32", *SMALL],
        ),
        ("mlflow run", ["mlflow", "run", str(ROOT), "--env-manager", "local", *project]),
        (
            "load_model",
            [
                str(python),
                "-c",
                "import mlflow, torch; m = mlflow.pytorch.load_model('models:/low/1');"
                "print(m(torch.rand(3, 1, 28, 28)).shape)",
            ],
        ),
    ]
    done = []
    for name, cmd in steps:
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        done.append((name, proc.returncode, lines[-1] if lines else ""))
        print(f"{name:20} exit {proc.returncode}  {done[-1][2][:150]}", flush=True)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=lowest_mlflow())
    parser.add_argument("--keep", type=Path, help="make the venv here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        venv = args.keep or Path(tmp) / "venv"
        python = install(venv, args.version)
        found = subprocess.run([python, "-c", "import mlflow; print(mlflow.__version__)"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        print(f"mlflow {found} in {venv}")
        folder = Path(tmp) / "empty"
        folder.mkdir()
        results = journeys(python, folder)
    sys.exit(0 if all(code == 0 for _, code, _ in results) else 1)


if __name__ == "__main__":
    main()
