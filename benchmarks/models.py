"""Training throughput of each built-in model on one device, through `pipeline train`.

    python benchmarks/models.py                       # cpu, batch 64 and 256, fp32
    python benchmarks/models.py --device cuda --precisions fp32,bf16

Each (model, precision, batch size) trains for --epochs epochs on the synthetic data
(--train-size images) in a process of its own, logged to a throwaway sqlite store; the table
gives the steady-state samples/s (the epochs after the first) that the run logged, its
forward FLOPs per image, and its parameter count.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="mlp,cnn,vit")
    parser.add_argument("--precisions", default="fp32")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": store}
        rows = []
        for model in args.models.split(","):
            for precision in args.precisions.split(","):
                for batch in args.batch_sizes.split(","):
                    name = f"{model}-{precision}-{batch}"
                    cmd = [
                        *(sys.executable, "-m", "pipeline", "train", "--quiet"),
                        *("--device", args.device, "--model", model, "--precision", precision),
                        *("--batch-size", batch, "--epochs", str(args.epochs)),
                        *("--dataset", "synthetic", "--data-dir", str(Path(tmp) / "data")),
                        *("--train-size", str(args.train_size), "--test-size", "1000"),
                        *("--no-system-metrics", "--run-name", name),
                    ]
                    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(f"{name}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
                        continue
                    query = f"attributes.run_name = '{name}'"
                    (run,) = MlflowClient(store).search_runs(["0"], query)
                    m, p = run.data.metrics, run.data.params
                    rows.append(
                        (
                            model,
                            precision,
                            batch,
                            m["samples_per_s"],
                            m["forward_flops_per_sample"],
                            int(p["parameters"]),
                            m["test_accuracy"],
                        )
                    )
        device = MlflowClient(store).search_runs(["0"])[0].data.tags["pipeline.device_name"]
        print(
            f"{args.device} ({device}, {os.cpu_count()} cores): {args.epochs} epochs of "
            f"{args.train_size} synthetic images"
        )
        print("| model | precision | batch | samples/s | forward MFLOPs/image | parameters |")
        print("|---|---|---|---|---|---|")
        for model, precision, batch, speed, flops, params, _ in rows:
            print(
                f"| {model} | {precision} | {batch} | {speed:,.0f} | {flops / 1e6:.2f} | "
                f"{params:,} |"
            )


if __name__ == "__main__":
    main()
