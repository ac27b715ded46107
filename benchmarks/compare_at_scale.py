"""How long `pipeline compare` takes over many runs, as a whole command.

    python benchmarks/compare_at_scale.py --runs 1000
    python benchmarks/compare_at_scale.py --runs 10000 --server     # through `mlflow server`
    python benchmarks/compare_at_scale.py --runs 10000 --shape series --fast
    python benchmarks/compare_at_scale.py --runs 100000 --shape series --fast --select commit
    python benchmarks/compare_at_scale.py --runs 10000 --shape series --fast --floor
    python benchmarks/compare_at_scale.py --runs 1000 --profile     # cProfile's top entries

Logs finished train runs in the documented schema into a sqlite store, from a fixed seed: 30
train_loss points, 3 epochs of test_accuracy, test_loss and epoch_time_s, summary metrics and
environment tags, a commit (pipeline.git_commit) per round of 5 device/host pairs. Two
shapes: `groups`, groups of 5 pairs x 5 repeats (one group in ten with a slow accelerator,
one in twenty with a wrong accuracy); `series`, one workload over runs / 5 commits, the shape
a CI history takes (a slow accelerator every 50th commit, a wrong accuracy every 100th).
Through MlflowClient (about 0.15 s a run here), or with --fast straight into MLflow's tables.

Then it times `python -m pipeline compare --no-fail` in a fresh process, from process start
to exit, --repeat times (best and all reported), each on a fresh copy of the store, so every
repeat does the same work: over every run (--select all), the gate over the last commit's
runs (--select commit: `--filter "tags.pipeline.git_commit = '...'"`), or --latest. --floor
times instead a process that imports MLflow, reads every run and leaves. With --server, each
repeat starts `mlflow server` on 127.0.0.1 over that copy (not timed) and compare talks to it
over HTTP.
"""

import argparse
import json
import os
import random
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from uuid import uuid4

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

PAIRS = [("cpu", "box-a"), ("cuda:0", "box-a"), ("cuda:1", "box-a"), ("cpu", "mac"), ("mps", "mac")]
REPEATS = 5
SHAPES = ("groups", "series")


def commit_of(index: int) -> str:
    return f"{index:040x}"


def runs_of(shape: str, runs: int, seed: int = 0) -> Iterator[dict]:
    """The runs of a store, oldest first, each as plain data. groups: groups of 5 device/host
    pairs x 5 repeats (batch_size differs per group), a commit per repeat; series: one
    workload over runs / 5 commits, one run per pair and commit."""
    rng = random.Random(seed)
    rounds = max(1, runs // len(PAIRS))
    start = 1_000_000
    for i in range(rounds):
        group, repeat = (i // REPEATS, i % REPEATS) if shape == "groups" else (0, i)
        for device, host in PAIRS:
            start += 1_000
            if shape == "groups":
                last = repeat == REPEATS - 1
                slow = group % 10 == 0 and device != "cpu" and last
                wrong = group % 20 == 5 and device == "mps" and last
            else:
                slow = i % 50 == 49 and device != "cpu"
                wrong = i % 100 == 99 and device == "mps"
            base = {"cpu": 20_000, "mps": 30_000}.get(device, 60_000)
            speed = base * (0.4 if slow else 1.0) * rng.uniform(0.97, 1.03)
            accuracy = [0.5, 0.65, 0.0 if wrong else 0.75 + rng.uniform(-0.005, 0.005)]
            metrics = [("test_accuracy", a, e + 1) for e, a in enumerate(accuracy)]
            metrics += [("test_loss", v, e + 1) for e, v in enumerate([1.6, 1.1, 0.8])]
            metrics += [
                ("epoch_time_s", 60_000 / speed * rng.uniform(0.98, 1.02), e + 1) for e in range(3)
            ]
            metrics += [("train_loss", 2.3 - 0.05 * s, s) for s in range(30)]
            metrics += [
                ("samples_per_s", speed, 0),
                ("train_time_s", 180_000 / speed, 0),
                ("wall_time_s", 180_000 / speed + 5, 0),
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
                "pipeline.git_commit": commit_of(i),
                "pipeline.torch_version": "2.14.1",
                "pipeline.python_version": "3.11.7",
                "pipeline.mlflow_version": "3.17.2",
            }
            name = f"{device}-g{group}"
            yield {"name": name, "start": start, "params": params, "tags": tags, "metrics": metrics}


def populate(store: str, runs: int, seed: int = 0, shape: str = "groups") -> None:
    """Log the runs through MlflowClient, one request each (about 0.15 s a run here)."""
    client = MlflowClient(store)
    experiment = "0"  # Default: where compare looks when nothing is named
    for r in runs_of(shape, runs, seed):
        start = r["start"]
        run = client.create_run(experiment, run_name=r["name"], start_time=start)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, start, step) for k, v, step in r["metrics"]],
            params=[Param(k, v) for k, v in r["params"].items()],
            tags=[RunTag(k, v) for k, v in r["tags"].items()],
        )
        client.set_terminated(run.info.run_id, end_time=start + 500)


