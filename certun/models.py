"""Small classifiers for ``certun demo``, built so that Opacus per-sample clipping can run them.

Both models avoid what the torch backend must refuse (docs/backends.md, soundness rules 5 and 7):
no BatchNorm or other buffer computed from data (the CNN uses GroupNorm, which normalises each
sample on its own), and no in-place operation on a hooked layer's output (``ReLU()``, never
``ReLU(inplace=True)``). Initialisation is seeded without touching the caller's global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from certun.errors import InvalidParameterError

__all__ = ["MODEL_CHOICES", "MLP", "SmallCNN", "build_model", "parameter_norm"]

MODEL_CHOICES = ("mlp", "cnn")


class MLP(nn.Module):
    """Flatten, one hidden ReLU layer (``hidden`` units), then a linear classifier."""

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)``."""
        return self.fc2(self.act(self.fc1(torch.flatten(x, 1))))


class SmallCNN(nn.Module):
    """Two 3×3 convolution blocks (conv, GroupNorm, ReLU, 2×2 max-pool) and a linear classifier.

    GroupNorm instead of BatchNorm: it has no running statistics and treats each sample alone, so
    per-sample gradients exist and no buffer depends on the training data.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int], *, width: int = 16,
                 groups: int = 4) -> None:
        super().__init__()
        if width % groups:
            raise InvalidParameterError("width", width, f"a multiple of groups={groups}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, width)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, 2 * width)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        h, w = image_size[0] // 4, image_size[1] // 4
        if h < 1 or w < 1:
            raise InvalidParameterError("image_size", image_size, "at least 4x4 (two 2x2 poolings)")
        self.fc = nn.Linear(2 * width * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)``."""
        x = self.pool1(self.act1(self.norm1(self.conv1(x))))
        x = self.pool2(self.act2(self.norm2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


def build_model(name: str, input_shape: Sequence[int], num_classes: int, *, seed: int) -> nn.Module:
    """A freshly initialised ``"mlp"`` or ``"cnn"`` for images of ``input_shape`` = ``(C, H, W)``.

    The default PyTorch initialisation runs under ``seed`` inside ``torch.random.fork_rng``, so the
    same seed gives the same weights and the caller's global RNG state is left as it was.

    Raises:
        InvalidParameterError: unknown ``name`` or a bad shape.
    """
    if name not in MODEL_CHOICES:
        raise InvalidParameterError("model", name, "one of " + ", ".join(MODEL_CHOICES))
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidParameterError("input_shape", input_shape, "(channels, height, width), all >= 1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "mlp":
            return MLP(math.prod(shape), num_classes)
        return SmallCNN(shape[0], num_classes, (shape[1], shape[2]))


def parameter_norm(model: nn.Module) -> float:
    """Global L2 norm over every trainable parameter (the ``‖x‖`` of THEORY.md's notation)."""
    with torch.no_grad():
        squares = [p.detach().double().pow(2).sum() for p in model.parameters() if p.requires_grad]
        return math.sqrt(float(torch.stack(squares).sum())) if squares else 0.0
