"""Logged models through MLflow's own flavour: logging a trained PyTorch module as an MLflow
model (a LoggedModel linked to its run and to the run's final metrics), registering it,
and reading one back from any model URI.

No torch here: `mlflow.pytorch` imports it when a model is logged or loaded, by the training
room, which hands over the module and its example as plain arrays.
"""

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from pipeline.errors import UserError
from pipeline.tracking.store import redact_text

# The MLmodel metadata entry that holds what rebuilds the model in this pipeline.
METADATA_KEY = "pipeline"


def log(
    run_id: str,
    module,
    example,
    output,
    requirements: list[str],
    metadata: dict,
    final: list[str],
    step: int,
    dataset: tuple[str, str] | None = None,
    code_paths: list[str] | None = None,
    register: str | None = None,
) -> str:
    """Log `module` (on the CPU) as the MLflow model `model` of the run; return its model id.

    Serialised with torch.export (`pt2`), which loads in any process with torch and MLflow,
    without this package or the code that defined the module; a module torch cannot export is
    pickled instead, which needs its code (`code_paths`) to load. The signature and input
    example are the workload's real shape with a free batch dimension; the requirements are
    given, so nothing is inferred. `step` is the model's in the run: the training steps taken.
    The last point of each `final` metric (the test accuracy and loss, measured on `dataset`:
    its name and digest) is linked to the model: logged again with the model's id and its own
    timestamp, which the run's history keeps as the one point it is."""
    from mlflow.models import infer_signature

    common = {
        "name": "model",
        "input_example": example,
        "signature": infer_signature(example, output),
        "pip_requirements": requirements,
        "metadata": {METADATA_KEY: metadata},
        "code_paths": code_paths,
        "step": step,
        "run_id": run_id,
    }
    try:
        info = _log_pytorch(module, "pt2", common)
    except Exception as export_failure:  # torch.export cannot trace every module
        failed = mlflow.last_logged_model()
        if failed is not None and failed.source_run_id == run_id:
            MlflowClient().delete_logged_model(failed.model_id)
        metadata["pt2_export_failed"] = str(export_failure).splitlines()[0][:300]
        info = _log_pytorch(module, "pickle", common)
    name, digest = dataset or (None, None)
    client = MlflowClient()
    # MLflow links what the run has at the model's step itself (a run of one batch an epoch)
    done = {m.key for m in client.get_logged_model(info.model_id).metrics or []}
    linked = [
        Metric(key, m.value, m.timestamp, m.step, model_id=info.model_id, dataset_name=name,
               dataset_digest=digest, run_id=run_id)
        for key in final
        if key not in done
        for m in client.get_metric_history(run_id, key)[-1:]
    ]  # fmt: skip
    client.log_batch(run_id, metrics=linked)
    if register:
        _register(info.model_uri, register)
    return info.model_id


def _log_pytorch(module, serialization_format: str, common: dict):
    import mlflow.pytorch

    return mlflow.pytorch.log_model(module, serialization_format=serialization_format, **common)


def _register(model_uri: str, name: str) -> None:
    try:
        mlflow.register_model(model_uri, name)
    except MlflowException as e:
        raise UserError(f"cannot register the model as '{name}': {_reason(e)}") from None


def load(model_uri: str, dst: Path):
    """(the module on the CPU, the pipeline's metadata) of an MLflow model, or (None, None) when
    the URI holds no MLflow model (an artifact folder of loose files, as earlier versions
    logged); UserError when nothing can be read there."""
    import mlflow.pytorch
    from mlflow.models import Model

    try:
        metadata = Model.load(model_uri).metadata or {}
    except Exception as e:
        if _is_missing(e):
            return None, None
        raise UserError(
            f"no model logged by `pipeline train` at {model_uri}: {_reason(e)}"
        ) from None
    try:
        module = mlflow.pytorch.load_model(model_uri, dst_path=str(dst), map_location="cpu")
    except Exception as e:
        raise UserError(f"cannot load the model at {model_uri}: {_reason(e)}") from None
    return module, metadata.get(METADATA_KEY)


def _is_missing(e: Exception) -> bool:
    """The URI answered but holds no MLmodel file."""
    text = str(e)
    return "MLmodel" in text or "No such file" in text or "does not exist" in text


def _reason(e: Exception) -> str:
    lines = redact_text(str(e)).strip().splitlines()
    return lines[0] if lines else type(e).__name__
