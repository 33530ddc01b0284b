"""Per-sample clipping for models whose unlearned parameters all live in ``nn.Linear`` layers, in one backward.

For a linear layer called once on a 2-D input, sample i's weight gradient is the outer product
``G_i A_iᵀ`` of the gradient at the layer's output and its input, so its norm is ``‖G_i‖·‖A_i‖``
(plus ``‖G_i‖`` for the bias) and never has to be materialised (the "ghost norm" of Li et al. 2022,
Opacus' ghost clipping). Opacus computes those norms in one backward and the clipped sum in a
second. Here the clipped sum comes from the *same* backward: ``W_grad = (c ∘ G)ᵀ A`` is one matrix
product per layer once the clipping coefficients ``c`` are known. A layer called several times, or
on inputs with extra axes (tokens), gets its per-sample gradients materialised for that layer only.

:class:`LinearPerSample` applies only when every unlearned parameter belongs to exactly one
``nn.Linear`` (exact type, so that a subclass' custom forward is never assumed linear); otherwise the
torch backend uses Opacus. Source of the clipping rule: docs/theory.md#gradient-clipping (``clip`` per sample, then
mean).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from certun.backends.torch._model import FlatParameters
from certun.backends.torch._steps import SAFETY
from certun.errors import UnlearningRunError, UnsupportedModelError

__all__ = ["LinearPerSample"]


class LinearPerSample:
    """Captures each hooked layer's input and output gradient, then writes the per-sample clipped mean."""

    def __init__(self, model: nn.Module, flat: FlatParameters) -> None:
        self.flat = flat
        views = {id(p): v for p, v in zip(flat.params, flat.g_views, strict=True)}
        self.layers: list[tuple[str, nn.Linear, torch.Tensor | None, torch.Tensor | None]] = []
        for path, module in model.named_modules():
            if type(module) is not nn.Linear:
                continue
            w = views.get(id(module.weight))
            b = views.get(id(module.bias)) if module.bias is not None else None
            if w is not None or b is not None:
                self.layers.append((path, module, w, b))
        self.records: dict[int, list[list[Any]]] = {}
        self.handles = [module.register_forward_hook(self._capture) for _, module, _, _ in self.layers]

    @staticmethod
    def applies(model: nn.Module, flat: FlatParameters) -> bool:
        """True iff every unlearned parameter is the weight or bias of exactly one plain ``nn.Linear``."""
        owners: dict[int, int] = {}
        linear: set[int] = set()
        for module in model.modules():
            for p in module.parameters(recurse=False):
                owners[id(p)] = owners.get(id(p), 0) + 1
                if type(module) is nn.Linear:
                    linear.add(id(p))
        return all(id(p) in linear and owners.get(id(p)) == 1 for p in flat.params)

    def _capture(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        entry: list[Any] = [inputs[0].detach(), None]
        self.records.setdefault(id(module), []).append(entry)

        def keep(grad: torch.Tensor, entry: list[Any] = entry) -> None:
            entry[1] = grad.detach()

        output.register_hook(keep)

    def close(self) -> None:
        """Remove the hooks and drop captured tensors."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.records.clear()

    @staticmethod
    def _check_unused(path: str, module: nn.Linear) -> None:
        """A layer whose forward did not run must have received no gradient (else it was used functionally)."""
        for p in (module.weight, module.bias):
            if p is not None and p.grad is not None and bool(p.grad.any()):
                raise UnsupportedModelError([(
                    path, "its parameters received a gradient but its forward never ran (used functionally, e.g. "
                    "F.linear(h, layer.weight), or tied to another layer), so its per-sample gradients cannot be "
                    "captured and would be taken as zero", "call the layer as a module, or use clip='batch'")])

    def clip_into_g(self, batch: int, C1: float) -> None:
        """After ``sum(losses).backward()``: write ``mean_i clip(∇loss_i, C1)`` into ``flat.g``."""
        dtype, device = self.flat.g.dtype, self.flat.g.device
        f64 = torch.float64  # squared norms accumulated in float64: a float32 sum undershoots at large d
        sq = torch.zeros(batch, dtype=f64, device=device)
        work = []
        for path, module, w_view, b_view in self.layers:
            entries = self.records.get(id(module), [])
            if not entries:
                self._check_unused(path, module)
                work.append((w_view, b_view, None, None, None))  # unused this step: zero gradient
                continue
            if any(g is None for _, g in entries):
                raise UnlearningRunError(f"layer {path!r} ran forward but received no gradient")
            for A, G in entries:
                if A.dim() == 0 or A.shape[0] != batch or G.shape[0] != batch:
                    raise UnlearningRunError(
                        f"layer {path!r} saw inputs of shape {tuple(A.shape)} whose first axis is not the batch "
                        f"({batch}): per-sample clipping needs batch-first inputs at every layer (a sequence-first "
                        "layout such as (S, B, F) would be split along the wrong axis); use batch-first layers or "
                        "clip='batch'")
            if len(entries) == 1 and entries[0][0].dim() == 2:
                A, G = entries[0]
                g_sq = G.pow(2).sum(dim=1, dtype=f64)
                if w_view is not None:
                    sq += A.pow(2).sum(dim=1, dtype=f64) * g_sq
                if b_view is not None:
                    sq += g_sq
                work.append((w_view, b_view, A, G, None))
            else:
                per_w = sum(torch.einsum("b...o,b...i->boi", G, A) for A, G in entries)
                per_b = sum(G.reshape(batch, -1, G.shape[-1]).sum(dim=1) for _, G in entries)
                if w_view is not None:
                    sq += per_w.reshape(batch, -1).pow(2).sum(dim=1, dtype=f64)
                if b_view is not None:
                    sq += per_b.pow(2).sum(dim=1, dtype=f64)
                work.append((w_view, b_view, None, per_b, per_w))
        coef = torch.clamp(C1 * (1.0 - SAFETY) / sq.sqrt(), max=1.0).div_(batch).to(dtype)
        for w_view, b_view, A, G, per_w in work:
            if G is None:
                for view in (w_view, b_view):
                    if view is not None:
                        view.zero_()
                continue
            Gc = G * coef[:, None]
            if w_view is not None:
                if per_w is None:
                    torch.mm(Gc.t(), A, out=w_view)
                else:
                    torch.mv(per_w.reshape(batch, -1).t(), coef, out=w_view.view(-1))
            if b_view is not None:
                torch.sum(Gc, dim=0, out=b_view)
        self.records.clear()
