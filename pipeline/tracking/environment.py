"""The environment a run records, and collecting the process-wide part of it.

ENVIRONMENT is the one list of what a finding can attribute a difference to: a run records
each of these as a tag, and every finding that compares a run with a baseline (another
device's run, its own history, the run whose weights a test run evaluated) names those whose
value differs. The process-wide ones are collected here; torch's and the device's (device
name, CUDA, driver, host allocator) by the stages that load torch.
"""

import getpass
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import pipeline
from pipeline.schema import Tags

# (name in a finding's values, tag, label in a message), in the order a message lists them.
ENVIRONMENT = (
    ("torch_version", Tags.TORCH_VERSION, "torch"),
    ("cuda_version", Tags.TORCH_CUDA, "CUDA"),
    ("driver_version", Tags.GPU_DRIVER, "driver"),
    ("cudnn_version", Tags.CUDNN_VERSION, "cuDNN"),
    ("fp32_matmul", Tags.FP32_MATMUL, "fp32 matmul"),
    ("fp32_conv", Tags.FP32_CONV, "fp32 conv"),
    ("tf32_override", Tags.TF32_OVERRIDE, "TF32 override"),
    ("optimizer_impl", Tags.OPTIMIZER_IMPL, "optimizer"),
    ("deterministic", Tags.DETERMINISTIC, "deterministic algorithms"),
    ("platform", Tags.PLATFORM, "OS"),
    ("python_version", Tags.PYTHON_VERSION, "Python"),
    ("device_name", Tags.DEVICE_NAME, "device"),
    ("host", Tags.HOST, "host"),
    ("host_allocator", Tags.HOST_ALLOCATOR, "host allocator"),
    ("mlflow_version", Tags.MLFLOW_VERSION, "MLflow"),
    ("pipeline_version", Tags.PIPELINE_VERSION, "pipeline"),
    ("git_commit", Tags.GIT_COMMIT, "commit"),
)


def collect() -> dict[str, str]:
    """The process-wide part of the environment, as tags (torch's version is recorded with
    the device's, by the stages that load torch)."""
    tags = {
        Tags.PYTHON_VERSION: platform.python_version(),
        Tags.PLATFORM: platform.platform(),
        Tags.MLFLOW_VERSION: importlib.metadata.version("mlflow"),
        Tags.PIPELINE_VERSION: pipeline.__version__,
    }
    commit = git_commit()
    if commit:
        tags[Tags.GIT_COMMIT] = commit
    return tags


def run_context() -> dict[str, str]:
    """MLflow's standard tags of a run started here, as a fluent mlflow.start_run records
    them: who (the login name), what (the program, as MLflow names a local source) and which
    commit (this code's)."""
    tags = {
        Tags.USER: _user(),
        Tags.SOURCE_NAME: str(Path(sys.argv[0]).resolve()) if sys.argv and sys.argv[0] else "",
        Tags.SOURCE_TYPE: "LOCAL",
    }
    if commit := git_commit():
        tags[Tags.SOURCE_COMMIT] = commit
    return {k: v for k, v in tags.items() if v}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no user entry, as in some containers
        return ""


def git_commit() -> str | None:
    """The commit of this code: its checkout's, else PIPELINE_COMMIT (an image without .git,
    built from a known commit), else None."""
    return _checkout_commit() or os.environ.get("PIPELINE_COMMIT") or None


def _checkout_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(pipeline.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
