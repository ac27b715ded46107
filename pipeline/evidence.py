"""How sure a finding is: noise thresholds of a history, and the confidence of a speed ratio.

Pure functions over lists of numbers (scipy for the bootstrap).

A speed finding compares a run side with a baseline side on training throughput
(samples/s), the figure its flag uses. Its samples are independent ones, of one of two kinds:

- runs: when the baseline has at least MIN_SAMPLES runs (a run's history, or repeated runs
  of a sweep cell), each run is one sample, its samples_per_s; the statistic is
  median(run side) / median(baseline side).
- epochs: otherwise, when one run is compared with one run and each has at least
  MIN_SAMPLES steady epochs (after the first), each epoch is one sample, its
  epoch_samples_per_s; the statistic is the ratio of the harmonic means, which is exactly the
  ratio of the two runs' samples_per_s.

The 95% interval of the statistic is a percentile bootstrap (RESAMPLES resamples of each side,
seeded: the same runs always give the same interval). A slowdown is `confirmed` only when the
whole interval lies below 1 - tolerance; `unconfirmed` when the interval reaches into the
tolerance; `insufficient data` when neither kind has enough samples.
"""

import statistics

MIN_SAMPLES = 5
RESAMPLES = 2000
LEVEL = 0.95
MAD_SCALE = 1.4826  # MAD × this estimates the standard deviation of normal noise
NOISE_SIGMAS = 3.0
RUNS, EPOCHS = "runs", "epochs"
CONFIRMED, UNCONFIRMED, INSUFFICIENT = "confirmed", "unconfirmed", "insufficient data"


def noise_threshold(history: list[float], floor: float, relative: bool) -> tuple[float, float]:
    """(median, allowed drop) of a history: the drop is max(floor, 3 × scaled MAD)."""
    median = statistics.median(history)
    mad = statistics.median(abs(h - median) for h in history) * MAD_SCALE
    spread = NOISE_SIGMAS * mad / median if relative and median else NOISE_SIGMAS * mad
    return median, max(floor, spread)


def ratio(ours: list[float], base: list[float], kind: str) -> float:
    """The statistic: medians for runs, harmonic means for epochs."""
    centre = statistics.median if kind == RUNS else statistics.harmonic_mean
    return centre(ours) / centre(base)


def ratio_interval(ours: list[float], base: list[float], kind: str) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of ratio(ours, base, kind). A side of one value
    resamples to itself: the interval then comes from the other side alone."""
    import numpy as np
    from scipy import stats

    centre = np.median if kind == RUNS else stats.hmean

    def statistic(a, b, axis=-1):
        return centre(a, axis=axis) / centre(b, axis=axis)

    if len(ours) == 1 and len(base) == 1:
        value = ratio(ours, base, kind)
        return value, value
    samples = (np.asarray(ours, dtype=float), np.asarray(base, dtype=float))
    if len(ours) == 1:  # scipy resamples every side: fix the single one by hand
        result = stats.bootstrap(
            (samples[1],),
            lambda b, axis=-1: ours[0] / centre(b, axis=axis),
            n_resamples=RESAMPLES,
            confidence_level=LEVEL,
            method="percentile",
            rng=0,
        )
    else:
        result = stats.bootstrap(
            samples,
            statistic,
            n_resamples=RESAMPLES,
            confidence_level=LEVEL,
            method="percentile",
            rng=0,
        )
    low, high = result.confidence_interval
    return float(low), float(high)


def speed_confidence(
    runs: tuple[list[float], list[float]],
    epochs: tuple[list[float], list[float]],
    tolerance: float,
) -> dict:
    """How sure a slowdown past `tolerance` is. `runs` holds (run side, baseline side) as one
    samples_per_s a run; `epochs` (one run, one baseline run) as epoch_samples_per_s of their
    steady epochs. Returns the finding's values: confidence, sample_kind, samples per side,
    and the ratio's interval when there is one."""
    if len(runs[1]) >= MIN_SAMPLES and runs[0]:
        kind, (ours, base) = RUNS, runs
    elif min(len(epochs[0]), len(epochs[1])) >= MIN_SAMPLES:
        kind, (ours, base) = EPOCHS, epochs
    else:
        return insufficient((len(runs[0]), len(runs[1])), (len(epochs[0]), len(epochs[1])))
    low, high = ratio_interval(ours, base, kind)
    return {
        "confidence": CONFIRMED if high < 1 - tolerance else UNCONFIRMED,
        "sample_kind": kind,
        "samples": {kind: [len(ours), len(base)]},
        "ratio_ci": [low, high],
    }


def insufficient(runs: tuple[int, int], epochs: tuple[int, int]) -> dict:
    """The values of a finding with too few samples of either kind: how many runs and steady
    epochs each side has."""
    return {
        "confidence": INSUFFICIENT,
        "sample_kind": None,
        "samples": {"runs": list(runs), "epochs": list(epochs)},
    }


def describe(sure: dict) -> str:
    """What to add to a speed finding's message: '; confirmed (...)' and the like."""
    if sure["confidence"] == INSUFFICIENT:
        runs, epochs = sure["samples"]["runs"][1], min(sure["samples"]["epochs"])
        return (
            f"; insufficient data ({runs} baseline run{'s' * (runs != 1)}, {epochs} steady "
            f"epoch{'s' * (epochs != 1)} a side; confirming needs {MIN_SAMPLES} baseline runs "
            f"or {MIN_SAMPLES} steady epochs a side)"
        )
    kind = sure["sample_kind"]
    n_ours, n_base = sure["samples"][kind]
    low, high = sure["ratio_ci"]
    return (
        f"; {sure['confidence']} (speed ratio 95% CI {low:.2f}-{high:.2f}, "
        f"{kind}: {n_ours} against {n_base})"
    )


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """(median, low, high): a repeated measurement's median and the 95% percentile-bootstrap
    interval of that median."""
    import numpy as np
    from scipy import stats

    median = statistics.median(values)
    if len(values) < 2 or min(values) == max(values):
        return median, median, median
    result = stats.bootstrap(
        (np.asarray(values, dtype=float),),
        np.median,
        n_resamples=RESAMPLES,
        confidence_level=LEVEL,
        method="percentile",
        rng=0,
    )
    low, high = result.confidence_interval
    return median, float(low), float(high)
