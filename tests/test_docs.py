"""The documents and the MLflow project cannot drift from the program: every `python -m
pipeline ...` and `mlflow run ...` line in README.md, docs/ and the CI examples (workflow,
Kubernetes Jobs) parses against the real command lines (ours and MLflow's), and every
MLproject entry point is a command line we accept."""

import re
import shlex

import pytest
import typer
import yaml
from conftest import ROOT
from mlflow.cli import cli as mlflow_cli

from pipeline.cli import app

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "CONTRIBUTING.md"]
MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())
COMMANDS = typer.main.get_command(app)


def command_lines(path) -> list[str]:
    """Every shell command in the file's code blocks, continuation lines joined, `a && b`
    split, placeholders such as <run id> filled in."""
    blocks, block, language = [], None, ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if block is not None and language in ("", "bash", "sh", "console"):
                blocks.append("\n".join(block))
            block, language = (None, "") if block is not None else ([], line[3:].strip())
        elif block is not None:
            block.append(line)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"<[^>]+>", "abc123", re.sub(r"(^|\s)#.*$", "", line))
            lines += [part.strip() for part in line.split("&&") if part.strip()]
    return lines


def fill(line: str, env: dict[str, str]) -> str:
    """A shell line with the workflow's env variables ($NAME) filled in."""
    return re.sub(r"\$(\w+)", lambda m: env.get(m[1], m[0]), line)


def example_lines(path) -> list[str]:
    """The command lines of an example CI file: a workflow's `run:` steps (its env variables
    and GitHub's ${{ }} expressions filled in), a Kubernetes container's command."""
    lines = []
    for doc in yaml.safe_load_all(path.read_text()):
        env = {k: str(v) for k, v in (doc.get("env") or {}).items()}
        for job in (doc.get("jobs") or {}).values():
            lines += [fill(step["run"], env) for step in job.get("steps", []) if "run" in step]
        if doc.get("kind") == "Job":
            lines += [
                shlex.join(c["command"]) for c in doc["spec"]["template"]["spec"]["containers"]
            ]
    filled = []
    for line in lines:
        line = re.sub(r"\$\{\{\s*matrix\.device\s*\}\}", "cuda", line)
        filled.append(re.sub(r"\$\{\{[^}]*\}\}", "abc123", line.replace("\n", " ")))
    return filled


EXAMPLES = sorted((ROOT / "examples").rglob("*.y*ml"))


def invocations(prefix: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    found = []
    sources = [(p, command_lines) for p in DOCS] + [(p, example_lines) for p in EXAMPLES]
    for path, lines_of in sources:
        if not path.exists():
            continue
        for line in lines_of(path):
            if " ".join(prefix) not in line:
                continue
            words = shlex.split(line)
            for i in range(len(words)):
                if tuple(words[i : i + len(prefix)]) == prefix:
                    found.append((f"{path.name}: {line}", words[i + len(prefix) :]))
    return found


def parse_ours(args: list[str]) -> None:
    """Parse (and check) a command line the way `python -m pipeline` does, running nothing."""
    name, *rest = args
    assert name in COMMANDS.commands, f"no command {name!r}"
    COMMANDS.commands[name].make_context(name, rest)


PIPELINE_LINES = invocations(("python", "-m", "pipeline"))
MLFLOW_RUN_LINES = invocations(("mlflow", "run"))


def test_the_documents_show_both_ways_of_running():
    assert len(PIPELINE_LINES) >= 8 and len(MLFLOW_RUN_LINES) >= 5
    from_examples = [line for line, _ in PIPELINE_LINES + MLFLOW_RUN_LINES if ".y" in line]
    assert len(from_examples) >= 5  # the workflow's and the Kubernetes Jobs' commands


@pytest.mark.parametrize(("line", "args"), PIPELINE_LINES, ids=[x for x, _ in PIPELINE_LINES])
def test_every_pipeline_line_parses(line, args):
    parse_ours(args)


@pytest.mark.parametrize(("line", "args"), MLFLOW_RUN_LINES, ids=[x for x, _ in MLFLOW_RUN_LINES])
def test_every_mlflow_run_line_names_what_exists(line, args):
    ctx = mlflow_cli.commands["run"].make_context("run", args)  # MLflow's own options
    entry = ctx.params["entry_point"]
    assert entry in MLPROJECT["entry_points"], f"no entry point {entry!r}"
    declared = MLPROJECT["entry_points"][entry]["parameters"]
    for pair in ctx.params["param_list"]:
        assert pair.split("=")[0] in declared, f"{entry} has no parameter {pair!r}"


@pytest.mark.parametrize("entry", sorted(MLPROJECT["entry_points"]))
def test_every_mlproject_entry_point_is_a_command_we_accept(entry):
    """Each parameter is used, and the command, with every default (or a stand-in for a
    required one) filled in, parses against the CLI: no parameter that cannot take effect."""
    spec = MLPROJECT["entry_points"][entry]
    # as `mlflow run` substitutes them: each value shell-quoted (an empty one is '')
    values = {
        k: shlex.quote(str(p.get("default", "abc123"))) for k, p in spec["parameters"].items()
    }
    for key in values:
        assert "{" + key + "}" in spec["command"], f"{entry}: parameter {key} is never used"
    words = shlex.split(spec["command"].format(**values))
    assert words[:3] == ["python", "-m", "pipeline"]
    parse_ours(words[3:])


def test_a_wrong_option_would_be_caught():
    with pytest.raises(Exception, match="No such option"):
        parse_ours(["train", "--devcie", "cpu"])
    with pytest.raises(Exception, match="greater than or equal to 1"):
        parse_ours(["train", "--epochs", "0"])


def test_the_readme_is_a_users_document():
    """Pitch, set-up, journeys, reading a finding; details live in docs/."""
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 12_000
    for link in re.findall(r"\]\(((?:docs/|CONTRIBUTING)[^)#]+)\)", text):
        assert (ROOT / link).exists(), link
