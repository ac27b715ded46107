"""What the instrument costs: the pipeline against a bare loop, and its time outside the epochs
against what an efficient MLflow-tracked training script pays besides training.

    python benchmarks/overhead.py --rounds 5 --epochs 3
    python benchmarks/overhead.py --server             # also b logging to an `mlflow server`
    python benchmarks/overhead.py --repeat 5           # also: b 5 more times, its noise

On the same synthetic data (60,000/10,000 images) and the quickstart workload (MLP 2×512,
SGD lr 1e-3, batch 64, a test pass after every epoch), each in a process of its own:
  a8 a bare PyTorch loop over the data in the pipeline's format: uint8 held, each batch
     scaled to floats when it is taken; no tracking. The reference: b/a8 <= 1.03.
  a  the same loop over the data preloaded as floats (beside it: what the format costs).
  b  `pipeline train` as it runs by default: every batch's loss logged to MLflow (sqlite),
     system metrics, the profiled window after the first epoch; bp the same without the
     window (--profile-batches 0): its epochs must not differ from b's beyond noise;
     bs (--server) the same logging to a local `mlflow server`.
  c  the quickstart's loop: DataLoader + ToTensor, loss.item() as the quickstart does.
  f  the reference: what an efficient MLflow-tracked training script pays besides training
     (FLOOR: imports, a run in the default sqlite store, params, a metric, the model logged
     with mlflow.pytorch.log_model, its requirements given), leaving by os._exit.
They run in turn, --rounds times, each round starting one later than the one before, so that
slow drift of the machine hits all alike and no variant always follows the same one. It
prints each one's epoch time (training + test pass; the best and the median over rounds of
each round's median) and peak RSS, with the targets b/a8 <= 1.03 and the peak RSS of all of
b's processes together <= 1.3 x c's; then each one's time outside its epochs (its lifetime,
measured from here, less its epochs), with the target b <= 1.1 x f; then, in a fresh
process, where b's time outside its epochs goes, step by step; then, inside this one
process, a, a8 and `pipeline train` taking turns, which splits b/a into what the data format
costs and what the rest costs, free of the drift between processes. With --repeat K it runs
b K more times and prints the coefficient of variation of the epoch time: the noise floor to
set `compare --speed-tolerance` from.

Peak RSS is each process's own high-water mark, VmHWM in /proc/<pid>/status: a and c read
theirs at their end; b's is read by this script while it runs (VmHWM never falls, so the
last reading is the peak), summed over the process and any children it has at that moment.
Not getrusage's or wait4's ru_maxrss: Linux starts a new program's ru_maxrss at the
high-water mark of the process that spawned it, so every child of this script, which has
torch and MLflow loaded, reported about 850 MiB whatever it used.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEED, LR, BATCH = 0, 1e-3, 64


def peak_rss_mib(pid: int | str = "self") -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024  # in kB


def bare_batches(split, scale_per_batch: bool):
    """a's batches: views of the split preloaded as floats; or, with scale_per_batch, the
    pipeline's own (uint8 kept, each batch scaled to floats when it is taken)."""
    from pipeline.training import data

    x, y = split.data.unsqueeze(1), split.targets
    if scale_per_batch:
        return data.TensorBatches(x, y, BATCH)
    x = x.float() / 255
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(y), BATCH)]


