"""Shared fixtures: a real sqlite tracking store per test, small synthetic data, a CLI runner."""

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "PIPELINE_HOST"):
    os.environ.pop(var, None)

ROOT = Path(__file__).resolve().parents[1]

# 640 training images at batch 64: 10 batches an epoch; lr 0.05 so that 2 epochs visibly learn.
SMALL = ["--dataset", "synthetic", "--train-size", "640", "--test-size", "128", "--lr", "0.05"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


# The modules whose tests drive many real processes, the longest first (from `--durations`),
# ahead of the rest: xdist's worksteal hands each test process half of the list and lets an
# idle one take over the other's waiting tests, so the long tests are spread out early
# instead of one of them running alone at the end. The live measurement marked `alone` comes
# before everything: while it runs the other process must wait, and at the start it waits
# least.
SLOW_FIRST = ("test_browser", "test_journeys", "test_trust", "test_auth", "test_faults",
              "test_sweep", "test_own_workload", "test_server")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}

    def order(item: pytest.Item) -> tuple[bool, int]:
        shares_the_machine = item.get_closest_marker("alone") is None
        return shares_the_machine, rank.get(item.path.stem, len(rank))

    items.sort(key=order)  # stable: each module's own order is kept


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A test marked `alone` runs while no other test does: the suite's two processes share
    the machine, and a live speed measurement must not share it. Every other test holds a
    shared lock; an `alone` test takes it exclusively, holding a turnstile meanwhile so that
    no new test starts while it waits. Held around the whole test, its fixtures' set-up and
    tear-down included: the other process's module and session fixtures (a server, a
    browser, a store) start only once the `alone` test is over."""
    import fcntl

    shared = item.config.cache.mkdir("machine-share")  # the same folder for both processes
    alone = item.get_closest_marker("alone") is not None
    with open(shared / "turnstile.lock", "w") as gate, open(shared / "machine.lock", "w") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        return (yield)


@pytest.fixture(autouse=True)
def in_own_folder(monkeypatch, tmp_path):
    """Every test runs in a folder of its own: what a store writes next to the working
    directory (./mlruns, artifacts) never lands in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One folder of synthetic data for the whole session (written once, as users' is)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty sqlite store as MLflow creates one, made once a session: MLflow takes a second
    or more to create a store (its schema's migrations), a copy takes milliseconds."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(tmp_path, empty_store) -> str:
    """A fresh sqlite tracking store: a copy of the empty one, whose Default experiment keeps
    its artifacts in this test's folder, where MLflow would have put them (./mlruns/0)."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        where = str(tmp_path / "mlruns" / "0")
        moved = db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (where,)
        )
        assert moved.rowcount == 1, "MLflow's empty store no longer has experiment 0"
    return f"sqlite:///{path}"


@pytest.fixture
def client(store):
    from mlflow import MlflowClient

    return MlflowClient(store)


@pytest.fixture
def cli(store, data_dir, capsys):
    """Run `python -m pipeline ...` in this process against the test's store (the commands run
    their stages in the process that parsed them, so this is the real path, minus the exec of
    the interpreter; tests/test_journeys.py drives real processes)."""

    def run(*args: str, data: bool = True) -> Result:
        from pipeline import cli as cli_module

        argv = ["pipeline", *args]
        if "--tracking-uri" not in args and args[0] != "devices":
            argv += ["--tracking-uri", store]
        if data and args[0] in ("train", "test", "sweep"):
            argv += ["--data-dir", str(data_dir)]
        capsys.readouterr()
        code = cli_module.execute(argv[1:])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def run_process(*args: str, env: dict | None = None, timeout: float = 300, **kw) -> Result:
    """Run a command in a real child process: exit codes, stderr and signals as users see them."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        list(args), capture_output=True, text=True, env=full_env, timeout=timeout, **kw
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def pipeline_process(*args: str, **kw) -> Result:
    return run_process(sys.executable, "-m", "pipeline", *args, **kw)


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user who has set nothing for MLflow or this pipeline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PIPELINE_"))}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", **extra}


def pipeline_in(folder: Path, *args: str, env: dict | None = None, check: bool = True) -> Result:
    """`python -m pipeline ...` as a real process in `folder`, as a user runs it (by default
    with nothing set for MLflow); asserts it succeeded unless check=False."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=folder,
        env=env if env is not None else user_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return Result(proc.returncode, proc.stdout, proc.stderr)


def only_run(client, experiment: str = "Default"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]
