"""Per-sample clipping in one backward, by certun's own code, for models built from common layers.

Applies when every unlearned parameter is the weight or bias of exactly one module of *exact* type
``nn.Linear``, ``nn.Conv2d``, ``nn.Embedding``, ``nn.LayerNorm`` or ``nn.GroupNorm`` (a subclass'
custom forward is never assumed to be the standard one) that the per-layer rules accept. A forward
hook keeps each such layer's input and a tensor hook its output gradient; after
``sum(losses).backward()`` the per-layer rules (:mod:`._rules_outer`, :mod:`._rules_other`) give each
sample's squared gradient norm in float64, and the clipped sum ``Σ_i c_i g_i`` as the batch gradient of
the coefficient-scaled output gradients. No per-sample gradient of the whole model is ever stored, and
there is no second backward. Each layer's sum is computed in the parameters' dtype and can be written
straight into slices of the step's float64 buffer (the same bits as writing the parameters' dtype buffer
and copying it, one pass over ``d`` fewer). Other models use Opacus' hooks or ``torch.func``.

Source of the clipping rule: docs/theory.md#gradient-clipping (``clip`` per sample, then mean).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from certun.backends.torch._model import FlatParameters
from certun.backends.torch._rules_other import (
    embedding_norms,
    embedding_support,
    embedding_write,
    norm_layer_norms,
    norm_layer_support,
    norm_layer_write,
)
from certun.backends.torch._rules_outer import conv2d_norms, conv2d_support, conv2d_write, linear_norms, linear_write
from certun.backends.torch._steps import SAFETY
from certun.errors import UnlearningRunError, UnsupportedModelError

__all__ = ["RULES", "LayerPerSample"]

Entries = list[tuple[torch.Tensor, torch.Tensor]]
#: exact module type -> (why unsupported or None, squared per-sample norms, clipped-sum writer)
RULES: dict[type, tuple[Callable[[Any], str | None], Callable[..., dict[str, torch.Tensor]], Callable[..., None]]] = {
    nn.Linear: (lambda m: None, linear_norms, linear_write),
    nn.Conv2d: (conv2d_support, conv2d_norms, conv2d_write),
    nn.Embedding: (embedding_support, embedding_norms, embedding_write),
    nn.LayerNorm: (norm_layer_support, norm_layer_norms, norm_layer_write),
    nn.GroupNorm: (norm_layer_support, norm_layer_norms, norm_layer_write),
}


class LayerPerSample:
    """Captures each hooked layer's input and output gradient, then writes the per-sample clipped mean."""

    def __init__(self, model: nn.Module, flat: FlatParameters) -> None:
        self.flat = flat
        index = {id(p): k for k, p in enumerate(flat.params)}
        self.layers: list[tuple[str, nn.Module, dict[str, torch.Tensor], dict[str, str]]] = []
        self.slots: list[dict[str, int]] = []  # per layer: role -> position in flat.params
        for path, module in model.named_modules():
            if type(module) not in RULES:
                continue
            roles = {r: p for r in ("weight", "bias") if isinstance(p := getattr(module, r, None), nn.Parameter)}
            slots = {r: index[id(p)] for r, p in roles.items() if id(p) in index}
            if slots:
                self.layers.append((path, module, {r: flat.g_views[k] for r, k in slots.items()},
                                    {r: flat.names[k] for r, k in slots.items()}))
                self.slots.append(slots)
        self.records: dict[int, list[list[Any]]] = {}
        self.keep: dict[int, dict[str, torch.Tensor]] = {}
        self.handles = [m.register_forward_hook(self._capture, with_kwargs=True) for _, m, _, _ in self.layers]

    @staticmethod
    def applies(model: nn.Module, flat: FlatParameters) -> bool:
        """True iff every unlearned parameter is the weight or bias of exactly one layer a rule accepts."""
        owners: dict[int, int] = {}
        covered: set[int] = set()
        for module in model.modules():
            for p in module.parameters(recurse=False):
                owners[id(p)] = owners.get(id(p), 0) + 1
            rule = RULES.get(type(module))
            if rule is not None and rule[0](module) is None:
                covered.update(id(p) for r in ("weight", "bias")
                               if isinstance(p := getattr(module, r, None), nn.Parameter))
        return all(id(p) in covered and owners.get(id(p)) == 1 for p in flat.params)

    def _capture(self, module: nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        x = inputs[0] if inputs else kwargs.get("input")  # every ruled layer names its input ``input``
        if not isinstance(x, torch.Tensor):
            raise UnlearningRunError(f"a {type(module).__name__} layer was called without a tensor input")
        entry: list[Any] = [x.detach(), None, output, x._version, output._version]
        self.records.setdefault(id(module), []).append(entry)

        def keep(grad: torch.Tensor, entry: list[Any] = entry) -> None:
            entry[1] = grad.detach()

        output.register_hook(keep)

    def close(self) -> None:
        """Remove the hooks and drop captured tensors."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.clear()

    def clear(self) -> None:
        """Drop this step's captured inputs, output gradients and kept per-sample gradients."""
        self.records.clear()
        self.keep.clear()

    def backward(self, total: torch.Tensor, *, full: bool) -> None:
        """Output gradients of every hooked layer call from one backward of ``total`` (the summed loss).

        ``full``: an ordinary backward, which also fills every ``p.grad`` (what the per-sample sum check
        compares with). Otherwise only the gradients at the layers' outputs are computed (no weight
        gradient that clipping would discard), unless a captured input or output was modified in place
        after the layer ran: then the gradient autograd would give for it is not the layer's, and the
        ordinary backward (whose tensor hooks see the layer's own output) is used.
        """
        entries = [e for calls in self.records.values() for e in calls]
        if not full and all(e[0]._version == e[3] and e[2]._version == e[4] for e in entries):
            grads = torch.autograd.grad(total, [e[2] for e in entries], allow_unused=True)
            for e, grad in zip(entries, grads, strict=True):
                e[1] = torch.zeros_like(e[2]) if grad is None else grad
        else:
            total.backward()
        for e in entries:
            del e[2:]  # the output (and the graph behind it) is no longer needed

    def _entries(self, path: str, module: nn.Module, batch: int) -> Entries | None:
        """The layer's ``(input, output gradient)`` pairs of this step; ``None`` when its forward did not run."""
        entries = self.records.get(id(module), [])
        if not entries:
            for p in module.parameters(recurse=False):
                if p.grad is not None and bool(p.grad.any()):
                    raise UnsupportedModelError([(
                        path, "its parameters received a gradient but its forward never ran (used functionally, "
                        "e.g. F.linear(h, layer.weight), or tied to another layer), so its per-sample gradients "
                        "cannot be captured and would be taken as zero",
                        "call the layer as a module, or use clip='batch'")])
            return None
        if any(e[1] is None for e in entries):
            raise UnlearningRunError(f"layer {path!r} ran forward but received no gradient")
        for A, G, *_ in entries:
            if A.dim() == 0 or A.shape[0] != batch or G.shape[0] != batch:
                raise UnlearningRunError(
                    f"layer {path!r} saw inputs of shape {tuple(A.shape)} whose first axis is not the batch "
                    f"({batch}): per-sample clipping needs batch-first inputs at every layer (a sequence-first "
                    "layout such as (S, B, F) would be split along the wrong axis); use batch-first layers or "
                    "clip='batch'")
        return [(e[0], e[1]) for e in entries]

    def sq_norms(self, batch: int) -> torch.Tensor:
        """Each sample's squared gradient norm over all unlearned parameters, float64, shape ``(B,)``."""
        total = torch.zeros(batch, dtype=torch.float64, device=self.flat.g.device)
        for path, module, views, _ in self.layers:
            entries = self._entries(path, module, batch)
            if entries is not None:
                keep = self.keep.setdefault(id(module), {})
                norms = RULES[type(module)][1](module, entries, batch, self.flat.g.dtype, keep)
                for role in views:
                    total += norms[role]
        return total

    def _into_views(self, into: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per layer, ``role -> slice of into`` (a length-``d`` vector) shaped as the parameter."""
        parts = torch.split(into, self.flat.sizes)
        return [{r: parts[k].view_as(self.flat.params[k]) for r, k in slots.items()} for slots in self.slots]

    def write(self, coef: torch.Tensor, out: dict[int, dict[str, torch.Tensor]] | None = None, *,
              into: torch.Tensor | None = None) -> None:
        """``Σ_i coef_i g_i`` per parameter into the flat gradient views (or ``out[id(module)]``, or slices of
        ``into``, a length-``d`` vector: the step's float64 buffer). Computed in the parameters' dtype."""
        batch = int(coef.shape[0])
        slices = self._into_views(into) if into is not None and out is None else None
        for k, (path, module, views, _) in enumerate(self.layers):
            target = out[id(module)] if out is not None else views if slices is None else slices[k]
            entries = self._entries(path, module, batch)
            if entries is None:
                for view in target.values():
                    view.zero_()  # unused this step: zero gradient
            else:
                RULES[type(module)][2](module, entries, coef.to(self.flat.g.dtype), target,
                                       self.keep.get(id(module)))

    def sums(self, batch: int) -> tuple[dict[str, torch.Tensor], float]:
        """``({name: Σ_i g_i}, Σ_i ‖g_i‖)`` before clipping, what the per-sample sum check compares."""
        out = {id(m): {r: torch.zeros_like(v) for r, v in views.items()} for _, m, views, _ in self.layers}
        self.write(torch.ones(batch, dtype=self.flat.g.dtype, device=self.flat.g.device), out)
        sums = {names[r]: out[id(m)][r].to(torch.float64) for _, m, _, names in self.layers for r in names}
        return sums, float(self.sq_norms(batch).sqrt().sum())

    def clip_into_g(self, batch: int, C1: float, sq: torch.Tensor | None = None, *,
                    into: torch.Tensor | None = None) -> None:
        """After the backward: write ``mean_i clip(∇loss_i, C1)`` into ``flat.g`` (or ``into``, see :meth:`write`)."""
        sq = self.sq_norms(batch) if sq is None else sq
        coef = torch.clamp(C1 * (1.0 - SAFETY) / sq.sqrt(), max=1.0).div_(batch)
        self.write(coef, into=into)
        self.clear()
