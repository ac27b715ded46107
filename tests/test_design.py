"""The shape of the code: pipeline/'s modules import each other without a cycle, counting the
imports inside functions too, and nothing imports a private module of Typer or click."""

import ast
from graphlib import CycleError, TopologicalSorter

from conftest import ROOT

PACKAGE = ROOT / "pipeline"


def imports_of(source: str) -> tuple[set[str], set[str]]:
    """(the pipeline modules a file imports, anywhere in it; every module it imports)."""
    ours, every = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            every.add(node.module)
            if node.module == "pipeline":
                ours |= {alias.name for alias in node.names}
            elif node.module.startswith("pipeline."):
                ours.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                every.add(alias.name)
                if alias.name.startswith("pipeline."):
                    ours.add(alias.name.split(".")[1])
    return ours, every


def graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    edges = {}
    for path in PACKAGE.glob("*.py"):
        ours, _ = imports_of(path.read_text())
        edges[path.stem] = (ours & modules) - {path.stem}
    return edges


def test_the_import_graph_has_no_cycle():
    try:
        order = list(TopologicalSorter(graph()).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None
    assert order.index("schema") < order.index("tracking") < order.index("compare")


def test_a_cycle_would_be_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    try:
        list(TopologicalSorter(edges).static_order())
    except CycleError:
        return
    raise AssertionError("a cycle went unnoticed")


def test_the_rules_and_records_are_free_of_io():
    """The rules are pure functions over records: no MLflow, no torch, no matplotlib."""
    for name in ("records", "rules", "render", "config"):
        _, every = imports_of((PACKAGE / f"{name}.py").read_text())
        heavy = {m for m in every if m.split(".")[0] in {"mlflow", "torch", "matplotlib"}}
        assert not heavy, f"{name} imports {heavy}"


def test_no_private_imports_from_typer_or_click():
    for path in PACKAGE.glob("*.py"):
        _, every = imports_of(path.read_text())
        private = {m for m in every if m.split(".")[0] in {"typer", "click"} and "._" in m}
        assert not private, f"{path.name} imports {private}"
