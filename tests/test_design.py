"""The shape of the code, read from the files (imports inside functions count too): each of
pipeline/'s rooms keeps to its side of a boundary, the modules import each other without a
cycle, no module outgrows 400 lines, and nothing imports a private module of Typer or click.
The rules hold whole folders: a module added to compare/ is held to compare's rules."""

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter

from conftest import ROOT

PACKAGE = ROOT / "pipeline"
ROOMS = ("training", "doctor", "compare", "sweep", "tracking")

# Outside tracking/, the only modules that import MLflow themselves, and why.
MLFLOW_OUTSIDE_TRACKING = {
    "pipeline.compare.reading": "reads the selected runs and their baselines with search_runs",
    "pipeline.compare.stage": "reads histories, logs the compare run, tags the flagged ones",
    "pipeline.sweep.stage": "hands its children the tracking URI and reads their runs back",
}

# What cli imports: pipeline/'s own options (shared, and each command's own), console and
# UserError; each side's stage; devices for the `devices` command; and from tracking/ what
# turns an outcome into an exit code.
CLI_IMPORTS = {
    "pipeline.config",
    "pipeline.command_options",
    "pipeline.console",
    "pipeline.errors",
    "pipeline.devices",
    *(f"pipeline.{room}.stage" for room in ROOMS if room != "tracking"),
    "pipeline.tracking.lifecycle:Diverged",
    "pipeline.tracking.lifecycle:Interrupted",
    "pipeline.tracking.store:refusal",
    "pipeline.tracking.store:redact_text",
    "pipeline.tracking.runs:fail_run",  # ends FAILED the run `mlflow run` created
}


