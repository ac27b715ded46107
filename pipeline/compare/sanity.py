"""The sanity rules, on a run's own numbers with no baseline: non-finite losses, an accuracy
that its loss rules out, the parity probe (inputs and predictions against the CPU), and a
training loss that does not fall. Pure functions over records.py."""

import math
import statistics

from pipeline.compare.records import ACCURACY, ERROR, WARNING, Finding
from pipeline.schema import Metrics

PARITY_MIN_AGREEMENT = 0.99
WELL_BELOW_CHANCE_LOSS = 0.8  # "well below ln(classes)": below this fraction of it
LOSS_MUST_FALL = 0.01


def single_run(run) -> list[Finding]:
    """The rules that need nothing but the run itself."""
    return [*_non_finite(run), *_accuracy_vs_loss(run), *_parity(run)]


def _non_finite(run) -> list[Finding]:
    bad = [
        k
        for k in (Metrics.TRAIN_LOSS, Metrics.TEST_LOSS)
        if k in run.metrics and not math.isfinite(run.metrics[k])
    ]
    if not bad:
        return []
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "non-finite-loss",
            ERROR,
            f"{run.device}: {', '.join(f'{k} is {run.metrics[k]}' for k in bad)}",
        )
    ]


def _accuracy_vs_loss(run) -> list[Finding]:
    acc, loss = run.metrics.get(Metrics.TEST_ACCURACY), run.metrics.get(Metrics.TEST_LOSS)
    if acc is None or loss is None or not math.isfinite(loss):
        return []
    classes = run.num_classes
    chance, chance_loss = 1 / classes, math.log(classes)
    if acc <= chance and loss < WELL_BELOW_CHANCE_LOSS * chance_loss:
        return [
            Finding(
                run.run_id,
                ACCURACY,
                "accuracy-inconsistent-with-loss",
                ERROR,
                f"{run.device}: test accuracy {acc:.1%} is at or below chance ({chance:.0%}) while "
                f"the test loss {loss:.3f} is well below ln({classes}) = {chance_loss:.3f}: "
                "the accuracy computation on this device is suspect",
                values={"test_accuracy": acc, "test_loss": loss},
            )
        ]
    return []


def _parity(run) -> list[Finding]:
    return [*_parity_inputs(run), *_parity_predictions(run)]


def _parity_inputs(run) -> list[Finding]:
    """The device made other input values than the CPU from the same bytes: its uint8->float
    conversion is wrong (the conversion is exact: any difference is a fault)."""
    mismatch = run.metrics.get(Metrics.PARITY_INPUT_MISMATCH)
    if not mismatch:
        return []
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "device-input-mismatch",
            ERROR,
            f"{run.device}: {mismatch:.2%} of the input values the device made from the test "
            "images differ from ToTensor's on the CPU: its uint8->float conversion is wrong",
            values={"parity_input_mismatch": mismatch},
        )
    ]


def _parity_predictions(run) -> list[Finding]:
    """The parity probe found the device's predictions unlike the CPU's: fewer than 99% agree,
    or, in bf16/fp16, more than a point fewer than the precision alone explains."""
    agreement = run.metrics.get(Metrics.PARITY_ARGMAX_AGREEMENT)
    expected = run.metrics.get(Metrics.PARITY_PRECISION_ARGMAX_AGREEMENT, 1.0)
    floor = min(PARITY_MIN_AGREEMENT, expected - (1 - PARITY_MIN_AGREEMENT))
    if agreement is None or agreement >= floor:
        return []
    diff = run.metrics.get(Metrics.PARITY_MAX_ABS_LOGIT_DIFF, float("nan"))
    gap = ""
    if Metrics.PARITY_PRECISION_ARGMAX_AGREEMENT in run.metrics:
        gap = f"; the precision alone explains {expected:.1%} agreement"
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "device-numerics",
            ERROR,
            f"{run.device}: the same weights and inputs give the CPU's prediction for only "
            f"{agreement:.1%} of test images (max logit difference {diff:.3g}){gap}",
            values={
                "parity_argmax_agreement": agreement,
                "parity_max_abs_logit_diff": diff,
                "expected_agreement": expected,
            },
        )
    ]


def loss_not_falling(run, history) -> list[Finding]:
    final = run.metrics.get(Metrics.TRAIN_LOSS)
    if history is None or final is None or not math.isfinite(final):
        return []
    if final < WELL_BELOW_CHANCE_LOSS * math.log(run.num_classes):
        return []  # clearly learned something: no need to read the history
    losses = [value for _, value in sorted(history(run.run_id, Metrics.TRAIN_LOSS))]  # by step
    if len(losses) < 2:
        return []
    tenth = max(1, len(losses) // 10)
    first, last = statistics.fmean(losses[:tenth]), statistics.fmean(losses[-tenth:])
    if last <= first * (1 - LOSS_MUST_FALL):
        return []
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "loss-not-falling",
            WARNING,
            f"{run.device}: the training loss did not fall (first tenth {first:.3f}, "
            f"last tenth {last:.3f})",
            values={"first": first, "last": last},
        )
    ]
