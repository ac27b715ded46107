"""Identical training runs on this machine, back to back, then `compare`: a clean gate or not.

Each try trains the same workload RUNS times as separate `python -m pipeline train`
processes in a fresh folder (the sqlite store a user gets there), then runs
`python -m pipeline compare` with no selection, so every run is judged against those before
it. A try is clean when compare exits 0 with no finding.

    python benchmarks/identical_runs.py                # 5 tries of 6 runs
    python benchmarks/identical_runs.py --tries 1 --train-size 640
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = 6


def pipeline(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_"))}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def identical_runs(folder: Path, train_args: list[str], runs: int = RUNS) -> dict:
    """Train `runs` identical runs in `folder`, then compare them: its exit code, findings,
    notes and the runs' samples/s."""
    for _ in range(runs):
        done = pipeline(folder, "train", *train_args)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
    report = folder / "findings.json"
    done = pipeline(folder, "compare", "--quiet", "--no-plots", "--output-json", str(report))
    found = json.loads(report.read_text())
    (group,) = found["groups"]
    return {
        "exit_code": done.returncode,
        "findings": found["findings"],
        "notes": found["notes"],
        "samples_per_s": [r["samples_per_s"] for r in group["runs"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--train-size", default="6400")
    parser.add_argument("--epochs", default="6")
    args = parser.parse_args()
    train_args = ["--dataset", "synthetic", "--train-size", args.train_size, "--test-size", "640"]
    train_args += ["--lr", "0.05"]  # so that the loss falls in a few epochs of synthetic data
    train_args += ["--epochs", args.epochs, "--data-dir", tempfile.mkdtemp(prefix="data-")]
    clean = 0
    for i in range(args.tries):
        with tempfile.TemporaryDirectory(prefix="identical-") as folder:
            result = identical_runs(Path(folder), train_args)
        speeds = result["samples_per_s"]
        spread = max(speeds) / min(speeds) - 1
        ok = result["exit_code"] == 0 and not result["findings"]
        clean += ok
        print(
            f"try {i + 1}: exit {result['exit_code']}, {len(result['findings'])} findings, "
            f"{len(result['notes'])} notes; samples/s {min(speeds):,.0f}–{max(speeds):,.0f} "
            f"(spread {spread:.0%})"
        )
        for f in result["findings"]:
            print(f"  {f['severity']} {f['kind']}: {f['message']}")
    print(f"{clean} of {args.tries} tries clean")


if __name__ == "__main__":
    main()
