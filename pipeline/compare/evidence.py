"""How sure a speed finding is: the test behind it, its level, and the intervals compare shows.

Pure functions over lists of numbers (scipy for Student's t and the binomial distribution).

**The test.** A speed comparison puts a run side (one run, or a sweep cell's m repeats) against
a baseline side (n runs: the run's own history, or the CPU run of its host with its repeats).
Throughput is lognormal-ish (a slowdown multiplies), so the samples are log samples/s:

    d  = mean(log a) - mean(log b)              log of the ratio of the geometric means
    s² = pooled variance of the sides with two or more samples, df = Σ (size - 1)
    se = s · sqrt(1/m + 1/n)
    U  = d + t(1 - α; df) · se                  one-sided upper bound of the true log ratio

For m = 1 this is the prediction interval for one new run from n earlier ones (Student's t;
Hahn, Meeker & Escobar, *Statistical Intervals*, 2nd ed. 2017, §4.4): it widens as the
baseline shrinks (t(0.9975; 1) = 127, t(0.9975; 4) = 5.6, t(0.9975; 29) = 3.0), so two or
three runs can call only a large drop. When one run meets one run and each has MIN_EPOCHS
steady epochs, its epochs are the samples instead (Welch's t with the Welch-Satterthwaite df,
Welch 1947): the noise within the two runs, the only estimate one run a side can give.

**The level is per command.** Each of the command's k comparisons is tested at
α = TEST_SHARE · (1 - COMMAND_LEVEL) / k (Bonferroni): a command over identical runs raises a
speed finding with a chance of about 1 - COMMAND_LEVEL at most, however many runs it judges.
Setting slow runs aside (below) is a selection that makes the remaining baseline look tighter
than it is: on plain identical runs with 10 baseline runs it about doubles the false alarms of
the test. So the test gets TEST_SHARE of the budget: with it plain identical runs, as well as
baselines with one run in ten disturbed, stay within the command's level at every baseline
size measured (benchmarks/false_alarms.py, through this rule; at 45% plain identical runs
with 10 baseline runs did not). The price is power at exactly 10 baseline runs: a 30% drop at
5% noise is found in about 94% of commands there, in over 95% from 11 runs on
(docs/benchmarks.md).

**The verdict** (`tol` the speed tolerance, a floor under every finding):
- confirmed (an error): U < log(1 - tol): slower by more than the tolerance, at the level.
- unconfirmed (a warning): d < log(1 - tol) and U < 0: slower beyond the noise, but not
  surely by more than the tolerance.
- a note, no finding: d < log(1 - tol) but U >= 0: the drop is within what the noise explains.
- insufficient data: no noise estimate (one run a side without enough epochs, or samples
  with no spread at all). A warning only past LARGE_EFFECT (a drop of at least 25%, beyond
  what run-to-run noise on a shared machine gives in most pairs), else a note; both say to
  repeat. Such comparisons are outside the command's level.

**Slow outliers.** A baseline of at least MIN_SET_ASIDE runs sets aside each run slower than
the one-sided 99% prediction bound of the others (a run slowed by something else on the
machine drags the baseline down and widens its noise); at most a fifth of the baseline, and
none when more than a fifth would go.

**Median intervals** (a sweep cell's repeats): the order statistics [x(j), x(n+1-j)] cover
the median with probability 1 - 2 · P(Binomial(n, 1/2) <= j - 1) for any continuous
distribution (e.g. Conover, *Practical Nonparametric Statistics*, 3rd ed., §3.2). The
narrowest such interval (the largest j) that reaches MEDIAN_LEVEL is used and its exact
coverage shown; below six samples even the range [min, max] covers less (3 runs: 75%), and
that level is what is shown.
"""

import functools
import math
import statistics
from dataclasses import dataclass, field

