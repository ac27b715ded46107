"""The workloads: the quickstart's MLP, a small conv net, a small vision transformer, or the
user's own model (`package.module:factory`). Each maps [N, 1, 28, 28] images to 10 logits."""

import importlib
import itertools
import math
import sys
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.training.data import NUM_CLASSES

BUILT_IN = ("mlp", "cnn", "vit")
IMAGE = (1, 28, 28)


def build(
    model: str = "mlp", hidden: int = 512, layers: int = 2, options: dict | None = None
) -> nn.Module:
    """A fresh model: `mlp` (784 → hidden → ReLU, × layers → 10; the quickstart is hidden=512,
    layers=2), `cnn`, `vit`, or a `package.module:factory` reference called with `options`."""
    if model == "mlp":
        return mlp(hidden, layers)
    if model == "cnn":
        return ConvNet()
    if model == "vit":
        return VisionTransformer()
    return factory(model)(**(options or {}))


def mlp(hidden: int, layers: int) -> nn.Module:
    widths = [math.prod(IMAGE), *[hidden] * layers]
    blocks: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in itertools.pairwise(widths):
        blocks += [nn.Linear(n_in, n_out), nn.ReLU()]
    blocks.append(nn.Linear(widths[-1], NUM_CLASSES))
    return nn.Sequential(*blocks)


class ConvNet(nn.Module):
    """PyTorch's MNIST example: two conv layers, max pooling, dropout, two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.dropout1(nn.functional.max_pool2d(x, 2).flatten(1))
        x = self.dropout2(torch.relu(self.fc1(x)))
        return self.fc2(x)


class VisionTransformer(nn.Module):
    """A small ViT: 7×7 patches (16 of them), a class token, learned positions, a few
    pre-norm encoder layers, and a linear head on the class token."""

    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, patch: int = 7) -> None:
        super().__init__()
        self.patch = patch
        patches = (IMAGE[1] // patch) * (IMAGE[2] // patch)
        self.embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, patches + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        x = x.unfold(2, p, p).unfold(3, p, p).reshape(x.shape[0], -1, p * p)  # N × 16 × 49
        x = self.embed(x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        return self.head(self.norm(self.encoder(x))[:, 0])


def factory(reference: str):
    """The callable a `package.module:factory` reference names, imported from the current
    folder or the environment (UserError when it cannot be)."""
    module_name, _, name = reference.partition(":")
    if not module_name or not name:
        raise UserError(
            f"unknown model '{reference}': expected one of {', '.join(BUILT_IN)} "
            "or package.module:factory"
        )
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise UserError(f"model '{reference}': cannot import {module_name}: {e}") from None
    make = getattr(module, name, None)
    if make is None:
        raise UserError(f"model '{reference}': {module_name} has no {name}")
    if not callable(make):
        raise UserError(f"model '{reference}': {name} is not callable")
    return make


def checked(config: dict) -> nn.Module:
    """Build the model once on the CPU and probe it with a batch of 2 images; UserError when it
    cannot be built or does not map [N, 1, 28, 28] to [N, 10]."""
    reference = config["model"]
    try:
        net = build(**config)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"model '{reference}' could not be built: {e}") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"model '{reference}': the factory returned {type(net).__name__}")
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(2, *IMAGE))
    except Exception as e:
        raise UserError(f"model '{reference}' fails on a [2, 1, 28, 28] batch: {e}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, NUM_CLASSES):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model '{reference}' maps [2, 1, 28, 28] to {shape}, not [2, 10]")
    return net


def initialised(config: dict, seed: int, device: torch.device) -> nn.Module:
    """Build on the CPU from the seed, then move: every device starts from identical weights."""
    torch.manual_seed(seed)
    return build(**config).to(device)


def describe(config: dict) -> str:
    """The `model` param: mlp-784-512-512-10, cnn, vit, or the reference as given."""
    if config["model"] != "mlp":
        return config["model"]
    hidden = [str(config["hidden"])] * config["layers"]
    return "-".join(["mlp", "784", *hidden, str(NUM_CLASSES)])


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def forward_flops(net: nn.Module) -> int:
    """Floating-point operations of one forward pass of one image on the CPU (torch's FLOP
    counter), in training mode: in eval mode a transformer layer takes a fused path the
    counter cannot see. Run it on a throwaway copy: training mode updates batch-norm
    statistics."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.train()(torch.zeros(1, *IMAGE))
    net.train(was_training)
    return counter.get_total_flops()
