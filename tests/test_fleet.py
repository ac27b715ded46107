"""A fleet of device machines driven from CI: devices proven real before a run, findings where
CI users look (job summary, annotations, JUnit XML), and the example workflow, Kubernetes
manifests, Dockerfile and install files checked against the tools that read them."""

import platform
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from importlib import metadata

import pytest
import torch
import yaml
from conftest import ROOT, SMALL, pipeline_in, user_env
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_compare import compare_json, log_run
from test_errors import assert_no_run

from pipeline import devices
from pipeline.compare import ci
from pipeline.compare.records import Finding
from pipeline.schema import Metrics, Tags

WORKFLOW = ROOT / "examples" / "github-actions" / "device-comparison.yml"
MANIFESTS = ROOT / "examples" / "kubernetes" / "job.yaml"
DATA = ROOT / "examples" / "kubernetes" / "data.yaml"
DOCKERFILE = ROOT / "examples" / "kubernetes" / "Dockerfile"
OOM = (
    "MPS backend out of memory (MPS allocated: 0 bytes, other allocations: 0 bytes, max "
    "allowed: 0 bytes). Tried to allocate 1.00 KB on private pool."
)


@pytest.fixture
def unusable_mps(monkeypatch):
    """NOT an Apple GPU: `mps` listed, and every allocation on it raising as it does on
    GitHub's hosted macOS runners (actions/runner-images#9918)."""
    monkeypatch.setattr(devices, "available", lambda: ["cpu", "mps"])
    real = torch.ones

    def ones(*args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "mps":
            raise RuntimeError(OOM)
        return real(*args, device=device, **kwargs)

    monkeypatch.setattr(torch, "ones", ones)


@pytest.mark.parametrize("command", ["train", "doctor"])
def test_an_unusable_device_is_refused_before_any_run(cli, client, unusable_mps, command):
    args = [command, "--device", "mps", *(SMALL if command == "train" else ["--quiet"])]
    result = cli(*args)
    assert result.code == 2
    assert result.stderr.strip() == f"error: device 'mps' is listed but unusable: {OOM}"
    assert_no_run(client)


def test_devices_lists_an_unusable_device_with_its_reason(cli, unusable_mps):
    result = cli("devices")
    assert result.code == 0
    text = " ".join(result.stdout.split())  # the table may wrap the reason
    assert "mps" in text and "unusable: MPS backend out of memory" in text
    assert re.search(r"cpu .* usable", text)


def test_a_sweep_skips_an_unusable_device(cli, client, unusable_mps):
    result = cli("sweep", "--devices", "cpu,mps", "--batch-sizes", "64", "--epochs", "1", *SMALL)
    assert result.code == 0, result.stderr
    assert f"skipping mps: device 'mps' is listed but unusable: {OOM}" in result.stderr


# --- findings where CI users look ------------------------------------------------------------


def flagged_store(client) -> tuple[str, str]:
    """A CPU run and an `mps` run that is slower and scores 0%: the M1's first evening."""
    cpu = log_run(client, "cpu", summary={Metrics.SAMPLES_PER_S: 1000})
    mps = log_run(client, "mps", accuracy=[0.0, 0.0, 0.0], summary={Metrics.SAMPLES_PER_S: 700})
    return cpu, mps


def test_under_github_actions_compare_writes_the_summary_and_annotations(store, client, tmp_path):
    flagged_store(client)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step's summary\n")
    env = user_env(GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
    junit = tmp_path / "out" / "junit.xml"
    args = ["compare", "--tracking-uri", store, "--no-plots", "--output-junit", str(junit)]
    result = pipeline_in(tmp_path, *args, env=env, check=False)
    assert result.code == 1, result.stderr
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::")]
    findings = [line for line in annotations if line.startswith(("::error", "::warning"))]
    kinds = sorted(re.match(r"::\w+ title=([\w-]+)", line)[1] for line in findings)
    assert kinds == ["accelerator-slower-than-cpu", "accuracy-inconsistent-with-loss",
                     "accuracy-mismatch"]  # fmt: skip
    assert all(line.count("::") == 2 for line in findings)  # one line each, escaped
    text = summary.read_text()
    assert text.startswith("earlier step's summary\n")  # appended, never overwritten
    assert "accelerator-slower-than-cpu" in text and "| mps |" in text
    assert "![" not in text and "No picture" not in text  # none the page could show

    suites = ET.parse(junit).getroot()  # the standard library reads it
    assert suites.tag == "testsuites" and suites.get("failures") == "1"
    (suite,) = suites.findall("testsuite")
    cases = {c.get("name").split(" @ ")[0]: c for c in suite.findall("testcase")}
    assert set(cases) == {"cpu", "mps"}
    assert cases["cpu"].find("failure") is None
    failure = cases["mps"].find("failure")
    assert set(failure.get("type").split(",")) == set(kinds)
    assert failure.text.count("[") == 3  # one line per finding


def test_elsewhere_compare_prints_no_annotations(store, client, tmp_path):
    flagged_store(client)
    summary = tmp_path / "summary.md"
    env = user_env(GITHUB_STEP_SUMMARY=str(summary))  # GITHUB_ACTIONS not set
    result = pipeline_in(tmp_path, "compare", "--tracking-uri", store, "--no-plots", env=env,
                         check=False)  # fmt: skip
    assert result.code == 1
    assert not any(line.startswith("::") for line in result.stdout.splitlines())
    assert not summary.exists()


def forty_wrong_accelerators(db) -> None:
    """40 groups, each a CPU run and an `mps` run that scores 0%: 80 error findings."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from compare_at_scale import write_runs

    runs = []
    for group in range(40):
        for device in ("cpu", "mps"):
            accuracy = 0.0 if device == "mps" else 0.8
            runs.append(
                {
                    "name": f"{device}-{group}",
                    "start": 1_000_000 + len(runs) * 1000,
                    "params": {"device": device, "model": "mlp", "batch_size": str(group + 1)},
                    "tags": {"pipeline.device": device, "pipeline.host": "h"},
                    "metrics": [("test_accuracy", accuracy, 1), ("test_loss", 0.3, 1)],
                }
            )
    write_runs(db, runs)


def test_under_github_actions_compare_keeps_to_githubs_limits(tmp_path):
    forty_wrong_accelerators(tmp_path / "mlflow.db")
    summary = tmp_path / "summary.md"
    env = user_env(GITHUB_ACTIONS="true", GITHUB_STEP_SUMMARY=str(summary))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["compare", "--tracking-uri", store, "--no-plots", "--output-dir", "report"]
    result = pipeline_in(tmp_path, *args, env=env, check=False)
    assert result.code == 1, result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == ci.MAX_ANNOTATIONS
    assert errors[-1].endswith("::71 more errors are in the job summary")
    assert all("accuracy" in line for line in errors[:-1])
    assert result.stdout.count("::warning") <= ci.MAX_ANNOTATIONS
    assert summary.stat().st_size < ci.MAX_SUMMARY_BYTES
    assert summary.read_text().count("accuracy-mismatch") >= 40  # every finding is there


def test_annotations_most_severe_first_and_at_most_ten_a_level():
    def finding(kind, severity, category, **values):
        return Finding("r", category, kind, severity, kind, "mps", "h", values=values)

    slow = [finding(f"slow{i}", "warning", "speed", speed_vs_cpu=1 - i / 20) for i in range(12)]
    wrong = [finding("accuracy-mismatch", "error", "accuracy")]
    failed = [finding("run-failed", "error", "run")]
    lines = ci.annotations([*slow, *failed, *wrong], notes=["a note"])
    assert [line.split(" title=")[0] for line in lines] == (
        ["::error"] * 2 + ["::warning"] * 10 + ["::notice"]
    )
    assert "accuracy-mismatch" in lines[0] and "run-failed" in lines[1]
    assert "slow11" in lines[2] and "slow10" in lines[3]  # the largest slowdown first
    assert lines[11] == "::warning title=3 more::3 more warnings are in the job summary"


def test_the_job_summary_is_cut_under_one_mib_with_a_pointer(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    report = "# Device comparison\n" + "| mps | h | 1.0 |\n" * 200_000  # 3.6 MB
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    ci.publish_to_github(report, [], [], sys.stdout, env, full_report="out/report.md")
    text = summary.read_text()
    assert len(text.encode()) < ci.MAX_SUMMARY_BYTES
    assert text.startswith("earlier step\n# Device comparison\n| mps |")
    assert text.rstrip().endswith("the whole report is out/report.md (uploaded by the workflow).**")


def test_annotations_escape_what_would_end_them():
    finding = Finding("r1", "speed", "slow,er", "warning", "50% slower\nsee: report", "mps", "h:1")
    (line,) = ci.annotations([finding])
    assert line == "::warning title=slow%2Cer (mps @ h%3A1)::50%25 slower%0Asee: report"


def test_junit_counts_runs_in_no_group_too():
    findings = [Finding("t1", "run", "run-failed", "error", "mps run ended FAILED", "mps", "h")]
    suites = ET.fromstring(ci.junit_xml([], findings))
    assert suites.get("tests") == "1" and suites.get("failures") == "1"
    assert suites.find("testsuite").get("name") == "runs in no group"


# --- the example workflow, manifests and Dockerfile, checked by the tools that read them ------


def test_the_workflow_is_valid_for_github():
    exe = shutil.which("check-jsonschema") or pytest.fail("check-jsonschema is a dev dependency")
    out = subprocess.run(
        [exe, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_workflow_runs_each_device_on_its_runner_then_one_gate():
    flow = yaml.safe_load(WORKFLOW.read_text())
    train = flow["jobs"]["train"]
    matrix = train["strategy"]["matrix"]["include"]
    legs = {leg["device"]: yaml.safe_load(leg["runner"]) for leg in matrix}
    assert legs["mps"] == ["self-hosted", "macOS", "ARM64"]
    assert "self-hosted" in legs["cuda"] and legs["cpu"] == ["ubuntu-latest"]
    assert train["strategy"]["fail-fast"] is False
    doctor_legs = {leg["device"] for leg in flow["jobs"]["doctor"]["strategy"]["matrix"]["include"]}
    assert doctor_legs == {"cuda", "mps"}  # a doctor leg per accelerator
    gate = flow["jobs"]["gate"]
    assert set(gate["needs"]) == {"train", "doctor"}
    (compare,) = [s["run"] for s in gate["steps"] if "pipeline compare" in s.get("run", "")]
    assert "tags.pipeline.git_commit = '${{ github.sha }}'" in compare
    assert "--no-fail" not in compare  # its exit code is the verdict
    assert "--fail-on error" in compare
    secrets = flow["env"]
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert secrets[name] == "${{ secrets." + name + " }}"
    assert flow["permissions"] == {"contents": "read"} and "group" in flow["concurrency"]


def steps_of(job: dict) -> list[str]:
    return [s.get("run", s.get("uses", "")) for s in job["steps"]]


def test_every_accelerator_runner_trains_on_its_cpu_too_in_a_venv_of_its_own():
    flow = yaml.safe_load(WORKFLOW.read_text())
    train = flow["jobs"]["train"]
    runs = steps_of(train)
    (cpu_leg,) = [s for s in train["steps"] if "device=cpu" in s.get("run", "")]
    assert cpu_leg["if"] == "matrix.device != 'cpu'"  # on the cuda and mps runners
    assert train["env"]["PIPELINE_HOST"] == "${{ matrix.host || runner.name }}"  # one host
    for job in (train, flow["jobs"]["doctor"]):
        steps = steps_of(job)
        venv = next(i for i, s in enumerate(steps) if "-m venv" in s)
        install = next(i for i, s in enumerate(steps) if "pip install" in s)
        assert venv < install and "$GITHUB_PATH" in steps[venv]
    self_hosted = [leg for leg in train["strategy"]["matrix"]["include"] if leg["device"] != "cpu"]
    assert all(leg["python"] == "python3.11" for leg in self_hosted)  # named, not `python`
    assert any("actions/setup-python@v6" in s for s in runs)


def test_the_gate_installs_what_compare_imports_and_no_torch():
    from test_design import MODULES, imports, reach

    gate = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gate"]
    (install,) = [s for s in steps_of(gate) if "--no-deps" in s]
    words = set(install.split())
    used = {"pipeline.cli", "pipeline.compare.stage", *reach("pipeline.compare.stage")}
    libraries = {
        name.split(":")[0]
        for m in used
        if m in MODULES
        for name in imports(m)
        if not name.startswith("pipeline") and name.split(":")[0] not in sys.stdlib_module_names
    }
    assert libraries - {"torch"} <= words, libraries - words
    assert "torch" not in words and "torchvision" not in words
    assert any("find_spec('torch')" in s for s in steps_of(gate))  # a step proves it absent


def test_a_pull_request_from_a_fork_skips_with_a_notice():
    flow = yaml.safe_load(WORKFLOW.read_text())
    jobs = flow["jobs"]
    fork = "github.event.pull_request.head.repo.fork"
    assert jobs["fork"]["if"] == fork and "::notice" in steps_of(jobs["fork"])[0]
    for name in ("train", "doctor", "gate"):
        assert f"!{fork}" in jobs[name]["if"], name


def test_the_kubernetes_manifests_are_valid(tmp_path):
    exe = shutil.which("kubernetes-validate") or pytest.fail("kubernetes-validate is a dev dep")
    # kubernetes-validate names each resource by metadata.name, which a Job with generateName
    # has not yet: the Jobs are checked under a name, the rest of them as written
    named = tmp_path / "job.yaml"
    named.write_text(re.sub(r"generateName: (\S+)-\n", r"name: \1\n", MANIFESTS.read_text()))
    for manifest in (named, DATA):
        out = subprocess.run([exe, "--strict", str(manifest)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    jobs = list(yaml.safe_load_all(MANIFESTS.read_text()))
    commands = [j["spec"]["template"]["spec"]["containers"][0]["command"] for j in jobs]
    assert [c[:5] for c in commands] == [
        ["python", "-m", "pipeline", "train", "--device"],
        ["python", "-m", "pipeline", "doctor", "--device"],
    ]
    for job in jobs:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        env = {e["name"]: e for e in container["env"]}
        assert "secretKeyRef" in env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]


def test_kubernetes_jobs_rerun_on_each_create_keep_their_data_and_never_run_as_root():
    jobs = list(yaml.safe_load_all(MANIFESTS.read_text()))
    (claim,) = yaml.safe_load_all(DATA.read_text())
    for job in jobs:
        assert "name" not in job["metadata"] and job["metadata"]["generateName"].endswith("-")
        pod = job["spec"]["template"]["spec"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        assert pod["securityContext"]["runAsNonRoot"] is True
    volumes = jobs[0]["spec"]["template"]["spec"]["volumes"]
    assert volumes == [
        {"name": "data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
    ]
    assert "kubectl create -f examples/kubernetes/job.yaml" in (ROOT / "docs" / "ci.md").read_text()
    lines = DOCKERFILE.read_text().splitlines()
    assert "USER 1000" in lines and not any(" -e " in line for line in lines if "pip" in line)


def readme_install() -> list[str]:
    """The README's set-up: its first command's install, as words."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Set-up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return shlex.split(block.strip().splitlines()[0].split("&&")[0])


def test_the_dockerfile_installs_as_the_readme_does():
    runs = [line[4:] for line in DOCKERFILE.read_text().splitlines() if line.startswith("RUN ")]
    (install,) = [shlex.split(r) for r in runs if "pip install" in r]
    readme = readme_install()
    assert readme[:2] == ["pip", "install"] and install[:2] == ["pip", "install"]
    ours = [w for w in install[2:] if w != "--no-cache-dir"]
    # the image has no test tools, and is no checkout to edit: not editable
    theirs = [w.replace(".[dev]", ".") for w in readme[2:] if w != "-e"]
    assert ours == theirs


def requirement_name(spec: str) -> str:
    return re.split(r"[\s\[<>=!~;]", spec.strip(), maxsplit=1)[0].lower()


def pinned() -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def public(version: str) -> str:
    """A version without its local label: 2.14.1+cpu is the tested 2.14.1."""
    return version.split("+")[0]


def installed_closure() -> dict[str, str]:
    """Every installed package the project's dependencies (dev extras included) need,
    transitively, markers evaluated here: {canonical name: version without its local label}."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    todo, seen, found = [(Requirement(r), "") for r in declared], set(), {}
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        key = (canonicalize_name(requirement.name), *sorted(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = metadata.distribution(requirement.name)
        found[key[0]] = public(dist.version)
        for needed in map(Requirement, dist.requires or []):
            todo += [(needed, e) for e in sorted(requirement.extras) or [""]]
    return found


def test_ranges_in_pyproject_the_tested_set_in_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert not [d for d in declared if "==" in d]  # ranges: installs into a team's environment
    pins = pinned()
    assert {canonicalize_name(requirement_name(d)) for d in declared} <= set(pins)
    for name in map(requirement_name, declared):  # what the tests run on is the tested set
        assert public(metadata.version(name)) == pins[canonicalize_name(name)], name
    assert readme_install() == ["pip", "install", "-e", ".[dev]", "-c", "constraints.txt"]


@pytest.mark.skipif(
    (platform.system(), platform.machine(), sys.version_info[:2]) != ("Linux", "x86_64", (3, 11)),
    reason="constraints.txt is the set the README's set-up installs on Linux x86-64, Python "
    "3.11; elsewhere pip installs other packages (no nvidia-* on a Mac)",
)
def test_constraints_are_exactly_the_installed_set():
    """Every package the set-up installed, dependencies of dependencies included, at its
    version (a local label such as +cpu aside); nothing more."""
    assert installed_closure() == pinned()


def test_conda_yaml_installs_the_tested_set():
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert "-c constraints.txt" in pip
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(p for p in pip if not p.startswith("-")) == sorted(runtime)
    assert f"python={sys.version_info.major}.{sys.version_info.minor}" in conda


def test_an_image_without_git_records_the_commit_it_was_built_from(monkeypatch):
    from pipeline.tracking import environment

    monkeypatch.setattr(environment, "_checkout_commit", lambda: None)  # as in the image
    monkeypatch.delenv("PIPELINE_COMMIT", raising=False)
    assert environment.git_commit() is None
    monkeypatch.setenv("PIPELINE_COMMIT", "0123abc")
    assert environment.git_commit() == "0123abc"


def test_the_gate_judges_a_commits_runs_against_every_earlier_commit(cli, client, tmp_path):
    def at(commit: str, speed: float) -> str:
        summary = {Metrics.SAMPLES_PER_S: speed}
        return log_run(client, "cpu", summary=summary, tags={Tags.GIT_COMMIT: commit})

    for _ in range(5):
        at("old", 1000)
    new = at("new", 500)
    result, report = compare_json(cli, tmp_path, "--filter", "tags.pipeline.git_commit = 'new'")
    assert [(f["kind"], f["run_id"]) for f in report["findings"]] == [("slower-than-history", new)]
    assert [r["run_id"] for g in report["groups"] for r in g["runs"]] == [new]  # judged: new
    assert result.code == 1


def test_a_selected_doctor_run_that_found_failures_fails_the_gate(cli, client, tmp_path):
    run = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    run_id = run.info.run_id
    for key, value in {Tags.STAGE: "doctor", Tags.DEVICE: "mps", Tags.HOST: "mac",
                       Tags.DOCTOR_FAILURES: "cast bool->float32"}.items():  # fmt: skip
        client.set_tag(run_id, key, value)
    client.log_metric(run_id, f"{Metrics.CHECKS}_pass", 85)
    client.log_metric(run_id, f"{Metrics.CHECKS}_fail", 3)
    client.set_terminated(run_id, "FINISHED")
    result, report = compare_json(cli, tmp_path, "--run-id", run_id)
    (finding,) = report["findings"]
    assert finding["kind"] == "doctor-failed" and result.code == 1
    assert "3 of 88 checks on mps disagree with the CPU: cast bool->float32" in finding["message"]


def test_under_mlflow_run_an_unusable_device_fails_its_run_with_the_reason(
    client, store, unusable_mps, monkeypatch, tmp_path
):
    """`mlflow run` creates the run before its command starts, and hands it over with
    MLFLOW_RUN_ID and MLFLOW_TRACKING_URI: the run it made ends FAILED and says why, nothing
    else is logged."""
    created = client.create_run(client.get_experiment_by_name("Default").experiment_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", created.info.run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir((tmp_path / "elsewhere").mkdir() or tmp_path / "elsewhere")
    from pipeline import cli as cli_module

    # no --tracking-uri (the cli fixture would add one): the store is the variable's
    assert cli_module.execute(["train", "--device", "mps", *SMALL]) == 2
    (run,) = client.search_runs(["0"])
    assert run.info.status == "FAILED" and not run.data.metrics and not run.data.params
    assert run.data.tags[Tags.FAILURE_REASON] == f"device 'mps' is listed but unusable: {OOM}"


def test_auto_passes_over_a_listed_device_that_fails(cli, client, unusable_mps):
    result = cli("train", "--device", "auto", "--epochs", "1", *SMALL, "--quiet")
    assert result.code == 0, result.stderr
    assert f"auto: mps is listed but unusable ({OOM}); not using it" in result.stderr
    (run,) = client.search_runs(["0"])
    assert run.data.tags[Tags.DEVICE] == "cpu"


def test_only_third_party_warnings_are_filtered():
    """Each filter names the module that warns, never the project's: its own deprecations
    surface in every test run."""
    filters = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    for spec in filters["ini_options"]["filterwarnings"]:
        module = (spec.split(":") + [""] * 4)[3]
        assert module and not re.match(module, "pipeline.training.stage"), spec