COMMAND_LEVEL = 0.99  # the chance that identical runs raise no speed finding, per command
LARGE_EFFECT = 0.25  # the drop a comparison without a noise estimate must exceed
MIN_EPOCHS = 5  # steady epochs a side for one run to estimate its own noise
MIN_SET_ASIDE = 10  # baseline runs before slow outliers are set aside
SET_ASIDE_LEVEL = 0.99
TEST_SHARE = 0.4  # of the command's false-alarm budget: setting runs aside takes the rest
MEDIAN_LEVEL = 0.95
MAX_LOG = 700.0  # exp() of more overflows: a bound that wide bounds nothing
USEFUL_BOUND = 100.0  # a speed ratio bound above this is described as no bound
MAD_SCALE = 1.4826  # MAD × this estimates the standard deviation of normal noise
NOISE_SIGMAS = 3.0
RUNS, EPOCHS = "runs", "epochs"
CONFIRMED, UNCONFIRMED, INSUFFICIENT = "confirmed", "unconfirmed", "insufficient data"


@dataclass(frozen=True)
class Test:
    """A comparison's log ratio and its noise: the inputs of the one-sided bound."""

    kind: str  # runs | epochs
    log_ratio: float
    se: float
    df: float
    sizes: tuple[int, int]  # samples on the run side, on the baseline side
    set_aside: tuple[int, ...] = field(default=())  # baseline indices left out as outliers


def logs(values: list[float]) -> list[float]:
    return [math.log(v) for v in values]


def runs_test(ours: list[float], base: list[float], set_aside: tuple[int, ...] = ()) -> Test | None:
    """The pooled two-sample t of log speeds (one run against n: the prediction interval);
    None when no side has two samples, or the samples have no spread."""
    kept = [v for i, v in enumerate(base) if i not in set_aside]
    a, b = logs(ours), logs(kept)
    df = (len(a) - 1) + (len(b) - 1)
    if df < 1:
        return None
    squares = sum((x - statistics.fmean(side)) ** 2 for side in (a, b) for x in side)
    s = math.sqrt(squares / df)
    if s == 0:
        return None
    d = statistics.fmean(a) - statistics.fmean(b)
    return Test(RUNS, d, s * math.sqrt(1 / len(a) + 1 / len(b)), df, (len(a), len(b)), set_aside)


def epochs_test(ours: list[float], base: list[float]) -> Test | None:
    """Welch's t of the log epoch speeds of one run against one run; None with fewer than
    MIN_EPOCHS a side or no spread."""
    if min(len(ours), len(base)) < MIN_EPOCHS:
        return None
    a, b = logs(ours), logs(base)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return None
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    d = statistics.fmean(a) - statistics.fmean(b)
    return Test(EPOCHS, d, math.sqrt(va + vb), df, (len(a), len(b)))


def slow_outliers(base: list[float]) -> tuple[int, ...]:
    """The baseline runs to set aside: each one slower than the one-sided SET_ASIDE_LEVEL
    prediction bound of the others; none under MIN_SET_ASIDE runs or when more than a fifth
    would go."""
    n = len(base)
    if n < MIN_SET_ASIDE:
        return ()
    y = logs(base)
    t = t_quantile(SET_ASIDE_LEVEL, n - 2)
    out = []
    for i, v in enumerate(y):
        others = y[:i] + y[i + 1 :]
        bound = statistics.fmean(others) - t * statistics.stdev(others) * math.sqrt(1 + 1 / (n - 1))
        if v < bound:
            out.append(i)
    return tuple(out) if len(out) <= n // 5 else ()


