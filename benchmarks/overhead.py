"""What the instrument costs: the pipeline against a bare loop and the quickstart's loop.

    python benchmarks/overhead.py                 # 3 rounds of a, b, b0, c; 5 epochs each
    python benchmarks/overhead.py --repeat 5      # also: run b 5 more times, report its noise

On the same synthetic data (60,000/10,000 images) and the quickstart workload (MLP 2×512,
SGD lr 1e-3, batch 64, a test pass after every epoch), each in a process of its own:
  a  a bare PyTorch loop over preloaded tensors, no tracking;
  a' the same with the host allocator set as `pipeline train` sets it (freed memory kept,
     devices.keep_freed_host_memory): b/a' is what the tracking alone costs;
  b  `pipeline train`, every batch's loss logged to MLflow (sqlite), with the default system
     metrics (one sample a second); b0 the same with --no-system-metrics;
  c  the quickstart's loop: DataLoader + ToTensor, loss.item() as the quickstart does.
The five run in turn, --rounds times, each round starting one later than the one before, so
that slow drift of the machine hits all alike and no variant always follows the same one. It
prints each one's median epoch time (training + test pass; the median over rounds of each
round's median), peak RSS, and the ratios, with the targets: b/a <= 1.05 (best round and
median), and the peak RSS of all of b's processes together <= 1.3 x c's. Then, inside this
one process, a, a's loop over the pipeline's uint8 batches (a8) and `pipeline train` take
turns, which splits b/a into what the data format costs and what the rest costs, free of
the drift between processes. With --repeat K it
runs b K more times and prints the coefficient of variation of the epoch time: the noise
floor to set `compare --speed-tolerance` from.

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
    from pipeline import data

    x, y = split.data.unsqueeze(1), split.targets
    if scale_per_batch:
        return data.TensorBatches(x, y, BATCH)
    x = x.float() / 255
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(y), BATCH)]


def bare_epochs(train_batches, test_batches, epochs: int, quickstart: bool = False) -> list:
    """The quickstart's MLP, trained from the seed: seconds of each epoch (training + test
    pass). With `quickstart`, the loss printed every 100 batches and .item() per test batch,
    as the quickstart does."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)
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

    from pipeline import data, devices

    if mode.endswith("-kept"):
        devices.keep_freed_host_memory()
    spec = data.DataSpec("synthetic", Path(data_dir), SEED)
    if mode.startswith("bare"):
        train = bare_batches(data.load(spec, True), scale_per_batch=False)
        test = bare_batches(data.load(spec, False), scale_per_batch=False)
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

    from pipeline import cli, data, devices

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


def run_bare_or_quickstart(mode: str, epochs: int, data_dir: str, env: dict):
    cmd = [sys.executable, __file__, "--child", mode, "--epochs", str(epochs)]
    out = measure([*cmd, "--data-dir", data_dir], env)
    return out["epochs"], (out["rss_mib"], 0.0)


def run_pipeline(epochs: int, data_dir: str, env: dict, extra: list[str]):
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        cmd = [
            *(sys.executable, "-m", "pipeline", "train", "--device", "cpu"),
            *("--dataset", "synthetic", "--data-dir", data_dir, "--epochs", str(epochs)),
            *("--quiet", "--tracking-uri", store, *extra),
        ]
        peak = watch_peak(
            subprocess.Popen(cmd, env=env, cwd=tmp, text=True, stderr=subprocess.PIPE)
        )
        client = MlflowClient(store)
        run = client.search_runs(["0"])[0]
        history = client.get_metric_history(run.info.run_id, "epoch_time_s")
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 938 * epochs
        epochs = [m.value for m in sorted(history, key=lambda m: m.step)]
        return epochs, (peak, 0.0)


