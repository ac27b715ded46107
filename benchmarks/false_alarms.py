"""How often compare's speed rules cry wolf, and how often they find a real slowdown.

Synthetic histories of identical runs go through the judging code `compare` uses
(`rules.judge` on a `records.Selection`, then `stage.fails` at the default `--fail-on
warning`); only the tracking store is left out. Each run's samples/s is lognormal around its
series' speed with relative spread σ; in every baseline one run in ten (at least one) is 25%
slower, as a run disturbed by something else on a shared machine is.

- shape (a), the gate: one workload on 4 device/host series (cpu and cuda:0 on host a, cpu
  and mps on host b, the accelerators 3× the CPU's speed), each with n earlier runs and one
  newest run, `--history n`; the newest run of each series is judged (`compare --latest`).
  Detection: the newest run of one series, chosen at random, is 30% slower.
- shape (b), one series: L runs of one device, compare with no selection (every run judged
  against the --history 5 before it). A disturbed run is itself judged here, and a finding on
  it is right; a false alarm is a finding on an undisturbed run.

Also the coverage of the intervals compare shows: the median interval of a sweep cell's
repeats (evidence.median_interval) and the one-sided bound of a speed ratio
(evidence.upper_bound), each against the level it states.

    python benchmarks/false_alarms.py                 # the full grid, 2,000 draws a setting
    python benchmarks/false_alarms.py --draws 200     # a quick look
"""

import argparse
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.compare import evidence, rules
from pipeline.compare import stage as compare
from pipeline.compare.records import RunSummary, Selection, Tolerances
from pipeline.schema import Metrics, Tags

SIGMAS = (0.03, 0.05, 0.10, 0.20)
BASELINES = (2, 5, 10, 30)  # shape (a): n earlier runs a series
DETECTION_BASELINES = (2, 5, 10, 11, 30)  # 11: the first size past 95% at 5% noise
SERIES_LENGTHS = (6, 10, 30)  # shape (b): L runs in one series
INTERVAL_SIZES = (3, 5, 10, 30)
DISTURBED, DISTURBANCE = 10, 0.75  # one baseline run in ten runs at 0.75× the speed
SLOWDOWN = 0.70  # the true regression detection looks for
SERIES = (("cpu", "a", 1.0), ("cuda:0", "a", 3.0), ("cpu", "b", 1.0), ("mps", "b", 3.0))
WORKLOAD = json.dumps({"model": "mlp", "dataset": "synthetic", "epochs": "2"})


def run(i: int, device: str, host: str, samples_per_s: float) -> RunSummary:
    """A finished train run as compare reads it, with nothing but its speed."""
    tags = {Tags.DEVICE: device, Tags.HOST: host, Tags.STAGE: "train", Tags.WORKLOAD: WORKLOAD}
    metrics = {Metrics.SAMPLES_PER_S: samples_per_s}
    return RunSummary(f"r{i:05d}", f"run-{i}", "0", i, "FINISHED", {"epochs": "2"}, metrics, tags)


def noisy(rng: random.Random, speed: float, sigma: float) -> float:
    return speed * math.exp(rng.gauss(0.0, sigma))