def dotted(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {dotted(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str) -> set[str]:
    """What a module imports, anywhere in it: 'pipeline.x.y' for a module, 'pipeline.x:name'
    for a name taken from one, the top-level name ('torch', 'mlflow') for anything else."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: a relative import; pipeline/ imports absolutely"
            for alias in node.names:
                whole = f"{node.module}.{alias.name}"
                found.add(whole if whole in MODULES else f"{node.module}:{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m if m.startswith("pipeline") else m.split(".")[0] for m in found}


def graph() -> dict[str, set[str]]:
    """module -> the pipeline modules it imports, with the packages that importing them runs."""
    edges = {}
    for module in MODULES:
        names = {m.split(":")[0] for m in imports(module) if m.startswith("pipeline")}
        parents = {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 1)}
        edges[module] = (names | parents) - {module}
    return edges


GRAPH = graph()


def reach(module: str) -> set[str]:
    """The module and every pipeline module that importing it may import."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += GRAPH[m]
    return seen


def room(name: str) -> list[str]:
    return [m for m in MODULES if m == f"pipeline.{name}" or m.startswith(f"pipeline.{name}.")]


def reaching(module: str, library: str) -> list[str]:
    """The modules through which `module` imports `library`, if it does."""
    return sorted(m for m in reach(module) if library in imports(m))


def test_compare_and_tracking_never_import_torch():
    for module in room("compare") + room("tracking"):
        through = reaching(module, "torch")
        assert not through, f"{module} imports torch through {through}"


def test_importing_compare_and_tracking_leaves_torch_out():
    """In a fresh interpreter, as `pipeline compare` runs."""
    names = ", ".join(room("compare") + room("tracking"))
    code = f"import sys, {names}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_compare_reaches_mlflow_only_in_its_stage_and_the_option_set_never():
    """The rules, records and renderers are plain data in, plain data out; so is config."""
    talkers = ("pipeline.compare.stage", "pipeline.compare.reading")
    pure = [m for m in room("compare") if m not in talkers] + ["pipeline.config"]
    for module in pure:
        for library in ("mlflow", "torch", "matplotlib"):
            through = reaching(module, library)
            assert not through, f"{module} imports {library} through {through}"


def test_matplotlib_only_in_plots():
    assert [m for m in MODULES if "matplotlib" in imports(m)] == ["pipeline.plots"]


def test_mlflow_outside_tracking_only_where_allowed():
    outside = {m for m in MODULES if "mlflow" in imports(m) and m not in room("tracking")}
    assert outside == set(MLFLOW_OUTSIDE_TRACKING)


def test_cli_imports_the_stages_and_what_makes_exit_codes():
    for room_name in ROOMS[:-1]:
        assert f"pipeline.{room_name}.stage" in MODULES, f"{room_name}/ has no stage.py"
    ours = {m for m in imports("pipeline.cli") if m.startswith("pipeline")}
    stray = {m for m in ours if m not in CLI_IMPORTS and m.split(":")[0] not in CLI_IMPORTS}
    assert not stray, f"cli imports {stray}"


def test_doctor_may_import_training_never_the_reverse():
    for module in room("training"):
        assert not set(room("doctor")) & reach(module), f"{module} reaches doctor/"


def test_tracking_imports_no_other_room():
    others = {m for name in ROOMS if name != "tracking" for m in room(name)}
    for module in room("tracking"):
        assert not others & reach(module), f"{module} reaches {others & reach(module)}"


def test_the_import_graph_has_no_cycle():
    try:
        order = list(TopologicalSorter(GRAPH).static_order())
    except CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None
    assert (
        order.index("pipeline.schema")
        < order.index("pipeline.tracking.runs")
        < order.index("pipeline.compare.stage")
    )


def test_a_cycle_would_be_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    try:
        list(TopologicalSorter(edges).static_order())
    except CycleError:
        return
    raise AssertionError("a cycle went unnoticed")


def test_no_module_over_400_lines_unless_it_is_one_table():
    for module, path in MODULES.items():
        lines = len(path.read_text().splitlines())
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert lines <= 400 or "One table" in docstring, f"{module}: {lines} lines"


def test_no_private_imports_from_typer_or_click():
    for module, path in MODULES.items():
        every = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                every.add(node.module)
            elif isinstance(node, ast.Import):
                every |= {alias.name for alias in node.names}
        private = {m for m in every if m.split(".")[0] in {"typer", "click"} and "._" in m}
        assert not private, f"{module} imports {private}"


# MLflow's documented Python API (its API reference): the only MLflow modules pipeline/ uses.
MLFLOW_PUBLIC = {
    "mlflow",
    "mlflow.client",
    "mlflow.entities",
    "mlflow.exceptions",
    "mlflow.pytorch",
    "mlflow.models",
    "mlflow.data",
    "mlflow.artifacts",
    "mlflow.environment_variables",
    "mlflow.system_metrics",
    "mlflow.server",
}


def mlflow_uses(tree: ast.AST) -> set[str]:
    """Every MLflow name a module reaches: `from X import Y` as X.Y, `import X` as X, and
    attribute chains on the name mlflow (`mlflow.store.db.utils.X` as that chain)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "mlflow":
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mlflow"}
        elif isinstance(node, ast.Attribute):
            chain = []
            while isinstance(node, ast.Attribute):
                chain.insert(0, node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id == "mlflow":
                found.add(".".join(["mlflow", *chain]))
    return found


def private_mlflow(name: str) -> bool:
    """Whether a dotted MLflow name lies outside MLFLOW_PUBLIC or is private (_x) in it: the
    longest importable module that prefixes it must be public, and the name after it too."""
    import importlib.util

    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            rest = parts[i : i + 1]
            return module not in MLFLOW_PUBLIC or any(p.startswith("_") for p in rest)
    return True


def test_pipeline_uses_only_mlflows_public_api():
    used = {
        (module, name)
        for module, path in MODULES.items()
        for name in mlflow_uses(ast.parse(path.read_text()))
    }
    assert used, "no MLflow use found: the reader is broken"
    internal = sorted((m, n) for m, n in used if private_mlflow(n))
    assert not internal, f"MLflow internals used: {internal}"


def test_the_public_api_check_catches_an_internal():
    tree = ast.parse(
        "import mlflow\nfrom mlflow.store.db import utils\n"
        "from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor\n"
        "mlflow.tracking._tracking_service.utils\nmlflow.set_tracking_uri('x')\n"
    )
    flagged = {n for n in mlflow_uses(tree) if private_mlflow(n)}
    assert {
        "mlflow.store.db.utils",
        "mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor",
        "mlflow.tracking._tracking_service.utils",
    } <= flagged
    assert "mlflow.set_tracking_uri" not in flagged