def populate_fast(db: Path, runs: int, seed: int = 0, shape: str = "groups") -> None:
    """The same runs written straight into MLflow's sqlite tables (write_runs)."""
    write_runs(db, runs_of(shape, runs, seed))


def write_runs(db: Path, runs: Iterable[dict]) -> None:
    """Finished runs (runs_of's dicts; "experiment" and "status" optional) written straight
    into the tables MLflow's sqlite store keeps them in (runs, params, tags, metrics,
    latest_metrics), as MlflowClient writes them, in one transaction: minutes for 100,000 runs
    where the client takes hours."""
    MlflowClient(f"sqlite:///{db}").get_experiment("0")  # MLflow creates the tables
    con = sqlite3.connect(db)
    roots = dict(con.execute("select experiment_id, artifact_location from experiments"))
    with con:
        for r in runs:
            uuid, start = r.get("run_id") or uuid4().hex, r["start"]
            experiment = int(r.get("experiment", 0))
            con.execute(
                "insert into runs values (?, ?, 'UNKNOWN', '', '', 'unknown', ?, ?, ?, "
                "'', 'active', ?, ?, NULL)",
                (
                    *(uuid, r["name"], r.get("status", "FINISHED"), start, start + 500),
                    *(f"{roots[experiment]}/{uuid}/artifacts", experiment),
                ),
            )
            con.executemany(
                "insert into params values (?, ?, ?)",
                [(k, v, uuid) for k, v in r["params"].items()],
            )
            tags = {**r["tags"], "mlflow.runName": r["name"]}
            con.executemany(
                "insert into tags values (?, ?, ?)", [(k, v, uuid) for k, v in tags.items()]
            )
            con.executemany(
                "insert into metrics values (?, ?, ?, ?, ?, 0)",
                [(k, v, start, uuid, step) for k, v, step in r["metrics"]],
            )
            latest = {k: (v, step) for k, v, step in r["metrics"]}  # the highest step's
            con.executemany(
                "insert into latest_metrics values (?, ?, ?, ?, 0, ?)",
                [(k, v, start, step, uuid) for k, (v, step) in latest.items()],
            )
    con.close()


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


# The floor: a process that imports MLflow, reads every run of the experiment, and leaves.
FLOOR = """
import sys
from mlflow import MlflowClient
client, runs, token = MlflowClient(), 0, None
while True:
    page = client.search_runs(["0"], max_results=1000, page_token=token)
    runs += len(page)
    token = page.token
    if not token:
        break
print(runs)
"""


