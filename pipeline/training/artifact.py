"""The model a train run logs, and loading it back on any device.

`train` logs the final model as an MLflow model (`model/`, MLflow's pytorch flavour: see
tracking/models.py), with what rebuilds it here (its config) in the model's metadata. `test`
loads one from `runs:/<id>/model`, `models:/<name>/<version>`, `models:/m-<id>` or a local
folder, and also the loose files earlier versions logged (`state_dict.pt`, `config.json`)."""

import contextlib
import copy
import json
import sys
from pathlib import Path

import torch

from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.tracking import models
from pipeline.tracking import runs as tracking
from pipeline.training import model

MODEL_ARTIFACT = "model"


def config_of(run_id: str, net_config: dict, cfg: TrainConfig, device: torch.device) -> dict:
    """What rebuilds the model and its test data: stored with the model."""
    return {
        "run_id": run_id,
        "model": net_config,
        "data": {
            "name": cfg.data.name,
            "seed": cfg.data.seed,
            "train_size": cfg.data.train_size,
            "test_size": cfg.data.test_size,
            "input_shape": list(cfg.data.input_shape) if cfg.data.input_shape else None,
            "num_classes": cfg.data.num_classes,
        },
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "trained_on": str(device),
    }


def log(
    run: tracking.Run,
    net: torch.nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    model_config: dict,
    steps: int,
    example: torch.Tensor,
    final: list[str],
    dataset: tuple[str, str] | None = None,
    register: str | None = None,
) -> str:
    """Log the trained module (a CPU copy, in eval mode) as the run's MLflow model, linked to
    its `final` test metrics (measured on `dataset`: name, digest); return the model id.
    `model_config` rebuilds it (the model built for the data's shape); `steps` is the number
    of training steps taken; `example` is a batch of the real inputs."""
    cpu_net = copy.deepcopy(net).cpu().eval()
    example = example[:2].detach().cpu().float()
    with torch.no_grad():
        output = cpu_net(example)
    with _torch_default_fp32_flags():
        return models.log(
            run.run_id,
            cpu_net,
            example.numpy(),
            output.numpy(),
            requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata=config_of(run.run_id, model_config, cfg, device),
            final=final,
            step=steps,
            dataset=dataset,
            code_paths=factory_code(model_config["model"]),
            register=register,
        )


# torch.export reads the legacy TF32 flags, which raise once the new API (fp32_precision) has
# set some of them, as a run's precision does: the export runs with torch's own settings.
_FP32_BACKENDS = torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn
_FP32_AT_START = [b.fp32_precision for b in _FP32_BACKENDS]


@contextlib.contextmanager
def _torch_default_fp32_flags():
    saved = [b.fp32_precision for b in _FP32_BACKENDS]
    for backend, value in zip(_FP32_BACKENDS, _FP32_AT_START, strict=True):
        backend.fp32_precision = value
    try:
        yield
    finally:
        for backend, value in zip(_FP32_BACKENDS, saved, strict=True):
            backend.fp32_precision = value


def factory_code(reference: str) -> list[str] | None:
    """The files a user's `package.module:factory` model needs to be unpickled elsewhere: its
    top-level package's folder, or its module's file; None for the built-in models."""
    if ":" not in reference:
        return None
    top = reference.split(":")[0].split(".")[0]
    module = sys.modules.get(top)
    path = getattr(module, "__file__", None)
    if path is None:
        return None
    path = Path(path)
    return [str(path.parent if path.name == "__init__.py" else path)]


def load(model_uri: str, local: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A model logged by `train`, on a device, and the config that rebuilt it."""
    module, config = models.load(model_uri, local)
    if module is None:  # the loose files of earlier versions
        return _load_files(tracking.download(model_uri, local), device)
    if config is None:
        raise UserError(f"the model at {model_uri} was not logged by `pipeline train`")
    net = model.build(**config["model"])
    try:
        net.load_state_dict(module.state_dict())
    except RuntimeError as e:
        reason = str(e).splitlines()[0]
        raise UserError(f"the model at {model_uri} does not match its config: {reason}") from None
    return net.to(device).eval(), config


def _load_files(local: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    try:
        config = json.loads((local / "config.json").read_text())
        state = torch.load(local / "state_dict.pt", map_location=device, weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0]
        raise UserError(f"no model logged by `pipeline train` in {local}: {reason}") from None
    net = model.build(**config["model"]).to(device)
    net.load_state_dict(state)
    return net, config
