"""The doctor stage: run the fixed battery and the operations of your own workload on a
device against the CPU, print them failures first, and log them as a run of stage `doctor`."""

import json
from dataclasses import asdict, replace
from pathlib import Path

from pipeline import battery, devices, doctor, render, replay, tracking
from pipeline.config import Target
from pipeline.console import out
from pipeline.lifecycle import interrupts_requested, run_closed
from pipeline.schema import Metrics, Params, Stages, Tags
from pipeline.training import model
from pipeline.training.stage import device_tags


def checks_for(model_config: dict | None, precision: str) -> list[doctor.Check]:
    """The battery (under tf32 its accumulating fp32 checks in TF32 too), then one training
    step of the workload, recorded on the CPU, operation by operation."""
    checks = list(battery.CHECKS)
    if precision == "tf32":
        checks += [
            replace(c, name=f"{c.name}, tf32", precision="tf32")
            for c in battery.CHECKS
            if c.accumulates and c.precision == "fp32"
        ]
    if model_config is not None:
        checks += replay.checks_of(model_config, precision)
    return checks


def run(
    device_spec: str,
    target: Target,
    model_config: dict | None = None,
    precision: str = "fp32",
    output_json: Path | None = None,
    quiet: bool = False,
) -> int:
    """Check the device's operations against the CPU's, print and log them; return the number
    of checks that failed or raised (an `error` is a failure)."""
    device = devices.resolve(device_spec)
    devices.precision(precision, device)  # one line when the device cannot run it
    if model_config is not None:
        model.checked(model_config)  # a bad --model is one line, before anything is logged
    client, experiment_id = tracking.open_experiment(target.tracking_uri, target.experiment)
    results = doctor.run_all(doctor.on(device), checks_for(model_config, precision))
    rows = [asdict(r) for r in results]
    failures = [doctor.describe_failure(r) for r in results if r.status in doctor.FAILURES]
    if not quiet:
        out.print(render.doctor_table(rows, str(device)))
    out.print(render.doctor_summary(rows, str(device)))
    if output_json:
        output_json.write_text(json.dumps({"device": str(device), "checks": rows}, indent=2))

    tags = device_tags(device, Stages.DOCTOR, target.host)
    tags[Tags.DOCTOR_FAILURES] = "; ".join(failures)[:5000]
    name = target.run_name or tracking.unique_run_name(client, experiment_id, f"doctor-{device}")
    params = {Params.DEVICE: str(device), Params.PRECISION: precision, "checks": len(results)}
    if model_config is not None:
        params[Params.MODEL] = model.describe(model_config)
    counts = doctor.counts(results)
    with interrupts_requested() as stop:
        run = tracking.Run.start(client, experiment_id, name, tags)
        with run_closed(run, stop):
            run.log_params(params)
            scores = doctor.family_scores(results)
            run.log_metrics(
                {f"passed_{family}": score for family, score in scores.items()}
                | {f"{Metrics.CHECKS}_{status}": n for status, n in counts.items()}
            )
            run.log_table(rows, "doctor.json")
            run.set_tags({Tags.NOTE: note(str(device), tags[Tags.DEVICE_NAME], counts, failures)})
    return len(failures)


def note(device: str, device_name: str, counts: dict[str, int], failures: list[str]) -> str:
    """The run's description: what failed or raised, and what could not be checked."""
    checked = sum(counts.values()) - counts[doctor.SKIPPED] - counts[doctor.UNSUPPORTED]
    if failures:
        verdict = f"{len(failures)} of {checked} checks failed or raised: " + "; ".join(failures)
    elif checked:
        verdict = f"all {checked} checks that ran passed"
    else:
        verdict = "no check could run"
    for status in (doctor.UNSUPPORTED, doctor.SKIPPED):
        if counts[status]:
            verdict += f"; {counts[status]} {status}"
    return f"doctor on {device} ({device_name}): {verdict}."
