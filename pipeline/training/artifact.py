"""The model a train run logs (`model/`: the final weights as a device-independent state dict,
and the config that rebuilds the model), and loading it back on any device."""

import json
import tempfile
from pathlib import Path

import torch

from pipeline.config import TrainConfig
from pipeline.errors import UserError
from pipeline.tracking import runs as tracking
from pipeline.training import model

MODEL_ARTIFACT = "model"


def log(
    run: tracking.Run, net: torch.nn.Module, cfg: TrainConfig, device, model_config: dict
) -> None:
    """The final weights (a state dict, device-independent) and what rebuilds the model and
    its data set (`model_config`: the model built for the data's shape)."""
    shape = cfg.data.input_shape
    config = {
        "run_id": run.run_id,
        "model": model_config,
        "data": {
            "name": cfg.data.name,
            "seed": cfg.data.seed,
            "train_size": cfg.data.train_size,
            "test_size": cfg.data.test_size,
            "input_shape": list(shape) if shape else None,
            "num_classes": cfg.data.num_classes,
        },
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "trained_on": str(device),
    }
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, Path(tmp) / "state_dict.pt")
        (Path(tmp) / "config.json").write_text(json.dumps(config, indent=2))
        run.log_artifacts(Path(tmp), MODEL_ARTIFACT)


def load(local: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A model logged by `train`, downloaded to `local`, on a device."""
    try:
        config = json.loads((local / "config.json").read_text())
        state = torch.load(local / "state_dict.pt", map_location=device, weights_only=True)
    except Exception as e:
        reason = str(e).splitlines()[0]
        raise UserError(f"no model logged by `pipeline train` in {local}: {reason}") from None
    net = model.build(**config["model"]).to(device)
    net.load_state_dict(state)
    return net, config