def watch_peak(proc: subprocess.Popen) -> float:
    """The peak RSS of `pipeline train` and of any processes it has started, summed. VmHWM
    never falls, so the last reading of each process is its peak."""
    import psutil

    peaks: dict[int, float] = {}
    while proc.poll() is None:
        # Gone, or a zombie (no VmHWM line): the last reading stands.
        with contextlib.suppress(FileNotFoundError, IndexError, psutil.NoSuchProcess):
            for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]:
                peaks[p.pid] = peak_rss_mib(p.pid)
        time.sleep(0.05)
    _, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"pipeline train exited {proc.returncode}:\n{stderr}")
    return sum(peaks.values())


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of a, a', b, b0, c")
    parser.add_argument("--repeat", type=int, default=0, help="run b this many times more")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--child", choices=["bare", "bare-kept", "quickstart"], help=argparse.SUPPRESS
    )
    parser.add_argument("--pipeline-args", default="", help="extra args for b, e.g. options")
    args = parser.parse_args()
    data_dir = args.data_dir or tempfile.mkdtemp()
    if args.child:
        return child(args.child, args.epochs, data_dir)

    from pipeline import data

    data.write_synthetic(Path(data_dir), SEED, 60_000, 10_000)  # once, outside the timings
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    extra = args.pipeline_args.split()
    runners = {
        "a bare loop": lambda: run_bare_or_quickstart("bare", args.epochs, data_dir, env),
        "a' bare, kept": lambda: run_bare_or_quickstart("bare-kept", args.epochs, data_dir, env),
        "b pipeline train": lambda: run_pipeline(args.epochs, data_dir, env, extra),
        "b0 no sys metrics": lambda: run_pipeline(
            args.epochs, data_dir, env, [*extra, "--no-system-metrics"]
        ),
        "c quickstart": lambda: run_bare_or_quickstart("quickstart", args.epochs, data_dir, env),
    }
    rounds: dict[str, list] = {name: [] for name in runners}
    names = list(runners)
    for r in range(args.rounds):
        # Each round starts one later, so that no variant always runs after the same one.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            rounds[name].append(runners[name]())
    print(
        f"{args.epochs} epochs each, {args.rounds} rounds, synthetic 60,000/10,000, batch 64, "
        f"CPU ({os.cpu_count()} cores)"
    )
    print(f"{'':18} {'best s':>7} {'median s':>9} {'each round':>30} {'peak RSS MiB':>13}")
    best, medians, rss = {}, {}, {}
    for name, results in rounds.items():
        per_round = [statistics.median(epochs) for epochs, _ in results]
        best[name], medians[name] = min(per_round), statistics.median(per_round)
        rss[name] = max(own for _, (own, _) in results)
        shown = " ".join(f"{m:.2f}" for m in per_round)
        print(f"{name:18} {best[name]:>7.3f} {medians[name]:>9.3f} {shown:>30} {rss[name]:>13.0f}")
    # Noise here only ever adds time, so the best round of each is the least disturbed figure.
    for which, figures in (("best rounds", best), ("medians", medians)):
        a, a_kept, b, b0, c = figures.values()
        met = "met" if b / a <= 1.05 else "NOT met"
        print(
            f"{which}: b/a = {b / a:.3f} (target <= 1.05: {met}); b0/a = {b0 / a:.3f}; "
            f"b/a' = {b / a_kept:.3f}; a'/a = {a_kept / a:.3f}; c/b = {c / b:.2f}"
        )
    rss_b, rss_c = rss["b pipeline train"], rss["c quickstart"]
    met = "met" if rss_b <= 1.3 * rss_c else "NOT met"
    print(f"peak RSS of all of b's processes, b/c = {rss_b / rss_c:.3f} (target <= 1.3: {met})")
    print("epoch times (s) and peak RSS (MiB) of each run:")
    for name, results in rounds.items():
        runs = [" ".join(f"{e:.2f}" for e in ep) + f" ({own:.0f})" for ep, (own, _) in results]
        print(f"  {name}: " + " | ".join(runs))

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
        runs = [epochs for epochs, _ in rounds["b pipeline train"]]
        runs += [run_pipeline(args.epochs, data_dir, env, extra)[0] for _ in range(args.repeat)]
        per_run = [statistics.median(r) for r in runs]
        print("median epoch s of each run of b: " + " ".join(f"{m:.2f}" for m in per_run))
        steady = [e for r in runs for e in r[1:]]
        print(
            f"noise over {len(runs)} runs of b: CV of the median epoch time "
            f"{cv(per_run):.1%}; CV of all steady epochs {cv(steady):.1%}"
        )


if __name__ == "__main__":
    main()
