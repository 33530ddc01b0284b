"""Per-sample clipping for any ``torch.nn`` model, by ``torch.func`` (``vmap`` over ``grad``).

The generic path for layers that neither certun's fused ``nn.Linear`` code nor Opacus' hooks cover
(``nn.MultiheadAttention``, so ``nn.TransformerEncoder``; any non-recurrent module an Opacus validator
refuses): the gradient computer falls back to it under ``clip="per_sample"`` and ``"ghost"``, and checks
on the first step that the per-sample gradients sum to autograd's batch gradient
(:meth:`FuncPerSample.sums`). Each sample's gradient of the unlearned parameters is computed by one
vectorised call, its norm is accumulated in float64 over
all parameters (a float32 norm undershoots at large d: docs/theory.md#floating-point-and-randomness),
each is scaled to at most ``C1·(1 − SAFETY)`` and the mean is written into the flat gradient buffer.
The step function still clips that mean globally, so ``‖g‖ ≤ C1`` holds however the sum rounded.

Samples are processed in chunks of ``chunk`` so memory stays at ``chunk × d`` floats. Dropout draws
different masks per sample (``randomness="different"``); layers that mix samples (BatchNorm in
training mode) cannot be vectorised per sample and are refused by the model checks before a run.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from certun.errors import UnlearningRunError

__all__ = ["FuncPerSample", "per_sample_grad_norms"]

#: Relative margin by which a clipped per-sample gradient stays inside C1 (same as the step functions').
_SAFETY = 1e-5


def _one_sample_loss(model: nn.Module, loss_fn: Callable[..., torch.Tensor], names: Sequence[str],
                     buffers: dict[str, torch.Tensor]) -> Callable[..., torch.Tensor]:
    from torch.func import functional_call

    def loss(params: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, params, strict=True))
        state.update(buffers)
        out = functional_call(model, state, (x.unsqueeze(0),))
        value = loss_fn(out, y.unsqueeze(0), reduction="none")
        return value.reshape(-1).mean()

    return loss


class FuncPerSample:
    """Per-sample clipped mean gradient of ``params`` (named ``names`` in ``model``) via ``torch.func``."""

    def __init__(self, model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor], *,
                 chunk: int = 64) -> None:
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        self.model = model
        self.names = tuple(names)
        self.params = tuple(params)
        self.chunk = chunk
        #: the context each vectorised forward and backward runs in (an autocast, :mod:`._precision`)
        self.autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext

    def clipped_mean(self, loss_fn: Callable[..., torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor,
                     C1: float, out: Sequence[torch.Tensor]) -> torch.Tensor:
        """Write ``(1/B) Σ_i clip(g_i, C1)`` into ``out`` (one tensor per parameter); return the mean loss."""
        batch = int(targets.shape[0])
        sums = [torch.zeros(p.shape, dtype=torch.float64, device=p.device) for p in self.params]
        total_loss = torch.zeros((), dtype=torch.float64, device=targets.device)
        for grads, losses in self._chunks(loss_fn, inputs, targets):
            norms = per_sample_grad_norms(grads)
            coef = torch.clamp(C1 * (1.0 - _SAFETY) / norms, max=1.0)
            for acc, g in zip(sums, grads, strict=True):
                acc.add_(torch.tensordot(coef, g.double(), dims=([0], [0])))
            total_loss += losses.double().sum()
        for target, acc in zip(out, sums, strict=True):
            target.copy_(acc.div_(batch).view_as(target))
        return (total_loss / batch).to(self.params[0].dtype)

    def sums(self, loss_fn: Callable[..., torch.Tensor], inputs: torch.Tensor,
             targets: torch.Tensor) -> tuple[dict[str, torch.Tensor], float]:
        """``({name: Σ_i g_i}, Σ_i ‖g_i‖)`` before clipping, in float64: what the per-sample sum check compares
        with autograd's batch gradient (a model whose forward mixes the samples of a batch fails it)."""
        sums = {n: torch.zeros(p.shape, dtype=torch.float64, device=p.device)
                for n, p in zip(self.names, self.params, strict=True)}
        scale = 0.0
        for grads, _ in self._chunks(loss_fn, inputs, targets):
            scale += float(per_sample_grad_norms(grads).sum())
            for acc, g in zip(sums.values(), grads, strict=True):
                acc.add_(g.double().sum(dim=0))
        return sums, scale

    def _chunks(self, loss_fn: Callable[..., torch.Tensor], inputs: torch.Tensor,
                targets: torch.Tensor) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
        """``(per-sample gradients, per-sample losses)`` of ``chunk`` samples at a time."""
        from torch.func import grad_and_value, vmap

        batch = int(targets.shape[0])
        if not isinstance(inputs, torch.Tensor) or inputs.shape[0] != batch:
            raise UnlearningRunError("per-sample clipping by torch.func needs batch-first tensor inputs with the "
                                     "targets' batch size on the first axis; use clip='batch' otherwise")
        own = {id(p) for p in self.params}
        buffers = {n: b for n, b in self.model.named_buffers()}
        buffers.update({n: p.detach() for n, p in self.model.named_parameters() if id(p) not in own})
        step = vmap(grad_and_value(_one_sample_loss(self.model, loss_fn, self.names, buffers)),
                    in_dims=(None, 0, 0), randomness="different")
        detached = tuple(p.detach() for p in self.params)
        for start in range(0, batch, self.chunk):
            with warnings.catch_warnings(), self.autocast():
                # functorch falls back to a loop for CPU flash attention: slower, same values
                warnings.filterwarnings("ignore", message="There is a performance drop", category=UserWarning)
                result = step(detached, inputs[start:start + self.chunk], targets[start:start + self.chunk])
            yield result  # outside the autocast: norms and sums are computed by the caller in float64


def per_sample_grad_norms(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Float64 L2 norm of each sample's gradient over all parameters (first axis = sample)."""
    squares = [g.reshape(g.shape[0], -1).double().pow(2).sum(dim=1) for g in grads]
    return torch.stack(squares).sum(dim=0).sqrt()