def selection_args(select: str, runs: int) -> list[str]:
    """compare's arguments for a selection: all (none), commit (the gate over the latest
    commit's runs, by --filter), latest (--latest)."""
    if select == "commit":
        last = commit_of(max(1, runs // len(PAIRS)) - 1)
        return ["--filter", f"tags.`pipeline.git_commit` = '{last}'"]
    return ["--latest"] if select == "latest" else []


def time_compare(
    uri: str, folder: Path, profile: bool, select: list[str], floor: bool = False
) -> tuple[float, dict, str, float]:
    """Wall seconds, the report, stdout, and the process's CPU seconds (user + system: on a
    shared machine the steadier figure)."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": uri}
    out = folder / "findings.json"
    args = ["compare", "--no-fail", "--output-json", str(out), *select]
    cmd = [sys.executable, "-m", "pipeline", *args]
    if profile:  # the command's own code under cProfile (main() leaves with os._exit)
        cmd = [sys.executable, "-c", PROFILED.format(args=args)]
    if floor:
        cmd = [sys.executable, "-c", FLOOR]
    t0, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=folder)
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"compare exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    report = {"findings": [], "groups": []} if floor else json.loads(out.read_text())
    return elapsed, report, proc.stdout, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--shape", choices=SHAPES, default="groups")
    parser.add_argument(
        "--select", choices=("all", "commit", "latest"), default="all", help="what is compared"
    )
    parser.add_argument("--floor", action="store_true", help="time reading every run instead")
    parser.add_argument("--no-plots", action="store_true", help="compare --no-plots")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server", action="store_true", help="compare through mlflow server")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries")
    parser.add_argument("--fast", action="store_true", help="write the store's tables directly")

    def here(path: str) -> Path:
        """A path from the folder this is run in (it works in a temporary folder of its own)."""
        return Path(path).resolve()

    parser.add_argument("--store", type=here, help="a store made by an earlier --keep run")
    parser.add_argument("--keep", type=here, help="keep the populated store here")
    parser.add_argument("--findings", type=here, help="write the last repeat's findings here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chdir(tmp)  # the store's artifact root (./mlruns) lies here
        source = args.store or tmp / "source.db"
        if not args.store:
            t0 = time.perf_counter()
            if args.fast:
                populate_fast(source, args.runs, shape=args.shape)
            else:
                populate(f"sqlite:///{source}", args.runs, shape=args.shape)
            print(f"logged {args.runs} runs in {time.perf_counter() - t0:.0f} s")
            if args.keep:
                shutil.copy(source, args.keep)
        if not args.repeat:
            return
        times, cpus = [], []
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
                select = selection_args(args.select, args.runs)
                select += ["--no-plots"] if args.no_plots else []
                elapsed, report, stdout, cpu = time_compare(
                    uri, folder, args.profile, select, args.floor
                )
            finally:
                if server:
                    server.terminate()
                    server.wait()
            times.append(elapsed)
            cpus.append(cpu)
            kinds: dict[str, int] = {}
            for f in report["findings"]:
                kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
            runs = sum(len(g["runs"]) for g in report["groups"])
            print(
                f"repeat {i + 1}: {elapsed:.2f} s ({cpu:.2f} s CPU); {runs} runs judged; "
                f"findings {kinds}"
            )
            if args.profile:
                print(stdout[stdout.index("function calls") :][:6000])
            if args.findings:
                args.findings.write_text(json.dumps(report["findings"], indent=1, sort_keys=True))
            shutil.rmtree(folder)
        where = "mlflow server on 127.0.0.1 (sqlite behind it)" if args.server else "sqlite"
        what = "reading every run (the floor)" if args.floor else f"compare --select {args.select}"
        print(
            f"{what} over {args.runs} runs, {args.shape} shape, through {where}: best "
            f"{min(times):.2f} s (all: {', '.join(f'{t:.2f}' for t in times)}), process start "
            f"to exit; CPU best {min(cpus):.2f} s (all: {', '.join(f'{t:.2f}' for t in cpus)}); "
            f"{os.cpu_count()} cores"
        )


if __name__ == "__main__":
    main()
