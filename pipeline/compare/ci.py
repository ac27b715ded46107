"""What CI systems show of a comparison: JUnit XML, which they render as test results (a test
case per group and device, a failure per finding), and under GitHub Actions the job summary
and the workflow annotations, within GitHub's limits. Plain data in (compare's tables and
findings), text out; `publish_to_github` is the one function that writes."""

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from pipeline.compare.records import Finding


def junit_xml(
    tables: list[dict], findings: list[Finding], failing: list[Finding] | None = None
) -> str:
    """A <testsuite> per group, a <testcase> per device and host in it (its runs, a sweep
    cell's repeats among them), a <failure> for the `failing` findings on those runs (all by
    default) and the others in its <system-out>. Findings on runs in no group (a test run
    without its source, a failed doctor run) make a suite of their own."""
    failing_ids = {id(f) for f in (findings if failing is None else failing)}
    placed: set[int] = set()
    suites = ET.Element("testsuites", name="pipeline compare")
    for table in tables:
        suite = ET.SubElement(suites, "testsuite", name=table["title"])
        cases: dict[str, list[Finding]] = {}
        for row in table["runs"]:
            case = f"{row['device']} @ {row['host']}"
            mine = [f for f in findings if f.run_id in row["run_ids"]]
            cases.setdefault(case, []).extend(f for f in mine if id(f) not in placed)
            placed.update(id(f) for f in mine)
        for case, found in cases.items():
            _case(suite, table["title"], case, found, failing_ids)
    rest = [f for f in findings if id(f) not in placed]
    if rest:
        suite = ET.SubElement(suites, "testsuite", name="runs in no group")
        by_case: dict[str, list[Finding]] = {}
        for f in rest:
            by_case.setdefault(f"{f.device or f.run_name} @ {f.host}", []).append(f)
        for case, found in by_case.items():
            _case(suite, "runs in no group", case, found, failing_ids)
    for suite in suites:
        cases = suite.findall("testcase")
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(len(c.findall("failure")) > 0 for c in cases)))
    suites.set("tests", str(sum(int(s.get("tests")) for s in suites)))
    suites.set("failures", str(sum(int(s.get("failures")) for s in suites)))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _case(
    suite: ET.Element, classname: str, name: str, found: list[Finding], failing_ids: set[int]
) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name)
    failed = [f for f in found if id(f) in failing_ids]
    passed = [f for f in found if id(f) not in failing_ids]
    if failed:
        failure = ET.SubElement(
            case,
            "failure",
            message="; ".join(f"{f.kind}: {f.message}" for f in failed)[:1000],
            type=",".join(sorted({f.kind for f in failed})),
        )
        failure.text = "\n".join(f"[{f.kind}] run {f.run_id}: {f.message}" for f in failed)
    if passed:  # below the level that fails the gate: shown, not failed
        ET.SubElement(case, "system-out").text = "\n".join(
            f"[{f.severity} {f.kind}] run {f.run_id}: {f.message}" for f in passed
        )


# GitHub shows at most 10 annotations of each level a step, and a step's summary up to 1 MiB.
MAX_ANNOTATIONS = 10
MAX_SUMMARY_BYTES = 1024 * 1024


def annotations(findings: list[Finding], notes: list[str] = ()) -> list[str]:
    """GitHub Actions workflow commands: `::error title=KIND::MESSAGE` (or ::warning, by the
    finding's severity) per finding, `::notice` per note; escaped as the runner expects. At
    most MAX_ANNOTATIONS a level, the most severe first; when there are more, the last says
    how many more the job summary holds."""
    levels: dict[str, list[tuple[str, str]]] = {"error": [], "warning": [], "notice": []}
    for f in sorted(findings, key=severity_rank):
        level = "error" if f.severity == "error" else "warning"
        levels[level].append(
            (f"{f.kind} ({f.device} @ {f.host})" if f.device else f.kind, f.message)
        )
    levels["notice"] = [("compare", note) for note in notes if note]
    lines = []
    for level, found in levels.items():
        shown = found if len(found) <= MAX_ANNOTATIONS else found[: MAX_ANNOTATIONS - 1]
        lines += [f"::{level} title={_property(t)}::{_data(m)}" for t, m in shown]
        if len(shown) < len(found):
            more = len(found) - len(shown)
            lines.append(
                f"::{level} title={_property(f'{more} more')}::{more} more {level}s are in the "
                "job summary"
            )
    return lines


def severity_rank(f: Finding) -> tuple:
    """Most severe first: errors, wrong results before failed runs before slow ones, and
    among speed findings the largest slowdown."""
    ratio = f.values.get("speed_vs_cpu", f.values.get("speed_vs_history", 1.0))
    return (f.severity != "error", CATEGORY_ORDER.get(f.category, 3), ratio or 1.0)


CATEGORY_ORDER = {"accuracy": 0, "run": 1, "speed": 2}


def summary_within_limit(report_md: str, room: int, full_report: str) -> str:
    """The report cut at whole lines to fit `room` bytes, with a last line pointing to the
    full report when it was cut."""
    text = report_md.rstrip() + "\n"
    if len(text.encode()) <= room:
        return text
    cut = (
        f"\n**The job summary is cut here at GitHub's 1 MiB limit: the whole report is "
        f"{full_report}.**\n"
    )
    budget = room - len(cut.encode())
    kept, size = [], 0
    for line in text.splitlines(keepends=True):
        size += len(line.encode())
        if size > budget:
            break
        kept.append(line)
    return "".join(kept) + cut


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def on_github_actions(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get("GITHUB_ACTIONS") == "true"


def publish_to_github(
    report_md: str,
    findings: list[Finding],
    notes: list[str],
    out: TextIO,
    environ: Mapping[str, str] = os.environ,
    full_report: str | None = None,
) -> None:
    """Under GitHub Actions: the report appended to the job summary ($GITHUB_STEP_SUMMARY),
    within what is left of its 1 MiB, and the findings printed as annotations."""
    summary = environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        path = Path(summary)
        room = MAX_SUMMARY_BYTES - (path.stat().st_size if path.exists() else 0) - 1024
        with path.open("a", encoding="utf-8") as f:
            where = f"{full_report} (uploaded by the workflow)" if full_report else ""
            where = where or "report.md in the compare run's artifacts"
            f.write(summary_within_limit(report_md, room, where))
    for line in annotations(findings, notes):
        print(line, file=out, flush=True)
