"""The doctor stage: run the fixed battery and the operations of your own workload on a
device against the CPU, print a summary line and the checks that failed, raised or are
unsupported (all of them with --verbose; the table and the line are drawn here), and log
them as a run of stage `doctor`."""

import json
from dataclasses import asdict, replace
from pathlib import Path

from rich.table import Table

from pipeline import devices
from pipeline.config import DataSpec, RunTarget
from pipeline.console import cell, err, out
from pipeline.doctor import battery, checks, replay
from pipeline.schema import Metrics, Params, Stages, Tags
from pipeline.tracking import runs as tracking
from pipeline.tracking.lifecycle import interrupts_requested, run_closed
from pipeline.training import data, model
from pipeline.training.stage import device_tags


def checks_for(
    model_config: dict | None, precision: str, optimizer: dict | None = None
) -> list[checks.Check]:
    """The battery (under tf32 its accumulating fp32 checks in TF32 too), then one training
    step of the workload, recorded on the CPU, operation by operation."""
    selected = list(battery.CHECKS)
    if precision == "tf32":
        selected += [
            replace(c, name=f"{c.name}, tf32", precision="tf32")
            for c in battery.CHECKS
            if c.accumulates and c.precision == "fp32"
        ]
    if model_config is not None:
        selected += replay.checks_of(model_config, precision, optimizer)
    return selected


def run(
    device_spec: str,
    target: RunTarget,
    model_config: dict | None = None,
    precision: str = "fp32",
    output_json: Path | None = None,
    quiet: bool = False,
    data_spec: DataSpec | None = None,
    optimizer: dict | None = None,
    verbose: bool = False,
) -> int:
    """Check the device's operations against the CPU's, print and log them; return the number
    of checks that failed or raised (an `error` is a failure), or 1 when nothing could be
    checked (no check passed or failed: every one unsupported, skipped or raising). The
    model's step is recorded on the data set's input shape (`data_spec`), with its
    optimizer. The table lists what needs a look (LISTED), or every check when `verbose`."""
    device = devices.resolve(device_spec)
    devices.precision(precision, device)  # one line when the device cannot run it
    if model_config is not None:
        if data_spec is not None:
            model_config = model_config | data.input_of(data_spec)
        model.checked(model_config)  # a bad --model is one line, before anything is logged
    client, experiment_id = tracking.open_experiment(target.tracking_uri, target.experiment)
    results = checks.run_all(checks.on(device), checks_for(model_config, precision, optimizer))
    rows = [asdict(r) for r in results]
    failures = [checks.describe_failure(r) for r in results if r.status in checks.FAILURES]
    listed = rows if verbose else [r for r in rows if r["status"] in LISTED]
    if listed and not quiet:
        out.print(checks_table(listed, str(device), len(rows)))
    out.print(summary_line(rows, str(device)))
    if output_json:
        output_json.write_text(json.dumps({"device": str(device), "checks": rows}, indent=2))

    tags = device_tags(device, Stages.DOCTOR, target.host)
    tags[Tags.DOCTOR_FAILURES] = "; ".join(failures)[:5000]
    name = target.run_name or tracking.unique_run_name(client, experiment_id, f"doctor-{device}")
    params = {Params.DEVICE: str(device), Params.PRECISION: precision, "checks": len(results)}
    if model_config is not None:
        params[Params.MODEL] = model.describe(model_config)
        shape, classes = model.input_of(model_config)
        params |= {Params.INPUT_SHAPE: "x".join(map(str, shape)), Params.NUM_CLASSES: classes}
        params[Params.OPTIMIZER] = (optimizer or {}).get("name", "sgd")
    counts = checks.counts(results)
    with interrupts_requested() as stop:
        run = tracking.Run.start(client, experiment_id, name, tags)
        with run_closed(run, stop):
            run.log_params(params)
            scores = checks.family_scores(results)
            run.log_metrics(
                {f"passed_{family}": score for family, score in scores.items()}
                | {f"{Metrics.CHECKS}_{status}": n for status, n in counts.items()}
            )
            run.log_table(rows, "doctor.json")
            run.set_tags({Tags.NOTE: note(str(device), tags[Tags.DEVICE_NAME], counts, failures)})
    out.print(f"doctor run {run.run_id} logged", markup=False, highlight=False)
    if not counts[checks.PASS] and not counts[checks.FAIL]:
        err.print(nothing_checked(str(device), counts), highlight=False)
        return max(len(failures), 1)
    return len(failures)


