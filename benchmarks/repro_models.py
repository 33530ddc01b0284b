"""Models of the reproduction benchmark: an MLP and a small CNN, neither with BatchNorm.

BatchNorm running statistics are data-dependent state outside the unlearned parameters
(docs/theory.md#definition), so the models use none; the CNN is plain conv/ReLU/max-pool. Every parameter is
unlearned (``d`` is the full parameter count).

The MLP and the norm are the demo's (:mod:`certun.demo.models`). The CNN is the reproduction's own on
purpose: docs/results.md was measured with this plain conv/ReLU/max-pool network (no padding, no
normalisation), while the demo's CNN adds GroupNorm; replacing it would change the published numbers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from certun.demo.models import MLP
from certun.demo.models import parameter_norm as param_norm

__all__ = ["ARCHITECTURES", "init_norms", "make_model", "param_norm"]

ARCHITECTURES = ("mlp", "cnn")


def make_model(arch: str, input_shape: tuple[int, ...], n_classes: int, *, seed: int) -> nn.Module:
    """A freshly initialised model; the initialisation depends only on ``seed`` (PyTorch defaults)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        channels, height, width = input_shape
        if arch == "mlp":
            hidden = 128 if height * width > 100 else 64
            model = MLP(channels * height * width, n_classes, hidden=hidden)
        elif arch == "cnn":
            k = 3
            h1, w1 = (height - k + 1) // 2, (width - k + 1) // 2
            h2, w2 = (h1 - k + 1) // 2, (w1 - k + 1) // 2
            if h2 < 1 or w2 < 1:  # 8×8 digits: one conv block
                model = nn.Sequential(nn.Conv2d(channels, 16, k), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                      nn.Linear(16 * h1 * w1, n_classes))
            else:
                model = nn.Sequential(nn.Conv2d(channels, 8, k), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, k), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                      nn.Linear(16 * h2 * w2, n_classes))
        else:
            raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def init_norms(arch: str, input_shape: tuple[int, ...], n_classes: int) -> tuple[float, dict[str, float]]:
    """Global and per-tensor norms of a fresh initialisation (public seed 0): data-independent radii.

    This is public information (architecture only), so it may set C0 and the post-processing
    rescale targets without touching the guarantee (docs/theory.md#definition).
    """
    model = make_model(arch, input_shape, n_classes, seed=0)
    per = {n: float(p.detach().norm()) for n, p in model.named_parameters()}
    return math.sqrt(sum(v * v for v in per.values())), per
