"""What --help and --version show: every command's options in panels by concern, and every
option that has a default showing it, read back from the rendered help at a wide and at a
100-column terminal (Rich once cut or dropped `[default: ...]`)."""

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import typer
from conftest import pipeline_process, run_process

import pipeline
from pipeline.cli import app

COMMANDS = typer.main.get_command(app).commands
PANELS = {
    "train": ["Options", "Workload", "Data", "Tracking", "Output"],
    "test": ["Options", "Workload", "Data", "Tracking", "Output"],
    "compare": ["Options", "Selection", "Judging", "Tracking", "Output"],
    "sweep": ["Options", "Grid", "Workload", "Data", "Tracking", "Output"],
    "doctor": ["Options", "Workload", "Data", "Tracking", "Output"],
    "devices": ["Options"],
}


def help_text(cli, monkeypatch, command: str, columns: int) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    result = cli(command, "--help")
    assert result.code == 0, result.stderr
    return result.stdout


def rows(text: str) -> dict[str, list[str]]:
    """Each option's row of a rendered --help: its first name -> the words of all its lines
    (an option's help wraps over several lines, beside the other columns' words)."""
    found, current = {}, None
    for line in text.splitlines():
        if named := re.match(r"│\s+(?:\*\s+)?(--[\w-]+)", line):
            current = found.setdefault(named.group(1), [])
        elif not line.startswith("│"):
            current = None
        if current is not None:
            current += line.replace("│", " ").split()
    return found


def shown_default(words: list[str]) -> str | None:
    """'[default: ...]' as one row shows it, or None."""
    joined = " ".join(words)
    start = joined.find("[default: ")
    return None if start < 0 else joined[start : joined.index("]", start) + 1]


def has_default(option) -> bool:
    """An option with a value when it is not given: all but those whose absence is None, and
    plain flags (--quiet), whose absence is off."""
    plain_flag = option.is_flag and not option.secondary_opts and option.default is False
    return isinstance(option.show_default, str) or (option.default is not None and not plain_flag)


def test_the_checks_read_a_default_and_its_absence():
    line = "│ --epochs    <int range> [x>=1]   Epochs                 │"
    more = "│                                  [default: 10]          │"
    assert shown_default(rows(f"{line}\n{more}\n╰──╯")["--epochs"]) == "[default: 10]"
    assert shown_default(rows(f"{line}\n╰──╯")["--epochs"]) is None


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_default_is_shown_and_the_options_are_grouped(cli, monkeypatch, command):
    wide = rows(help_text(cli, monkeypatch, command, 400))  # one line an option
    options = [p for p in COMMANDS[command].params if p.param_type_name == "option"]
    for option in options:
        name = next(o for o in option.opts if o.startswith("--"))
        assert name in wide, f"{command} {name}: not in --help"
        if has_default(option):
            assert shown_default(wide[name]), f"{command} {name}: its default is not shown"
    # At 100 columns, where words wrap: each default's words, in order, none cut short.
    text = help_text(cli, monkeypatch, command, 100)
    narrow = rows(text)
    for name, words in wide.items():
        assert name in narrow, f"{command} {name}: its name is cut at 100 columns"
        if default := shown_default(words):
            left = iter(narrow[name])
            cut = [w for w in default.split() if w not in left]
            assert not cut, f"{command} {name}: {cut} of {default} cut at 100 columns"
    panels = [line.split("─ ")[1].split(" ")[0] for line in text.splitlines() if "╭─ " in line]
    assert panels == PANELS[command]


def test_the_defaults_that_are_no_value_say_what_happens(cli, monkeypatch):
    text = help_text(cli, monkeypatch, "train", 400)
    for default in (
        "[default: (MLflow's own, sqlite:///mlflow.db in this folder)]",
        "[default: (the one `mlflow run` chose, else MLflow's Default)]",
        "[default: (hostname)]",
        "[default: (what the run is)]",
        "[default: (all; synthetic: 60000)]",
        "[default: (all; synthetic: 10000)]",
        "[default: (off for fashion-mnist, mnist and synthetic; on for the others)]",
    ):
        assert default in text, default
    compare = help_text(cli, monkeypatch, "compare", 400)
    assert "[default: (none: every finished run)]" in compare


def test_version_prints_the_installed_version_and_exits_0():
    """The version runs record (pipeline.version), which is the one pyproject installs."""
    assert metadata.version("device-comparison-pipeline") == pipeline.__version__
    expected = f"pipeline {pipeline.__version__}\n"
    script = Path(sys.executable).with_name("pipeline")  # the installed console script
    for result in (
        pipeline_process("--version"),
        *([run_process(str(script), "--version")] if script.exists() else []),
    ):
        assert (result.code, result.stdout, result.stderr) == (0, expected, "")


def test_a_flag_off_by_default_has_no_form_that_turns_it_off():
    """`--no-deterministic` did nothing and took a column of its own, cutting option names
    and help at 80 columns: only flags that are on by default have a `--no-` form."""
    for command in COMMANDS.values():
        for option in command.params:
            if getattr(option, "is_flag", False) and option.default is False:
                assert not option.secondary_opts, f"{command.name} {option.opts}"
