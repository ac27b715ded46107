"""The rules that compare a run with its twin: the same workload on the same device and host,
but for one setting at its reference value. A run in tf32, bf16 or fp16 against its fp32 twin
(precision-accuracy-loss), a compiled run against its eager twin (compiled-accuracy-mismatch).
Pure functions over records.py."""

import math

from pipeline.compare.changes import changed, describe_changes
from pipeline.compare.records import ACCURACY, ERROR, Finding, RunSummary, Tolerances
from pipeline.schema import Metrics, Params

# The reference value of each setting a run has a twin for (a run without the param has it).
REFERENCE = {Params.PRECISION: "fp32", Params.COMPILE: "none"}


def key(run: RunSummary, setting: str) -> tuple:
    """What a run shares with its twin: every grouping param but `setting`, the device that
    ran, and the host."""
    return (tuple(kv for kv in run.group_key if kv[0] != setting), run.device, run.host)


def of(runs: list[RunSummary], setting: str) -> dict[tuple, RunSummary]:
    """The latest run at the setting's reference value (fp32, eager) of each twin key."""
    return {key(r, setting): r for r in runs if value(r, setting) == REFERENCE[setting]}


def value(run: RunSummary, setting: str) -> str:
    return run.params.get(setting, REFERENCE[setting])


def references(runs: list[RunSummary]) -> dict[str, dict[tuple, RunSummary]]:
    """For each setting, the latest reference run of each twin key."""
    return {setting: of(runs, setting) for setting in REFERENCE}


def findings(run: RunSummary, refs: dict, tol: Tolerances) -> list[Finding]:
    """The twin rules on one run, against `references`."""
    fp32 = refs[Params.PRECISION].get(key(run, Params.PRECISION))
    eager = refs[Params.COMPILE].get(key(run, Params.COMPILE))
    return [*precision_loss(run, fp32, tol), *compile_gap(run, eager, tol)]


def accuracies(run: RunSummary, twin: RunSummary | None, setting: str):
    """(the run's final accuracy, its twin's), or None when there is nothing to compare: the
    run is at the reference value itself, has no twin, or either lacks an accuracy."""
    acc = run.metrics.get(Metrics.TEST_ACCURACY)
    if value(run, setting) == REFERENCE[setting] or twin is None or acc is None:
        return None
    twin_acc = twin.metrics.get(Metrics.TEST_ACCURACY)
    return None if twin_acc is None else (acc, twin_acc)


def precision_loss(run: RunSummary, twin: RunSummary | None, tol: Tolerances) -> list[Finding]:
    """A tf32/bf16/fp16 run whose final accuracy is more than the tolerance below its fp32
    twin's: the same model and data on the same device, in full precision."""
    found = accuracies(run, twin, Params.PRECISION)
    if found is None or found[0] >= found[1] - tol.accuracy:
        return []
    (acc, fp32_acc), precision = found, value(run, Params.PRECISION)
    diff = changed(run, [twin], same_by_design=("fp32_matmul", "fp32_conv"))
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "precision-accuracy-loss",
            ERROR,
            f"{run.device} in {precision} reaches {acc:.1%} test accuracy, {fp32_acc - acc:.1%} "
            f"below the same workload in fp32 on it ({fp32_acc:.1%}; tolerance "
            f"{tol.accuracy:.1%})" + describe_changes(diff),
            values={
                "test_accuracy": acc,
                "fp32_test_accuracy": fp32_acc,
                "fp32_run_id": twin.run_id,
                "precision": precision,
                "changed": diff,
            },
        )
    ]


def sampling_noise(run: RunSummary, twin: RunSummary, accuracy: float) -> float:
    """How far two accuracies measured on a test set of n images can differ by chance alone:
    3 standard deviations of the difference of two binomial proportions at `accuracy`,
    3·√(2p(1−p)/n) (n the smaller of the two runs' test_size; 0 when neither records it).

    Compiled kernels reorder floating-point work, and random operations (dropout) draw other
    numbers than eager ones do: a compiled run follows its own trajectory, as another seed
    would, and on a small test set one image is a large step."""
    sizes = [int(r.params[Params.TEST_SIZE]) for r in (run, twin) if Params.TEST_SIZE in r.params]
    if not sizes or min(sizes) <= 0:
        return 0.0
    return 3 * math.sqrt(2 * accuracy * (1 - accuracy) / min(sizes))


def compile_gap(run: RunSummary, twin: RunSummary | None, tol: Tolerances) -> list[Finding]:
    """A compiled run whose final accuracy differs, either way, from its eager twin's (the
    same workload on the same device and host, not compiled) by more than the tolerance and
    than the test set's sampling noise (`sampling_noise`): past both, the compiled kernels
    compute something else, not just in another order."""
    found = accuracies(run, twin, Params.COMPILE)
    if found is None:
        return []
    allowed = max(tol.accuracy, sampling_noise(run, twin, found[1]))
    if abs(found[0] - found[1]) <= allowed:
        return []
    (acc, eager_acc), mode = found, value(run, Params.COMPILE)
    diff = changed(run, [twin])
    return [
        Finding(
            run.run_id,
            ACCURACY,
            "compiled-accuracy-mismatch",
            ERROR,
            f"{run.device} compiled ({mode}) reaches {acc:.1%} test accuracy, "
            f"{abs(acc - eager_acc):.1%} {'below' if acc < eager_acc else 'above'} the same "
            f"workload run eagerly on it ({eager_acc:.1%}; allowed {allowed:.1%}: the tolerance "
            "or the test set's sampling noise, the larger): its compiled kernels are suspect"
            + describe_changes(diff),
            values={
                "test_accuracy": acc,
                "eager_test_accuracy": eager_acc,
                "eager_run_id": twin.run_id,
                "compile": mode,
                "allowed_gap": allowed,
                "changed": diff,
            },
        )
    ]
