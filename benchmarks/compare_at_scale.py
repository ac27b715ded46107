"""How long `pipeline compare` takes over many runs in a sqlite store.

    python benchmarks/compare_at_scale.py --runs 1000

Logs the runs straight through MlflowClient (10 params, summary metrics, 10 epochs of test
accuracy and loss, a 1,000-point train_loss history each), then times one `compare` in a fresh
process, as a user would run it. One group in ten has a slow accelerator, so findings, plots
and history fetches are part of what is timed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag


def populate(store: str, runs: int) -> None:
    client = MlflowClient(store)
    exp = "0"  # Default, where compare looks when nothing is named
    per_group = 10  # 5 cpu + 5 cuda runs of one configuration
    for i in range(runs):
        group, k = divmod(i, per_group)
        device = "cpu" if k < per_group // 2 else "cuda:0"
        slow = group % 10 == 0 and device != "cpu"
        speed = (8_000 if slow else 40_000 if device != "cpu" else 20_000) * (1 + 0.01 * (k % 3))
        run = client.create_run(exp, run_name=f"{device}-{group}", start_time=1_000 * i)
        params = {
            "device": device,
            "dataset": "synthetic",
            "model": "mlp-784-512-512-10",
            "hidden": "512",
            "layers": "2",
            "epochs": "10",
            "batch_size": str(64 + group),
            "lr": "0.001",
            "optimizer": "sgd",
            "seed": "0",
        }
        metrics = [Metric("test_accuracy", 0.5 + 0.04 * e, 0, e) for e in range(1, 11)]
        metrics += [Metric("test_loss", 2.0 - 0.1 * e, 0, e) for e in range(1, 11)]
        metrics += [Metric("train_loss", 2.3 - 0.0015 * s, 0, s) for s in range(1_000)]
        metrics += [Metric("samples_per_s", speed, 0, 0), Metric("wall_time_s", 30.0, 0, 0)]
        for j in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[j : j + 1000])
        client.log_batch(
            run.info.run_id,
            params=[Param(k, v) for k, v in params.items()],
            tags=[
                RunTag("pipeline.device_type", device.split(":")[0]),
                RunTag("pipeline.host", "bench"),
                RunTag("pipeline.stage", "train"),
            ],
        )
        client.set_terminated(run.info.run_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        t0 = time.perf_counter()
        populate(store, args.runs)
        print(f"logged {args.runs} runs in {time.perf_counter() - t0:.1f} s")
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        t0 = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline",
                "compare",
                "--tracking-uri",
                store,
                "--no-fail",
                "--output-json",
                str(Path(tmp) / "findings.json"),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
        )
        elapsed = time.perf_counter() - t0
        assert out.returncode == 0, out.stderr
        findings = [line for line in out.stdout.splitlines() if line.startswith("warning")]
        print(
            f"compare over {args.runs} runs: {elapsed:.1f} s in all (process start, imports, "
            f"queries, {len(findings)} findings, plots, logging its run)"
        )


if __name__ == "__main__":
    main()
