"""What a train run records about its workload: its params, its default name, and the
sentence that describes it in the MLflow UI."""

from pathlib import Path

import torch

from pipeline.config import TrainConfig
from pipeline.schema import Metrics, Params, Tags
from pipeline.training import loops, model


def train_params(
    cfg: TrainConfig,
    device: torch.device,
    train_size: int,
    test_size: int,
    net: torch.nn.Module,
    model_config: dict,
) -> dict:
    shape, classes = model.input_of(model_config)
    params = {
        Params.DEVICE: str(device),
        Params.DATASET: cfg.data.name,
        Params.INPUT_SHAPE: "x".join(map(str, shape)),
        Params.NUM_CLASSES: classes,
        Params.SHUFFLE: str(cfg.data.shuffle).lower(),
        Params.MODEL: model.describe(model_config),
        Params.PRECISION: cfg.precision,
        Params.PARAMETERS: model.parameter_count(net),
        Params.EPOCHS: cfg.epochs,
        Params.BATCH_SIZE: cfg.batch_size,
        Params.LR: cfg.lr,
        Params.OPTIMIZER: cfg.optimizer,
        Params.WEIGHT_DECAY: cfg.weight_decay,
        Params.MOMENTUM: cfg.momentum,
        Params.COMPILE: cfg.compile,
        Params.SEED: cfg.seed,
        Params.LOADER: cfg.loader,
        Params.WORKERS: cfg.workers,
        Params.PIN_MEMORY: str(cfg.pin_memory).lower(),
        Params.TRAIN_SIZE: train_size,
        Params.TEST_SIZE: test_size,
    }
    if cfg.model == "mlp":
        params |= {Params.HIDDEN: cfg.hidden, Params.LAYERS: cfg.layers}
    if cfg.model == "vit":
        params[Params.PATCH] = cfg.patch or model.default_patch(shape)
    if cfg.model_options:
        params[Params.MODEL_OPTIONS] = ",".join(f"{k}={v}" for k, v in cfg.model_options)
    if cfg.target_accuracy is not None:
        params[Params.TARGET_ACCURACY] = cfg.target_accuracy
    return params


def default_run_name(cfg: TrainConfig, device: torch.device) -> str:
    """What a run is: cpu-fashion-mnist-mlp512x2-fp32-bs64, mps-synthetic-cnn-bf16-bs256."""
    workload = {"mlp": f"mlp{cfg.hidden}x{cfg.layers}"}.get(cfg.model, cfg.model.split(":")[-1])
    name = cfg.data.name
    if name.startswith("imagefolder:"):
        name = "imagefolder-" + Path(name.removeprefix("imagefolder:")).resolve().name
    name = name.split(":")[-1]
    compiled = "" if cfg.compile == "none" else "-compiled"
    return f"{device.type}-{name}-{workload}-{cfg.precision}{compiled}-bs{cfg.batch_size}"


def describe_run(params: dict, tags: dict, summary: dict, last: loops.Epoch) -> str:
    """The run's description in the MLflow UI: its configuration and outcome in a sentence."""
    p = {
        k: params[k]
        for k in (
            Params.MODEL,
            Params.PRECISION,
            Params.DATASET,
            Params.EPOCHS,
            Params.BATCH_SIZE,
            Params.LR,
            Params.SEED,
            Params.LOADER,
        )
    }
    return (
        f"{p[Params.MODEL]} ({p[Params.PRECISION]}) trained on {p[Params.DATASET]} "
        f"({params[Params.TRAIN_SIZE]} images) "
        f"for {p[Params.EPOCHS]} epochs, batch {p[Params.BATCH_SIZE]}, lr {p[Params.LR]}, seed "
        f"{p[Params.SEED]}, loader {p[Params.LOADER]}, on {params[Params.DEVICE]} "
        f"({tags[Tags.DEVICE_NAME]}) at {tags[Tags.HOST]}: test accuracy "
        f"{last.test_accuracy:.1%}, test loss {last.test_loss:.4f}, "
        f"{summary[Metrics.SAMPLES_PER_S]:,.0f} samples/s."
    )
