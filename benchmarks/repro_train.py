"""Plain minibatch SGD, evaluation and gradient-evaluation counting for the reproduction benchmark.

Retraining, pretraining, training the original model and the noiseless fine-tuning after unlearning
all use the same loop (plain SGD, constant learning rate, the backend's fine-tuning rule), so their
compute is comparable. Compute is counted in *per-sample gradient evaluations*: one forward and
backward pass of one sample. A noisy step on a batch of B samples costs B of them, one epoch over
the retain set costs |retain|. Wall-clock time is measured too, but on a shared CPU only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from repro_data import Split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from certun.demo.models import accuracy as demo_accuracy
from certun.demo.models import sgd_epoch as demo_sgd_epoch

__all__ = ["Curve", "accuracy", "evaluate", "loader", "sgd_epoch", "train_curve"]


def loader(split: Split, *, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    """A DataLoader over ``split`` with its own seeded generator (runs reproduce bit for bit)."""
    ds = TensorDataset(torch.from_numpy(split.x), torch.from_numpy(split.y))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=False)


def accuracy(model: nn.Module, split: Split, *, batch_size: int = 2048) -> float:
    """Fraction of ``split`` the model classifies correctly (the demo's scorer; an empty split raises)."""
    return demo_accuracy(model, torch.from_numpy(split.x), torch.from_numpy(split.y),
                         device=next(model.parameters()).device, batch_size=batch_size)


def evaluate(model: nn.Module, parts: dict[str, Split]) -> dict[str, float]:
    """Accuracy on each named split (e.g. ``test``, ``retain``, ``forget``, ``val``)."""
    return {name: accuracy(model, split) for name, split in parts.items() if len(split)}


def sgd_epoch(model: nn.Module, data: DataLoader, lr: float) -> int:
    """One epoch of plain SGD (``x ← x − lr·∇``, mean cross-entropy): the demo's loop, which is the backends'
    fine-tuning rule; returns the samples processed."""
    return demo_sgd_epoch(model, data, lr=lr, device=next(model.parameters()).device)


@dataclass
class Curve:
    """Accuracy after each epoch, with the cumulative gradient evaluations and seconds spent."""

    grads: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    acc: list[dict[str, float]] = field(default_factory=list)

    def add(self, grads: int, seconds: float, acc: dict[str, float]) -> None:
        """Append one point."""
        self.grads.append(int(grads))
        self.seconds.append(float(seconds))
        self.acc.append(acc)

    def to_dict(self) -> dict[str, list]:
        """JSON-ready form."""
        return {"grads": self.grads, "seconds": self.seconds, "acc": self.acc}


def train_curve(model: nn.Module, data: DataLoader, *, epochs: int, lr: float,
                eval_fn: Callable[[nn.Module], dict[str, float]], start_grads: int = 0,
                start_seconds: float = 0.0, curve: Curve | None = None) -> Curve:
    """Run ``epochs`` SGD epochs, recording accuracy (``eval_fn``) and cumulative compute after each.

    The starting point (epoch 0) is recorded too, at ``start_grads``/``start_seconds`` (what it cost to
    get there, e.g. the noisy phase). Evaluation time is not counted as compute.
    """
    curve = curve if curve is not None else Curve()
    grads, seconds = start_grads, start_seconds
    if not curve.grads:
        curve.add(grads, seconds, eval_fn(model))
    for _ in range(epochs):
        t0 = time.perf_counter()
        grads += sgd_epoch(model, data, lr)
        seconds += time.perf_counter() - t0
        curve.add(grads, seconds, eval_fn(model))
    return curve


def first_reaching(curve: Curve, key: str, threshold: float) -> tuple[int | None, float | None, int | None]:
    """Gradient evaluations, seconds and epoch index at which ``curve``'s ``key`` accuracy first ≥ threshold."""
    for i, (g, s, a) in enumerate(zip(curve.grads, curve.seconds, curve.acc, strict=True)):
        if a.get(key, -np.inf) >= threshold:
            return g, s, i
    return None, None, None
