"""The workload's model: the quickstart's MLP, with its width and depth as options."""

import itertools
import math

import torch
from torch import nn


def build(
    model: str = "mlp", hidden: int = 512, layers: int = 2, num_classes: int = 10
) -> nn.Module:
    """MLP 784 → hidden → ReLU (× layers) → num_classes; the quickstart is hidden=512, layers=2."""
    if model != "mlp":
        raise ValueError(f"unknown model {model!r}")
    widths = [math.prod((1, 28, 28)), *[hidden] * layers]
    blocks: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in itertools.pairwise(widths):
        blocks += [nn.Linear(n_in, n_out), nn.ReLU()]
    blocks.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*blocks)


def initialised(config: dict, seed: int, device: torch.device) -> nn.Module:
    """Build on the CPU from the seed, then move: every device starts from identical weights."""
    torch.manual_seed(seed)
    return build(**config).to(device)


def describe(config: dict) -> str:
    """A short name such as mlp-784-512-512-10."""
    hidden = [str(config["hidden"])] * config["layers"]
    return "-".join([config["model"], "784", *hidden, str(config.get("num_classes", 10))])