def bare_epochs(
    train_batches, test_batches, epochs: int, quickstart: bool = False, net=None
) -> list:
    """The quickstart's MLP (or `net`), trained from the seed: seconds of each epoch (training
    + test pass). With `quickstart`, the loss printed every 100 batches and .item() per test
    batch, as the quickstart does."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    if net is None:
        net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 10),
        )
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.train()
        for batch, (xb, yb) in enumerate(train_batches):
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if quickstart and batch % 100 == 0:
                print(f"loss: {loss.item():>7f}", file=sys.stderr)
        net.eval()
        test_loss, correct = 0.0, 0.0
        with torch.no_grad():
            for xb, yb in test_batches:
                pred = net(xb)
                if quickstart:
                    test_loss += loss_fn(pred, yb).item()
                    correct += (pred.argmax(1) == yb).type(torch.float).sum().item()
                else:
                    test_loss += loss_fn(pred, yb)
                    correct += (pred.argmax(1) == yb).sum()
        float(test_loss), float(correct)
        times.append(time.perf_counter() - t0)
    return times


def child(mode: str, epochs: int, data_dir: str) -> None:
    """Runs inside the measured process; prints {"epochs": [seconds, ...], "rss_mib": peak}."""
    from torch.utils.data import DataLoader
    from torchvision.transforms import ToTensor

    from pipeline.training import data

    spec = data.DataSpec("synthetic", Path(data_dir), SEED)
    if mode.startswith("bare"):
        scaled = mode == "bare8"
        train = bare_batches(data.load(spec, True), scale_per_batch=scaled)
        test = bare_batches(data.load(spec, False), scale_per_batch=scaled)
    else:
        train = DataLoader(data.load(spec, True, transform=ToTensor()), batch_size=BATCH)
        test = DataLoader(data.load(spec, False, transform=ToTensor()), batch_size=BATCH)
    times = bare_epochs(train, test, epochs, quickstart=mode == "quickstart")
    print(json.dumps({"epochs": times, "rss_mib": peak_rss_mib()}))


def same_process(data_dir: str, rounds: int) -> dict[str, list[float]]:
    """In this one process, taking turns: a's epoch; a's loop over the pipeline's batches
    (uint8, scaled per batch); and `pipeline train` itself (cli.execute, every loss logged).
    Each figure is the faster of two epochs from a fresh model. One process, one allocator
    setting (the pipeline's, set first), one CPU placement: the machine's drift between
    processes is out, so a8/a is what the pipeline's data format costs and b/a8 what its
    loop, timers and logging cost."""
    from mlflow import MlflowClient

    from pipeline import cli, devices
    from pipeline.training import data

    devices.keep_freed_host_memory()
    spec = data.DataSpec("synthetic", Path(data_dir), SEED)
    train, test = data.load(spec, True), data.load(spec, False)
    batches = {
        scaled: (bare_batches(train, scaled), bare_batches(test, scaled))
        for scaled in (False, True)
    }
    store = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    client = MlflowClient(store)

    def pipeline_epochs() -> list[float]:
        cli.execute(
            [
                *("train", "--device", "cpu", "--dataset", "synthetic", "--data-dir", data_dir),
                *("--epochs", "2", "--quiet", "--tracking-uri", store),
            ]
        )
        run = client.search_runs(["0"], order_by=["attributes.start_time DESC"])[0]
        return [m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")]

    variants = {
        "a": lambda: bare_epochs(*batches[False], epochs=2),
        "a8": lambda: bare_epochs(*batches[True], epochs=2),
        "b": pipeline_epochs,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(min(variants[name]()))
    return times


def measure(cmd: list[str], env: dict, cwd: str | None = None) -> dict:
    """Run one of this script's children; return what it printed last (JSON)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed(cmd: list[str], env: dict, cwd: str | None = None) -> tuple[subprocess.Popen, float]:
    """Run a command to its end, watching its peak RSS; (the process, its lifetime in s from
    outside: from before it is started to after it has exited)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    proc.peak_mib = watch_peak(proc)
    return proc, time.perf_counter() - start


def run_child(mode: str, epochs: int, data_dir: str, env: dict) -> dict:
    """a8, a or c in a process of its own."""
    cmd = [sys.executable, __file__, "--child", mode, "--epochs", str(epochs)]
    proc, lifetime = timed([*cmd, "--data-dir", data_dir], env)
    out = json.loads(proc.stdout_text.strip().splitlines()[-1])
    return {"epochs": out["epochs"], "rss_mib": out["rss_mib"], "lifetime_s": lifetime}


def run_floor(env: dict) -> dict:
    """f: what an efficient MLflow-tracked training script pays besides training (FLOOR), in
    an empty folder of its own, leaving as `pipeline train` leaves (os._exit, without
    Python's teardown of torch and MLflow)."""
    with tempfile.TemporaryDirectory() as tmp:
        _, lifetime = timed([sys.executable, "-c", FLOOR], env, cwd=tmp)
        assert Path(tmp, "mlflow.db").exists(), "the script logged nowhere"
    return {"epochs": [], "rss_mib": 0.0, "lifetime_s": lifetime}


# Imports torch, torchvision and MLflow; starts a run in MLflow's default store (a new
# mlflow.db here); logs a few params and one metric; logs the quickstart's MLP with
# mlflow.pytorch.log_model (an input example; its pip requirements given, so nothing is
# inferred); ends the run; leaves.
FLOOR = """
import os, torch, torchvision, mlflow, mlflow.pytorch
from torch import nn
net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                    nn.Linear(512, 10))
with mlflow.start_run():
    mlflow.log_params({"lr": 1e-3, "batch_size": 64, "epochs": 5})
    mlflow.log_metric("test_accuracy", 0.5)
    example = torch.rand(2, 1, 28, 28).numpy()
    mlflow.pytorch.log_model(net, name="model", input_example=example,
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
os._exit(0)
"""


def run_pipeline(epochs: int, data_dir: str, env: dict, extra: list[str], store: str) -> dict:
    """b: `python -m pipeline train` in a process of its own, logging to `store`."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        store = store or f"sqlite:///{tmp}/mlflow.db"
        cmd = [
            *(sys.executable, "-m", "pipeline", "train", "--device", "cpu"),
            *("--dataset", "synthetic", "--data-dir", data_dir, "--epochs", str(epochs)),
            *("--quiet", "--tracking-uri", store, *extra),
        ]
        proc, lifetime = timed(cmd, env, cwd=tmp)
        client = MlflowClient(store)
        run = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )[0]
        history = client.get_metric_history(run.info.run_id, "epoch_time_s")
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 938 * epochs
        times = [m.value for m in sorted(history, key=lambda m: m.step)]
        return {"epochs": times, "rss_mib": proc.peak_mib, "lifetime_s": lifetime}


def watch_peak(proc: subprocess.Popen) -> float:
    """The peak memory of a process and of the processes it has started, summed. VmHWM never
    falls, so the last reading of each process that runs a program of its own is its peak. A
    child still running the parent's program (forked: a DataLoader worker, or `git` between
    vfork and exec) shares the parent's pages, which its VmHWM would count again: for it,
    the most memory it held alone (USS) is taken instead."""
    import psutil

    peaks: dict[int, float] = {}
    while proc.poll() is None:
        # Gone, or a zombie (no VmHWM line): the last reading stands.
        with contextlib.suppress(FileNotFoundError, IndexError, psutil.Error):
            parent = psutil.Process(proc.pid)
            peaks[parent.pid] = peak_rss_mib(parent.pid)
            for p in parent.children(True):
                if p.cmdline() != parent.cmdline():
                    peaks[p.pid] = peak_rss_mib(p.pid)
                else:
                    uss = p.memory_full_info().uss / 2**20
                    peaks[p.pid] = max(peaks.get(p.pid, 0.0), uss)
        time.sleep(0.05)
    proc.stdout_text, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{proc.args} exited {proc.returncode}:\n{stderr}")
    return sum(peaks.values())


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values)


@contextlib.contextmanager
def tracking_server(env: dict):
    """A local `mlflow server` on a sqlite store of its own, for the --server variant."""
    import socket

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        cmd = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        cmd += ["--backend-store-uri", f"sqlite:///{tmp}/s.db"]
        server = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        uri = f"http://127.0.0.1:{port}"
        try:
            from mlflow import MlflowClient

            for _ in range(120):
                with contextlib.suppress(Exception):
                    MlflowClient(uri).search_experiments(max_results=1)
                    break
                time.sleep(0.5)
            yield uri
        finally:
            server.terminate()
            server.wait()


def outside_phases(data_dir: str, epochs: int) -> dict[str, float]:
    """Inside one process, `pipeline train` with a timer around each step it takes outside
    its epochs: where the time a run spends outside its epochs goes, beyond the imports."""
    start = time.perf_counter()
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    from mlflow import MlflowClient

    spent = {"import torch, torchvision, MLflow's client": time.perf_counter() - start}
    start = time.perf_counter()
    from pipeline import cli
    from pipeline.tracking import runs as tracking
    from pipeline.training import artifact, costs, data, fingerprint
    from pipeline.training import stage as training

    spent["import the pipeline's modules"] = time.perf_counter() - start
    steps = {
        "connect to the store (sqlite: SQLAlchemy, alembic)": (tracking, "open_experiment"),
        "load the data": (data, "batches"),
        "the data sets' digests": (fingerprint, "dataset_input"),
        "log each epoch's losses (between epochs)": (training, "_flush_losses"),
        "the profiled window": (costs.Costs, "profile"),
        "the parity probe": (training, "parity_probe"),
        "the model artifact": (artifact, "log"),
        "curves.png (matplotlib)": (training, "_log_curves"),
        "create the run": (tracking.Run, "start"),
        "end the run": (tracking.Run, "end"),
    }
    for label, (owner, name) in steps.items():
        setattr(owner, name, _timer(getattr(owner, name), label, spent))
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        # Created beforehand, in another process (a first run's migrations are a one-off,
        # and this process's imports are what is timed).
        create = f"from mlflow import MlflowClient; MlflowClient({store!r})"
        subprocess.run([sys.executable, "-c", create], check=True, capture_output=True)
        args = ["train", "--device", "cpu", "--dataset", "synthetic", "--data-dir", data_dir]
        start = time.perf_counter()
        cli.execute([*args, "--epochs", str(epochs), "--quiet", "--tracking-uri", store])
        spent["the whole command"] = time.perf_counter() - start
        client = MlflowClient(store)
        run = client.search_runs(["0"])[0]
        history = client.get_metric_history(run.info.run_id, "epoch_time_s")
        spent["the epochs"] = sum(m.value for m in history)
    return spent


def _timer(function, label: str, spent: dict):
    def timed_call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - start

    return timed_call


B, A8, A, C, F = (
    "b pipeline train",
    "a8 bare (uint8)",
    "a bare (float)",
    "c quickstart",
    "f tracked script",
)


def interleaved(args, data_dir: str, env: dict, extra: list[str], server: str | None) -> dict:
    """Every variant once a round, each round starting one later, so that a slow drift of the
    machine hits all alike and no variant always follows the same one."""
    epochs = args.epochs
    runners = {
        A8: lambda: run_child("bare8", epochs, data_dir, env),
        A: lambda: run_child("bare", epochs, data_dir, env),
        B: lambda: run_pipeline(epochs, data_dir, env, extra, ""),
        "bp b, no profiled window": lambda: run_pipeline(
            epochs, data_dir, env, [*extra, "--profile-batches", "0"], ""
        ),
        C: lambda: run_child("quickstart", epochs, data_dir, env),
        F: lambda: run_floor(env),
    }
    if server:
        runners["bs b, to mlflow server"] = lambda: run_pipeline(
            epochs, data_dir, env, extra, server
        )
    rounds: dict[str, list[dict]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rounds[name].append(runners[name]())
    return rounds


def report(args, rounds: dict[str, list[dict]]) -> None:
    """The epochs against the bare loops; the time outside the epochs against the floor."""
    print(
        f"{args.epochs} epochs each, {args.rounds} rounds, synthetic 60,000/10,000, batch 64, "
        f"CPU ({os.cpu_count()} cores)"
    )
    print(f"{'epoch s':26} {'best':>6} {'median':>7}   each round{'':20} {'peak RSS MiB':>12}")
    best, median = {}, {}
    for name, results in rounds.items():
        if name == F:
            continue
        per_round = [statistics.median(r["epochs"]) for r in results]
        best[name], median[name] = min(per_round), statistics.median(per_round)
        shown = " ".join(f"{m:.2f}" for m in per_round)
        rss = max(r["rss_mib"] for r in results)
        print(f"{name:26} {best[name]:>6.3f} {median[name]:>7.3f}   {shown:30} {rss:>12.0f}")
    # Noise here only ever adds time, so the best round of each is the least disturbed figure.
    for which, figures in (("best rounds", best), ("medians", median)):
        b = figures[B]
        met = "met" if b / figures[A8] <= 1.03 else "NOT met"
        others = [f"{n.split()[0]}/a8 = {v / figures[A8]:.3f}" for n, v in figures.items()]
        print(
            f"{which}: b/a8 = {b / figures[A8]:.3f} (target <= 1.03: {met}); "
            + "; ".join(o for o in others if not o.startswith(("b/", "a8/")))
        )
    rss_b, rss_c = (max(r["rss_mib"] for r in rounds[n]) for n in (B, C))
    met = "met" if rss_b <= 1.3 * rss_c else "NOT met"
    print(f"peak RSS of all of b's processes, b/c = {rss_b / rss_c:.3f} (target <= 1.3: {met})")

    print(f"\n{'outside the epochs, s':26} {'best':>6} {'median':>7}   each round")
    outside = {}
    for name, results in rounds.items():
        each = [r["lifetime_s"] - sum(r["epochs"]) for r in results]
        outside[name] = (min(each), statistics.median(each))
        shown = " ".join(f"{x:.2f}" for x in each)
        print(f"{name:26} {outside[name][0]:>6.2f} {outside[name][1]:>7.2f}   {shown}")
    for i, which in enumerate(("best rounds", "medians")):
        ratio = outside[B][i] / outside[F][i]
        met = "met" if ratio <= 1.1 else "NOT met"
        print(f"{which}: b's time outside its epochs / f = {ratio:.2f} (target <= 1.1: {met})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant")
    parser.add_argument("--repeat", type=int, default=0, help="run b this many times more")
    parser.add_argument("--server", action="store_true", help="also b against mlflow server")
    parser.add_argument("--data-dir", default=None)
    children = ["bare", "bare8", "quickstart", "phases"]
    parser.add_argument("--child", choices=children, help=argparse.SUPPRESS)
    parser.add_argument("--pipeline-args", default="", help="extra args for b, e.g. options")
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp()
    if args.child == "phases":  # a fresh process, so that its imports are timed
        return print(json.dumps(outside_phases(data_dir, args.epochs)))
    if args.child:
        return child(args.child, args.epochs, data_dir)

    from pipeline.training import data

    data.write_synthetic(Path(data_dir), SEED, 60_000, 10_000)  # once, outside the timings
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    extra = args.pipeline_args.split()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(tracking_server(env)) if args.server else None
        rounds = interleaved(args, data_dir, env, extra, server)
    report(args, rounds)
    print("\nwhere the time outside the epochs goes, inside one process (s):")
    cmd = [sys.executable, __file__, "--child", "phases", "--epochs", str(args.epochs)]
    proc, _ = timed([*cmd, "--data-dir", data_dir], env)
    for label, seconds in json.loads(proc.stdout_text.strip().splitlines()[-1]).items():
        print(f"  {seconds:6.2f}  {label}")

    same = same_process(data_dir, rounds=6)
    print("same process, taking turns (epoch s, the faster of two from a fresh model):")
    for name, times in same.items():
        print(
            f"  {name:3} best {min(times):.3f} median {statistics.median(times):.3f}: "
            + " ".join(f"{t:.2f}" for t in times)
        )
    for which, pick in (("best", min), ("median", statistics.median)):
        a, a8, b = (pick(same[k]) for k in ("a", "a8", "b"))
        print(
            f"  {which}: b/a = {b / a:.3f}; a8/a = {a8 / a:.3f} (the data format); "
            f"b/a8 = {b / a8:.3f} (the loop, timers and logging)"
        )

    if args.repeat:
        runs = [r["epochs"] for r in rounds[B]]
        runs += [
            run_pipeline(args.epochs, data_dir, env, extra, "")["epochs"]
            for _ in range(args.repeat)
        ]
        per_run = [statistics.median(r) for r in runs]
        print("median epoch s of each run of b: " + " ".join(f"{m:.2f}" for m in per_run))
        steady = [e for r in runs for e in r[1:]]
        print(
            f"noise over {len(runs)} runs of b: CV of the median epoch time "
            f"{cv(per_run):.1%}; CV of all steady epochs {cv(steady):.1%}"
        )


if __name__ == "__main__":
    main()