def disturbed(rng: random.Random, count: int, disturb: bool = True) -> set[int]:
    """Which of `count` runs are disturbed: one in DISTURBED, at least one (none when not
    `disturb`: plain identical runs)."""
    return set(rng.sample(range(count), max(1, count // DISTURBED))) if disturb else set()


def judge(runs: list[RunSummary], judged: set[str], history: int) -> list:
    """compare's findings on these runs, as `load` would select them."""
    selection = Selection(runs=runs, judged=judged, left_out={}, unfinished=[], experiment_ids=[])
    findings, _, _ = rules.judge(selection, Tolerances(history=history))
    return findings


def gate_draw(
    rng: random.Random, n: int, sigma: float, slowed: int | None = None, disturb: bool = True
) -> list:
    """Shape (a): the findings of `compare --latest` over 4 series of n + 1 runs; the newest
    run of series `slowed` (if any) SLOWDOWN times as fast."""
    runs, i = [], 0
    for s, (device, host, speed) in enumerate(SERIES):
        slow = disturbed(rng, n, disturb)
        for j in range(n + 1):
            factor = DISTURBANCE if j in slow else SLOWDOWN if (j == n and s == slowed) else 1
            runs.append(run(i, device, host, noisy(rng, speed * factor, sigma)))
            i += 1
    runs.sort(key=lambda r: r.start_time)
    newest = {r.run_id for r in compare.latest_of_each(runs)}
    return judge(runs, newest, history=n)


def series_draw(
    rng: random.Random, length: int, sigma: float, disturb: bool = True
) -> tuple[list, set[str]]:
    """Shape (b): the findings of `compare` with no selection over one series, and the ids of
    its disturbed runs."""
    slow = disturbed(rng, length, disturb)
    runs = [
        run(j, "cpu", "a", noisy(rng, DISTURBANCE if j in slow else 1.0, sigma))
        for j in range(length)
    ]
    ids = {r.run_id for r in runs}
    return judge(runs, ids, history=Tolerances().history), {runs[j].run_id for j in slow}


def false_alarms_gate(n: int, sigma: float, draws: int, seed: int, disturb: bool = True) -> float:
    """The share of draws of identical runs in which `compare --latest` fails."""
    rng = random.Random(seed)
    draw = (gate_draw(rng, n, sigma, None, disturb) for _ in range(draws))
    return sum(compare.fails(findings, "warning") for findings in draw) / draws


def false_alarms_series(
    length: int, sigma: float, draws: int, seed: int, disturb: bool = True
) -> float:
    """The share of draws in which `compare` raises a finding on an undisturbed run."""
    rng = random.Random(seed)
    alarms = 0
    for _ in range(draws):
        findings, slow = series_draw(rng, length, sigma, disturb)
        alarms += compare.fails([f for f in findings if f.run_id not in slow], "warning")
    return alarms / draws


def detection(n: int, sigma: float, draws: int, seed: int) -> float:
    """The share of draws in which a 30% slowdown of one series' newest run fails the gate
    with a finding on that run."""
    rng = random.Random(seed)
    found = 0
    for _ in range(draws):
        slowed = rng.randrange(len(SERIES))
        target = f"r{(n + 1) * (slowed + 1) - 1:05d}"
        findings = gate_draw(rng, n, sigma, slowed)
        found += compare.fails([f for f in findings if f.run_id == target], "warning")
    return found / draws


def median_coverage(n: int, draws: int, seed: int) -> tuple[float, float]:
    """(stated level, share of draws whose median interval holds the true median) for n
    lognormal samples (true median 1)."""
    rng = random.Random(seed)
    hits, level = 0, 0.0
    for _ in range(draws):
        low, high, level = evidence.median_interval([noisy(rng, 1.0, 0.1) for _ in range(n)])
        hits += low <= 1.0 <= high
    return level, hits / draws


def bound_coverage(n: int, alpha: float, draws: int, seed: int, ratio: float = 0.8) -> float:
    """The share of draws whose one-sided (1 - α) bound of the speed ratio of one new run to
    n baseline runs holds the true ratio."""
    rng = random.Random(seed)
    hits = 0
    for _ in range(draws):
        base = [noisy(rng, 1.0, 0.05) for _ in range(n)]
        test = evidence.runs_test([noisy(rng, ratio, 0.05)], base)
        hits += evidence.upper_bound(test, alpha) >= ratio
    return hits / draws


def grid(title: str, label: str, sizes: tuple, rate, fmt: str = ".2%") -> list[str]:
    """One Markdown table: a row per size, a column per σ, each cell rate(size, σ)."""
    lines = ["", title, "", f"| {label} | " + " | ".join(f"σ {s:.0%}" for s in SIGMAS) + " |"]
    lines.append("|---" * (len(SIGMAS) + 1) + "|")
    for size in sizes:
        lines.append(f"| {size} | " + " | ".join(f"{rate(size, s):{fmt}}" for s in SIGMAS) + " |")
    return lines


def table(draws: int, seed: int) -> list[str]:
    """The full grid, as Markdown lines."""
    lines = [f"{draws:,} draws a setting, seed {seed}."]
    lines += grid(
        "False alarms per command, shape (a), `compare --latest`:",
        "baseline runs",
        BASELINES,
        lambda n, s: false_alarms_gate(n, s, draws, seed),
    )
    lines += grid(
        "The same with no disturbed run (plain identical runs):",
        "baseline runs",
        BASELINES,
        lambda n, s: false_alarms_gate(n, s, draws, seed, disturb=False),
    )
    lines += grid(
        "False alarms per command, shape (b), `compare` with no selection:",
        "runs in the series",
        SERIES_LENGTHS,
        lambda n, s: false_alarms_series(n, s, draws, seed),
    )
    lines += grid(
        "A 30% slowdown of one series found, shape (a):",
        "baseline runs",
        DETECTION_BASELINES,
        lambda n, s: detection(n, s, draws, seed),
        ".1%",
    )
    lines += ["", f"Coverage of the intervals, {5 * draws:,} draws each:", ""]
    lines += ["| samples | median interval: stated | held | ratio bound at 90%: held |"]
    lines.append("|---|---|---|---|")
    for n in INTERVAL_SIZES:
        level, held = median_coverage(n, 5 * draws, seed)
        bound = bound_coverage(n, 0.10, 5 * draws, seed)
        lines.append(f"| {n} | {level:.1%} | {held:.1%} | {bound:.1%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=29)
    args = parser.parse_args()
    print("\n".join(table(args.draws, args.seed)))


if __name__ == "__main__":
    main()
