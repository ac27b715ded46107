"""The speed verdicts hold the rates they state, proven by simulation through the real rule.

Synthetic histories go through `rules.judge` and `compare.stage.fails`, the code `compare` runs
(benchmarks/false_alarms.py, whose full grid of 2,000 draws a setting is in
docs/benchmarks.md). Here a reduced, seeded grid: each rate is checked against the count that
a rule keeping its bound exceeds with a chance under 0.1%, so that a broken bound (the old
MAD rule raised a false alarm in about 40% of commands) fails the suite while a rule that
keeps it passes."""

import math
import sys

import pytest
from conftest import ROOT, SMALL
from scipy import stats

sys.path.insert(0, str(ROOT / "benchmarks"))
import false_alarms as sim
from identical_runs import identical_runs

from pipeline.compare import evidence
from pipeline.compare import stage as compare
from pipeline.compare.records import ERROR, WARNING

DRAWS = 300
SEED = 7


def most(rate: float, draws: int) -> float:
    """The highest share a true `rate` reaches with a chance of 0.1%."""
    return stats.binom.ppf(0.999, draws, rate) / draws


def least(rate: float, draws: int) -> float:
    """The lowest share a true `rate` falls to with a chance of 0.1%."""
    return stats.binom.ppf(0.001, draws, rate) / draws


@pytest.mark.parametrize(("n", "sigma"), [(2, 0.20), (5, 0.10), (10, 0.05), (30, 0.20)])
def test_identical_runs_fail_the_gate_in_at_most_one_command_in_a_hundred(n, sigma):
    rate = sim.false_alarms_gate(n, sigma, DRAWS, SEED)
    print(f"shape (a), n={n}, σ={sigma:.0%}, {DRAWS} draws: false alarms {rate:.2%}")
    assert rate <= most(1 - evidence.COMMAND_LEVEL, DRAWS)


@pytest.mark.parametrize(("n", "sigma"), [(10, 0.10), (30, 0.20)])
def test_plain_identical_runs_fail_the_gate_in_at_most_one_command_in_a_hundred(n, sigma):
    """No disturbed baseline run: setting slow runs aside must not push the level past 1%."""
    rate = sim.false_alarms_gate(n, sigma, DRAWS, SEED, disturb=False)
    print(f"shape (a), plain, n={n}, σ={sigma:.0%}, {DRAWS} draws: false alarms {rate:.2%}")
    assert rate <= most(1 - evidence.COMMAND_LEVEL, DRAWS)


@pytest.mark.parametrize(("length", "sigma"), [(6, 0.20), (10, 0.10), (30, 0.05)])
def test_a_series_judged_whole_fails_in_at_most_one_command_in_a_hundred(length, sigma):
    rate = sim.false_alarms_series(length, sigma, DRAWS, SEED)
    print(f"shape (b), L={length}, σ={sigma:.0%}, {DRAWS} draws: false alarms {rate:.2%}")
    assert rate <= most(1 - evidence.COMMAND_LEVEL, DRAWS)


@pytest.mark.parametrize(("n", "sigma"), [(11, 0.05), (30, 0.03)])
def test_a_30_percent_slowdown_is_found_in_95_draws_of_100(n, sigma):
    rate = sim.detection(n, sigma, DRAWS, SEED)
    print(f"shape (a), n={n}, σ={sigma:.0%}, {DRAWS} draws: 30% slowdown found {rate:.1%}")
    assert rate >= least(0.95, DRAWS)


@pytest.mark.parametrize("n", sim.INTERVAL_SIZES)
def test_the_median_interval_covers_what_it_states(n):
    level, held = sim.median_coverage(n, DRAWS, SEED)
    print(f"median interval of {n}, {DRAWS} draws: stated {level:.1%}, held {held:.1%}")
    assert held >= least(level, DRAWS)
    if n < 6:  # too few for 95%: the range, with the level it has
        assert level == 1 - 2 * 0.5**n
    else:
        assert level >= evidence.MEDIAN_LEVEL


@pytest.mark.parametrize("n", sim.INTERVAL_SIZES)
def test_the_ratio_bound_covers_what_it_states(n):
    held = sim.bound_coverage(n, 0.10, DRAWS, SEED)
    print(f"90% ratio bound, {n} baseline runs, {DRAWS} draws: held {held:.1%}")
    assert held >= least(0.90, DRAWS)
    assert held <= most(0.90, DRAWS)  # and not by being wider than it says


def test_three_runs_show_their_range_at_75_percent():
    assert evidence.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)
    assert evidence.describe_interval((1_000, 3_000, 0.75)) == "1,000–3,000, 75.0%"
    assert evidence.median_interval([1.0]) is None


def test_the_seed_case_is_a_warning_to_repeat():
    """The M1 record: one run a side, no epoch times, mps 1.44× slower than the CPU."""
    cpu = sim.run(0, "cpu", "m1", 1 / 30.6)
    mps = sim.run(1, "mps", "m1", 1 / 44.0)
    (finding,) = sim.judge([cpu, mps], {cpu.run_id, mps.run_id}, history=5)
    assert finding.kind == "accelerator-slower-than-cpu" and finding.severity == WARNING
    assert finding.values["confidence"] == evidence.INSUFFICIENT
    assert "repeat to confirm (`sweep --repeats 5`)" in finding.message
    assert compare.fails([finding], WARNING) and not compare.fails([finding], ERROR)


def test_a_run_32_percent_slower_than_8_scattered_runs_is_confirmed():
    scatter = (1.03, 0.97, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97)
    runs = [sim.run(i, "cpu", "a", 1000 * s) for i, s in enumerate(scatter)]
    runs.append(sim.run(8, "cpu", "a", 680.0))
    (finding,) = sim.judge(runs, {runs[-1].run_id}, history=8)
    assert finding.kind == "slower-than-history" and finding.severity == ERROR
    geometric_mean = 1000 * math.prod(scatter) ** (1 / len(scatter))
    assert finding.values["speed_vs_history"] == pytest.approx(680 / geometric_mean)


@pytest.mark.alone  # identical runs only while nothing else runs: no test beside them
def test_six_identical_training_runs_give_a_clean_gate(tmp_path, data_dir):
    """Live: six `python -m pipeline train` processes on this machine, back to back, then
    `compare` with no selection, in a folder where nothing is set."""
    result = identical_runs(tmp_path, [*SMALL, "--epochs", "3", "--data-dir", str(data_dir)])
    print("samples/s of the six runs:", [round(s) for s in result["samples_per_s"]])
    assert len(result["samples_per_s"]) == 6
    assert result["findings"] == [] and result["exit_code"] == 0
