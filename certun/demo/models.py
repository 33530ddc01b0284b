"""Small classifiers for ``certun demo`` (built so that Opacus per-sample clipping can run them), and
the plain training and scoring loops the demo uses for the original model.

Both models avoid what the torch backend must refuse (docs/backends.md, soundness rules 5 and 7):
no BatchNorm or other buffer computed from data (the CNN uses GroupNorm, which normalises each
sample on its own), and no in-place operation on a hooked layer's output (``ReLU()``, never
``ReLU(inplace=True)``). Initialisation is seeded without touching the caller's global RNG.

:func:`fit` is ordinary (non-private) SGD: it trains the *original* model, which is what a user would
have before any deletion request. Unlearning itself runs in the backend (:mod:`certun.backends`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from certun.errors import InvalidParameterError

__all__ = ["MODEL_CHOICES", "MLP", "SmallCNN", "accuracy", "build_model", "fit", "parameter_norm", "sgd_epoch"]

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


def parameter_norm(model: nn.Module, center: Mapping[str, torch.Tensor] | None = None) -> float:
    """Global L2 norm over every trainable parameter (the ``‖x‖`` of docs/theory.md's notation), or of its
    distance ``‖x − center‖`` from a centre given by parameter name."""
    with torch.no_grad():
        squares = [(p.detach() if center is None else p.detach() - center[name]).double().pow(2).sum()
                   for name, p in model.named_parameters() if p.requires_grad]
        return math.sqrt(float(torch.stack(squares).sum())) if squares else 0.0


def fit(model: nn.Module, loader: Iterable[Any], *, epochs: int, lr: float, momentum: float = 0.9,
        device: torch.device | str = "cpu", on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Train ``model`` in place with SGD (``lr``, ``momentum``) on cross-entropy for ``epochs`` epochs.

    ``on_epoch(epoch, mean_loss)`` is called after each epoch (epochs count from 1). The optimizer is
    local to this call: nothing of its state survives it (docs/theory.md#soundness-rules forbids reusing it later).

    Raises:
        InvalidParameterError: ``epochs`` < 0 or ``lr`` not positive.
        FloatingPointError: the loss became NaN or infinite.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise InvalidParameterError("epochs", epochs, "an integer >= 0")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InvalidParameterError("lr", lr, "a finite number > 0")
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = torch.zeros((), device=device), 0
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(targets)
            count += len(targets)
        mean = float(total) / max(count, 1)
        if not math.isfinite(mean):
            raise FloatingPointError(f"training loss is {mean} in epoch {epoch} (lr={lr}); lower the learning rate")
        if on_epoch is not None:
            on_epoch(epoch, mean)
    optimizer.zero_grad(set_to_none=True)
    return model


def sgd_epoch(model: nn.Module, loader: Iterable[Any], *, lr: float, device: torch.device | str = "cpu") -> int:
    """One epoch of plain SGD (``x ← x − lr·∇``, constant ``lr``, no momentum) on the minibatch-mean
    cross-entropy: the backends' noiseless fine-tuning rule, so a replay here matches a released model and
    retraining costs what fine-tuning costs. Returns the number of samples processed.

    Raises:
        FloatingPointError: a parameter became NaN or infinite (``lr`` too large).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    seen = 0
    for inputs, targets in loader:
        if len(targets) == 0:
            continue
        for p in params:
            p.grad = None
        loss = nn.functional.cross_entropy(model(inputs.to(device)), targets.to(device), reduction="none").mean()
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-lr)
        seen += len(targets)
    for p in params:
        p.grad = None
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise FloatingPointError(f"SGD diverged (lr={lr}): non-finite parameters")
    return seen


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device | str = "cpu",
             batch_size: int = 2048) -> float:
    """Share of ``x`` that ``model`` classifies as ``y`` (evaluation mode, no gradients).

    Raises:
        InvalidParameterError: ``y`` is empty (an accuracy of nothing is undefined).
    """
    if len(y) == 0:
        raise InvalidParameterError("y", "<empty>", "at least one example to score")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(y), batch_size):
                xb = x[start:start + batch_size].to(device)
                yb = y[start:start + batch_size].to(device)
                correct += int((model(xb).argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / len(y)
