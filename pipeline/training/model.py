"""The workloads: the quickstart's MLP, a small conv net, a small vision transformer, or the
user's own model (`package.module:factory`). Each maps [N, C, H, W] images (the data set's
shape; [N, 1, 28, 28] by default) to num_classes logits."""

import inspect
import itertools
import math

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.training.imports import is_reference, named_callable

BUILT_IN = ("mlp", "cnn", "vit")
IMAGE = (1, 28, 28)  # the shape of the IDX data sets, and of models logged without one
NUM_CLASSES = 10


def build(
    model: str = "mlp",
    hidden: int = 512,
    layers: int = 2,
    options: dict | None = None,
    input_shape: tuple[int, ...] | list[int] = IMAGE,
    num_classes: int = NUM_CLASSES,
    patch: int | None = None,
) -> nn.Module:
    """A fresh model for images of `input_shape` and `num_classes` classes: `mlp` (the image
    flattened → hidden → ReLU, × layers → classes; the quickstart is hidden=512, layers=2),
    `cnn`, `vit` (`patch` × `patch` patches), or a `package.module:factory` reference called
    with `options`, and with input_shape and num_classes where it takes them."""
    shape = tuple(input_shape)
    if model == "mlp":
        return mlp(hidden, layers, shape, num_classes)
    if model == "cnn":
        return ConvNet(shape, num_classes)
    if model == "vit":
        return VisionTransformer(shape, num_classes, patch=patch or default_patch(shape))
    make = factory(model)
    given = dict(options or {})
    for key, value in (("input_shape", shape), ("num_classes", num_classes)):
        if key not in given and _takes(make, key):
            given[key] = value
    return make(**given)


def _takes(make, name: str) -> bool:
    try:
        parameters = inspect.signature(make).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def default_patch(shape: tuple[int, ...]) -> int:
    """The largest divisor of the image's sides that is at most 8 (7 for 28×28)."""
    side = math.gcd(shape[1], shape[2])
    return max(p for p in range(1, 9) if side % p == 0)


def mlp(hidden: int, layers: int, shape=IMAGE, num_classes: int = NUM_CLASSES) -> nn.Module:
    widths = [math.prod(shape), *[hidden] * layers]
    blocks: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in itertools.pairwise(widths):
        blocks += [nn.Linear(n_in, n_out), nn.ReLU()]
    blocks.append(nn.Linear(widths[-1], num_classes))
    return nn.Sequential(*blocks)


class ConvNet(nn.Module):
    """PyTorch's MNIST example: two conv layers, max pooling, dropout, two linear layers; for
    images larger than 28×28, max-pooled further to 12×12 before the linear layers."""

    def __init__(self, shape=IMAGE, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        channels, height, width = shape
        if min(height, width) < 6:
            raise UserError(f"cnn: images of {height}x{width} are too small (at least 6x6)")
        pooled = (height - 4) // 2, (width - 4) // 2
        self.pool = (min(pooled[0], 12), min(pooled[1], 12))
        self.shrink = self.pool != pooled
        self.conv1 = nn.Conv2d(channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(64 * math.prod(self.pool), 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = nn.functional.max_pool2d(x, 2)
        if self.shrink:
            x = nn.functional.adaptive_max_pool2d(x, self.pool)
        x = self.dropout1(x.flatten(1))
        x = self.dropout2(torch.relu(self.fc1(x)))
        return self.fc2(x)


class VisionTransformer(nn.Module):
    """A small ViT: patch × patch patches (16 of 7×7 at 28×28), a class token, learned
    positions, a few pre-norm encoder layers, and a linear head on the class token."""

    def __init__(
        self,
        shape=IMAGE,
        num_classes: int = NUM_CLASSES,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        patch: int = 7,
    ) -> None:
        super().__init__()
        channels, height, width = shape
        if height % patch or width % patch:
            raise UserError(f"vit: --patch {patch} does not divide the images' {height}x{width}")
        self.patch = patch
        patches = (height // patch) * (width // patch)
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, patches + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, (n, c) = self.patch, x.shape[:2]
        x = x.unfold(2, p, p).unfold(3, p, p)  # N × C × rows × columns × p × p
        x = x.permute(0, 2, 3, 1, 4, 5).reshape(n, -1, c * p * p)  # N × patches × C·p·p
        x = self.embed(x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        return self.head(self.norm(self.encoder(x))[:, 0])


def factory(reference: str):
    """The callable a `package.module:factory` reference names, imported from the current
    folder or the environment (UserError when it cannot be)."""
    if not is_reference(reference):
        raise UserError(
            f"unknown model '{reference}': expected one of {', '.join(BUILT_IN)} "
            "or package.module:factory"
        )
    return named_callable(reference, "model")


def checked(config: dict) -> nn.Module:
    """Build the model once on the CPU and probe it with a batch of 2 images of the data's
    shape; UserError when it cannot be built or does not map [N, C, H, W] to [N, classes]."""
    reference = config["model"]
    try:
        net = build(**config)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"model '{reference}' could not be built: {e}") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"model '{reference}': the factory returned {type(net).__name__}")
    shape, classes = input_of(config)
    batch = [2, *shape]
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(batch))
    except Exception as e:
        raise UserError(f"model '{reference}' fails on a {batch} batch: {e}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
        found = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model '{reference}' maps {batch} to {found}, not [2, {classes}]")
    return net


def input_of(config: dict) -> tuple[tuple[int, ...], int]:
    """(image shape, number of classes) a model config is built for."""
    return tuple(config.get("input_shape", IMAGE)), int(config.get("num_classes", NUM_CLASSES))


def initialised(config: dict, seed: int, device: torch.device) -> nn.Module:
    """Build on the CPU from the seed, then move: every device starts from identical weights."""
    torch.manual_seed(seed)
    return build(**config).to(device)


def describe(config: dict) -> str:
    """The `model` param: mlp-784-512-512-10 (its widths), cnn, vit, or the reference as given."""
    if config["model"] != "mlp":
        return config["model"]
    shape, classes = input_of(config)
    hidden = [str(config["hidden"])] * config["layers"]
    return "-".join(["mlp", str(math.prod(shape)), *hidden, str(classes)])


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def forward_flops(net: nn.Module, shape: tuple[int, ...] = IMAGE) -> int:
    """Floating-point operations of one forward pass of one image on the CPU (torch's FLOP
    counter), in training mode: in eval mode a transformer layer takes a fused path the
    counter cannot see. Run it on a throwaway copy: training mode updates batch-norm
    statistics."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    counter = FlopCounterMode(display=False)
    try:  # two images: batch norm in training mode refuses one value per channel
        with counter, torch.no_grad():
            net.train()(torch.zeros(2, *shape))
    except Exception as e:
        raise UserError(f"cannot count the model's FLOPs on a batch of 2: {e}") from None
    finally:
        net.train(was_training)
    return counter.get_total_flops() // 2
