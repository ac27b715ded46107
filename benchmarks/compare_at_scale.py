"""How long `pipeline compare` takes over many runs, as a whole command.

    python benchmarks/compare_at_scale.py --runs 1000
    python benchmarks/compare_at_scale.py --runs 10000
    python benchmarks/compare_at_scale.py --runs 10000 --server     # through `mlflow server`
    python benchmarks/compare_at_scale.py --runs 1000 --profile     # cProfile's top entries

Logs finished train runs in the documented schema straight through MlflowClient into a sqlite
store: groups of 5 device/host pairs x 5 repeats, 30 train_loss points, 3 epochs of
test_accuracy, test_loss and epoch_time_s, summary metrics and environment tags, from a fixed
seed. One group in ten has a slow accelerator and one in twenty a wrong accuracy, so findings,
history fetches and plots are part of what is timed. Then it times `python -m pipeline compare
--no-fail` in a fresh process, from process start to exit, --repeat times (best and all
reported), each on a fresh copy of the store, so every repeat does the same work. With
--server, each repeat starts `mlflow server` on 127.0.0.1 over that copy (not timed) and
compare talks to it over HTTP.
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

PAIRS = [("cpu", "box-a"), ("cuda:0", "box-a"), ("cuda:1", "box-a"), ("cpu", "mac"), ("mps", "mac")]
REPEATS = 5


def populate(store: str, runs: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    client = MlflowClient(store)
    experiment = "0"  # Default: where compare looks when nothing is named
    groups = max(1, runs // (len(PAIRS) * REPEATS))
    start = 1_000_000
    for group in range(groups):
        for repeat in range(REPEATS):
            for device, host in PAIRS:
                start += 1_000
                slow = group % 10 == 0 and device != "cpu" and repeat == REPEATS - 1
                wrong = group % 20 == 5 and device == "mps" and repeat == REPEATS - 1
                base = {"cpu": 20_000, "mps": 30_000}.get(device, 60_000)
                speed = base * (0.4 if slow else 1.0) * rng.uniform(0.97, 1.03)
                accuracy = [0.5, 0.65, 0.0 if wrong else 0.75 + rng.uniform(-0.005, 0.005)]
                run = client.create_run(experiment, run_name=f"{device}-g{group}", start_time=start)
                metrics = [Metric("test_accuracy", a, start, e + 1) for e, a in enumerate(accuracy)]
                metrics += [
                    Metric("test_loss", v, start, e + 1) for e, v in enumerate([1.6, 1.1, 0.8])
                ]
                metrics += [
                    Metric("epoch_time_s", 60_000 / speed * rng.uniform(0.98, 1.02), start, e + 1)
                    for e in range(3)
                ]
                metrics += [Metric("train_loss", 2.3 - 0.05 * s, start, s) for s in range(30)]
                metrics += [
                    Metric("samples_per_s", speed, start, 0),
                    Metric("train_time_s", 180_000 / speed, start, 0),
                    Metric("wall_time_s", 180_000 / speed + 5, start, 0),
                ]
                params = {
                    "device": device,
                    "dataset": "synthetic",
                    "model": "mlp-784-512-512-10",
                    "hidden": "512",
                    "layers": "2",
                    "epochs": "3",
                    "batch_size": str(64 + group),
                    "lr": "0.001",
                    "optimizer": "sgd",
                    "seed": "0",
                    "loader": "tensors",
                    "train_size": "60000",
                    "test_size": "10000",
                }
                tags = {
                    "pipeline.stage": "train",
                    "pipeline.device": device,
                    "pipeline.device_type": device.split(":")[0],
                    "pipeline.device_name": {"cpu": "Xeon", "mps": "Apple M1"}.get(device, "H100"),
                    "pipeline.host": host,
                    "pipeline.torch_version": "2.14.1",
                    "pipeline.python_version": "3.11.7",
                    "pipeline.mlflow_version": "3.17.2",
                }
                client.log_batch(
                    run.info.run_id,
                    metrics=metrics,
                    params=[Param(k, v) for k, v in params.items()],
                    tags=[RunTag(k, v) for k, v in tags.items()],
                )
                client.set_terminated(run.info.run_id, end_time=start + 500)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, artifacts: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *("mlflow", "server", "--host", "127.0.0.1", "--port", str(port)),
            *("--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(artifacts)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("mlflow server did not answer within 120 s")


PROFILED = """
import cProfile, pstats, sys
profile = cProfile.Profile()
profile.enable()
import pipeline.cli
code = pipeline.cli.execute({args!r})
profile.disable()
pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
sys.exit(code)
"""


def time_compare(uri: str, folder: Path, profile: bool) -> tuple[float, dict, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": uri}
    out = folder / "findings.json"
    args = ["compare", "--no-fail", "--output-json", str(out)]
    cmd = [sys.executable, "-m", "pipeline", *args]
    if profile:  # the command's own code under cProfile (main() leaves with os._exit)
        cmd = [sys.executable, "-c", PROFILED.format(args=args)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"compare exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed, json.loads(out.read_text()), proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", action="store_true", help="compare through mlflow server")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries")
    parser.add_argument("--store", type=Path, help="a store made by an earlier --keep run")
    parser.add_argument("--keep", type=Path, help="keep the populated store here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = args.store or tmp / "source.db"
        if not args.store:
            t0 = time.perf_counter()
            populate(f"sqlite:///{source}", args.runs)
            print(f"logged {args.runs} runs in {time.perf_counter() - t0:.0f} s")
            if args.keep:
                shutil.copy(source, args.keep)
        times = []
        for i in range(args.repeat):
            folder = tmp / f"repeat-{i}"
            folder.mkdir()
            db = folder / "mlflow.db"
            shutil.copy(source, db)
            server = None
            uri = f"sqlite:///{db}"
            if args.server:
                server, uri = start_server(db, folder / "artifacts")
            try:
                elapsed, report, stdout = time_compare(uri, folder, args.profile)
            finally:
                if server:
                    server.terminate()
                    server.wait()
            times.append(elapsed)
            kinds: dict[str, int] = {}
            for f in report["findings"]:
                kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
            runs = sum(len(g["runs"]) for g in report["groups"])
            print(f"repeat {i + 1}: {elapsed:.2f} s; {runs} runs judged; findings {kinds}")
            if args.profile:
                print(stdout[stdout.index("function calls") :][:6000])
        where = "mlflow server on 127.0.0.1 (sqlite behind it)" if args.server else "sqlite"
        print(
            f"compare over {args.runs} runs through {where}: best {min(times):.2f} s "
            f"(all: {', '.join(f'{t:.2f}' for t in times)}), process start to exit; "
            f"{os.cpu_count()} cores"
        )


if __name__ == "__main__":
    main()