def nothing_checked(device: str, counts: dict[str, int]) -> str:
    """'nothing could be checked on mps: 40 unsupported, 8 errors'."""
    unsupported, errors = counts[checks.UNSUPPORTED], counts[checks.ERROR]
    return f"nothing could be checked on {device}: {unsupported} unsupported, {errors} errors"


def note(device: str, device_name: str, counts: dict[str, int], failures: list[str]) -> str:
    """The run's description: what failed or raised, and what could not be checked."""
    checked = sum(counts.values()) - counts[checks.SKIPPED] - counts[checks.UNSUPPORTED]
    if failures:
        listed = "; ".join(failures)[:5000]  # within a tag's limit; doctor.json has them all
        verdict = f"{len(failures)} of {checked} checks failed or raised: {listed}"
    elif checked:
        verdict = f"all {checked} checks that ran passed"
    else:
        verdict = "no check could run"
    for status in (checks.UNSUPPORTED, checks.SKIPPED):
        if counts[status]:
            verdict += f"; {counts[status]} {status}"
    return f"doctor on {device} ({device_name}): {verdict}."


COLUMNS = ("status", "family", "name", "shape", "dtype", "layout")
# What doctor lists without --verbose: the checks that need a look.
LISTED = (checks.FAIL, checks.ERROR, checks.UNSUPPORTED)


def checks_table(rows: list[dict], device: str, of: int) -> Table:
    """One row a check, failures first (as given); the title says when `rows` are some of
    the `of` checks."""
    title = f"doctor: {device} against the CPU"
    if len(rows) < of:
        title += f": the {len(rows)} of {of} checks that failed, raised or are unsupported"
        title += " (--verbose lists all)"
    table = Table(title=title, title_justify="left")
    for heading in (*COLUMNS, "max abs diff", "mismatch", "tolerance", "what"):
        table.add_column(heading, overflow="fold")
    colour = {"fail": "red", "error": "red", "unsupported": "yellow", "skipped": "dim"}
    for r in rows:
        c = colour.get(r["status"], "green")
        table.add_row(
            f"[{c}]{r['status']}[/{c}]",
            *(str(r[k]) for k in COLUMNS[1:]),
            cell(r["max_abs_diff"], "{:.3g}"),
            cell(r["mismatch_fraction"], "{:.1%}"),
            tolerance_text(r),
            r["detail"] or (r["reference"] if r["status"] != "pass" else ""),
        )
    return table


def tolerance_text(r: dict) -> str:
    """'exact', or 'atol 1e-05·s + rtol 1.3e-06' (s: the output's scale)."""
    if r["atol"] is None:
        return "exact" if r["status"] in ("pass", "fail") else ""
    return f"atol {r['atol']:g}·s + rtol {r['rtol']:g}"


def summary_line(rows: list[dict], device: str) -> str:
    """'mps: 45 of 47 checks passed; 2 failed: ...; 1 error: ...; 2 skipped'."""
    line = f"{device}: {sum(r['status'] == 'pass' for r in rows)} of {len(rows)} checks passed"
    for status, word in (("fail", "failed"), ("error", "error"), ("unsupported", "unsupported")):
        names = [r["name"] for r in rows if r["status"] == status]
        if names:
            line += f"; {len(names)} {word}: {', '.join(names)}"
    skipped = sum(r["status"] == "skipped" for r in rows)
    return line + (f"; {skipped} skipped (random)" if skipped else "")