@functools.lru_cache(maxsize=1024)  # Welch's df are fractions: bounded
def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (scipy's), kept: a command asks for the same few pairs of level and
    degrees of freedom thousands of times."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


def family_alpha(comparisons: int) -> float:
    """α of each comparison so that the command's k comparisons together keep COMMAND_LEVEL:
    the command's 1 - COMMAND_LEVEL over k, times TEST_SHARE for setting slow runs aside."""
    return (1 - COMMAND_LEVEL) * TEST_SHARE / max(comparisons, 1)


def upper_bound(test: Test, alpha: float) -> float:
    """The one-sided (1 - α) upper bound of the true speed ratio."""
    log_bound = test.log_ratio + t_quantile(1 - alpha, test.df) * test.se
    return math.exp(log_bound) if log_bound < MAX_LOG else math.inf


def ratio_interval(test: Test, alpha: float) -> tuple[float, float, float]:
    """(low, high, level): the two-sided interval of the true speed ratio whose upper end is
    the verdict's one-sided (1 - α) bound (`upper_bound`), so its level is 1 - 2α."""
    t = t_quantile(1 - alpha, test.df) * test.se
    low = math.exp(max(test.log_ratio - t, -MAX_LOG))
    return low, upper_bound(test, alpha), 1 - 2 * alpha


def verdict(test: Test | None, ratio: float, alpha: float, tolerance: float) -> str | None:
    """CONFIRMED, UNCONFIRMED or INSUFFICIENT for a finding; None for no finding (a note
    when the ratio is past the tolerance)."""
    if test is None:
        return INSUFFICIENT if ratio < 1 - max(tolerance, LARGE_EFFECT) else None
    if ratio >= 1 - tolerance:
        return None
    bound = upper_bound(test, alpha)
    if bound < 1 - tolerance:
        return CONFIRMED
    return UNCONFIRMED if bound < 1 else None


def values(test: Test | None, alpha: float, comparisons: int, sizes: dict) -> dict:
    """What a speed finding records of its evidence (Finding.values)."""
    if test is None:
        return {
            "confidence": INSUFFICIENT,
            "sample_kind": None,
            "samples": sizes,
            "large_effect": LARGE_EFFECT,
        }
    return {
        "sample_kind": test.kind,
        "samples": {test.kind: list(test.sizes)},
        "ratio_bound": upper_bound(test, alpha),
        "level": 1 - alpha,
        "command_level": COMMAND_LEVEL,
        "comparisons": comparisons,
    }


def describe(test: Test | None, alpha: float, comparisons: int, sizes: dict) -> str:
    """What a speed finding or note says of its evidence: the bound and how it was made."""
    if test is None:
        runs, epochs = sizes["runs"][1], min(sizes["epochs"])
        return (
            f"insufficient data ({runs} baseline run{'s' * (runs != 1)}, {epochs} steady "
            f"epoch{'s' * (epochs != 1)} a side: no noise estimate, so only a drop past "
            f"{LARGE_EFFECT:.0%} is flagged); repeat to confirm (`sweep --repeats 5`)"
        )
    n_ours, n_base = test.sizes
    aside = f", {len(test.set_aside)} slow baseline run(s) set aside" if test.set_aside else ""
    bound = upper_bound(test, alpha)
    said = f"speed ratio at most {bound:.2f}×" if bound < USEFUL_BOUND else "no useful bound"
    return (
        f"{said} at {1 - alpha:.2%} one-sided "
        f"({test.kind}: {n_ours} against {n_base}{aside}; {comparisons} speed "
        f"comparison{'s' * (comparisons != 1)} in this command, {COMMAND_LEVEL:.0%} together)"
    )


def threshold(test: Test, alpha: float) -> float:
    """The ratio below which this comparison's noise would let a drop through: exp(-t · se)."""
    return math.exp(-t_quantile(1 - alpha, test.df) * test.se)


def noise_threshold(history: list[float], floor: float, relative: bool) -> tuple[float, float]:
    """(median, allowed drop) of a history: the drop is max(floor, 3 × scaled MAD)."""
    median = statistics.median(history)
    mad = statistics.median(abs(h - median) for h in history) * MAD_SCALE
    spread = NOISE_SIGMAS * mad / median if relative and median else NOISE_SIGMAS * mad
    return median, max(floor, spread)


def median_interval(values: list[float]) -> tuple[float, float, float] | None:
    """(low, high, coverage): the order-statistic interval of the median of these samples,
    the narrowest that reaches MEDIAN_LEVEL or else the range, with its exact coverage; None for
    fewer than two samples."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    x = sorted(values)
    j = 1
    while j < n // 2 and 1 - 2 * stats.binom.cdf(j, n, 0.5) >= MEDIAN_LEVEL:
        j += 1
    coverage = 1 - 2 * stats.binom.cdf(j - 1, n, 0.5)
    return x[j - 1], x[n - j], float(coverage)


def describe_interval(interval: tuple[float, float, float]) -> str:
    """'11,900–12,600, 75.0%': a median interval and its level."""
    low, high, coverage = interval
    return f"{low:,.0f}–{high:,.0f}, {coverage:.1%}"
