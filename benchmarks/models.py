"""Training throughput of each built-in model on one device, through `pipeline train`, eager
or compiled.

    python benchmarks/models.py                       # cpu, batch 64 and 256, fp32, eager
    python benchmarks/models.py --device cuda --precisions fp32,bf16
    python benchmarks/models.py --input-shape 3x32x32 --compiles none,default

Each (model, precision, compile mode, batch size) trains for --epochs epochs on the synthetic
data (--train-size images of --input-shape, --classes classes) in a process of its own,
logged to a throwaway sqlite store; the table gives the steady-state samples/s (the epochs
after the first) that the run logged, a compiled run's compile_time_s (compilation is timed
before the first epoch, docs/run-schema.md), its forward FLOPs per image, and its parameter
count.
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
    parser.add_argument("--compiles", default="none", help="e.g. none,default")
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--test-size", type=int, default=1_000)
    parser.add_argument("--input-shape", default="1x28x28")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": store}
        rows = []
        cells = [
            (model, precision, mode, batch)
            for model in args.models.split(",")
            for precision in args.precisions.split(",")
            for mode in args.compiles.split(",")
            for batch in args.batch_sizes.split(",")
        ]
        for model, precision, mode, batch in cells:
            name = f"{model}-{precision}-{mode}-{batch}"
            cmd = [
                *(sys.executable, "-m", "pipeline", "train", "--quiet"),
                *("--device", args.device, "--model", model, "--precision", precision),
                *("--compile", mode, "--batch-size", batch, "--epochs", str(args.epochs)),
                *("--dataset", "synthetic", "--data-dir", str(Path(tmp) / "data")),
                *("--input-shape", args.input_shape, "--classes", str(args.classes)),
                *("--train-size", str(args.train_size), "--test-size", str(args.test_size)),
                *("--no-system-metrics", "--run-name", name),
            ]
            proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
                continue
            (run,) = MlflowClient(store).search_runs(["0"], f"attributes.run_name = '{name}'")
            m, p = run.data.metrics, run.data.params
            compile_s = m.get("compile_time_s")
            rows.append(
                (
                    model,
                    precision,
                    mode,
                    batch,
                    m["samples_per_s"],
                    "" if compile_s is None else f"{compile_s:.1f}",
                    m["forward_flops_per_sample"],
                    int(p["parameters"]),
                )
            )
        device = MlflowClient(store).search_runs(["0"])[0].data.tags["pipeline.device_name"]
        print(
            f"{args.device} ({device}, {os.cpu_count()} cores): {args.epochs} epochs of "
            f"{args.train_size} synthetic images of {args.input_shape}, {args.classes} classes"
        )
        print(
            "| model | precision | compile | batch | samples/s | compile s "
            "| forward MFLOPs/image | parameters |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for model, precision, mode, batch, speed, compile_s, flops, params in rows:
            print(
                f"| {model} | {precision} | {mode} | {batch} | {speed:,.0f} | {compile_s} | "
                f"{flops / 1e6:.2f} | {params:,} |"
            )


if __name__ == "__main__":
    main()
