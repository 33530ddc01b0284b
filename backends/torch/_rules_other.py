"""Per-sample gradient norms and clipped sums of ``nn.Embedding``, ``nn.LayerNorm`` and ``nn.GroupNorm``.

* Embedding: sample i's gradient has, in row v, the sum of the output gradients of its tokens with
  id v (none for ``padding_idx``). Its squared norm is ``Σ_{s,t: id_s = id_t} g_s·g_t`` (float64), so
  repeated ids are summed before squaring, and no ``vocabulary × dim`` tensor per sample is ever
  built. The clipped sum is one ``index_add`` of the coefficient-scaled output gradients, in the
  parameters' dtype (then widened when the target is the step's float64 buffer).
* LayerNorm / GroupNorm: sample i's affine gradients are ``Σ g ∘ x̂`` (weight) and ``Σ g`` (bias)
  over the positions that share a parameter, with ``x̂`` the normalised input, recomputed from the
  captured input. These are small (one value per channel), so they are materialised per sample.

Squares are accumulated in float64 (docs/theory.md#floating-point-and-randomness). Several calls of
one layer in a forward add up per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

from certun.backends.torch._rules_outer import put

__all__ = ["embedding_norms", "embedding_support", "embedding_write", "norm_layer_norms", "norm_layer_write"]

F64 = torch.float64
_GRAM_ELEMENTS = 1 << 25


def embedding_support(module: nn.Embedding) -> str | None:
    """Why certun's code cannot take this Embedding (``None``: it can)."""
    if module.max_norm is not None:
        return "max_norm renormalises the weight in place during the forward pass"
    if module.scale_grad_by_freq:
        return "scale_grad_by_freq scales each sample's gradient by token counts over the whole batch"
    if module.sparse:
        return "sparse gradients"
    return None


def _ids_and_grads(module: nn.Embedding, entries: list[tuple[torch.Tensor, torch.Tensor]], batch: int,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (B, S), g (B, S, D))`` over all calls, with padding tokens' gradients zeroed."""
    ids = torch.cat([A.reshape(batch, -1) for A, _ in entries], dim=1)
    g = torch.cat([G.reshape(batch, -1, G.shape[-1]).to(dtype) for _, G in entries], dim=1)
    if module.padding_idx is not None:
        g = g * (ids != module.padding_idx).unsqueeze(-1).to(dtype)
    return ids, g


def embedding_norms(module: nn.Embedding, entries: list[tuple[torch.Tensor, torch.Tensor]], batch: int,
                    dtype: torch.dtype, keep: dict | None = None) -> dict[str, torch.Tensor]:
    """Squared per-sample norm (float64, shape ``(B,)``) of the weight gradient, repeated ids summed first."""
    ids, g = _ids_and_grads(module, entries, batch, dtype)
    s = ids.shape[1]
    if s == 1:
        return {"weight": g.pow(2).sum(dim=(1, 2), dtype=F64)}
    out = torch.empty(batch, dtype=F64, device=g.device)
    step = max(1, _GRAM_ELEMENTS // (s * s))
    for k in range(0, batch, step):
        i, g64 = ids[k:k + step], g[k:k + step].to(F64)
        same = (i.unsqueeze(2) == i.unsqueeze(1)).to(F64)
        out[k:k + step] = ((g64 @ g64.mT) * same).sum(dim=(1, 2))
    return {"weight": out}


def embedding_write(module: nn.Embedding, entries: list[tuple[torch.Tensor, torch.Tensor]], coef: torch.Tensor,
                    out: dict[str, torch.Tensor], keep: dict | None = None) -> None:
    """``Σ_i coef_i · g_i`` of the weight into ``out["weight"]``: one ``index_add`` over every token."""
    if "weight" not in out:
        return
    target, dtype = out["weight"], coef.dtype
    ids, g = _ids_and_grads(module, entries, int(coef.shape[0]), dtype)
    gc = (g * coef[:, None, None]).reshape(-1, g.shape[-1])
    # repeated ids are summed in coef's dtype (the parameters'); a wider target gets that sum widened
    total = target if target.dtype == dtype else torch.empty(target.shape, dtype=dtype, device=target.device)
    total.zero_().index_add_(0, ids.reshape(-1), gc.view(-1, *target.shape[1:]))
    if total is not target:
        target.copy_(total)


def norm_layer_support(module: nn.Module) -> str | None:
    """Why certun's code cannot take this LayerNorm/GroupNorm (``None``: it can)."""
    return None


def _sample_grads(module: nn.Module, A: torch.Tensor, G: torch.Tensor, batch: int,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Per-sample affine gradients ``(B, *param.shape)`` of one call."""
    x, g = A.to(dtype), G.to(dtype)
    if isinstance(module, nn.LayerNorm):
        xhat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        shape = (batch, -1, *module.normalized_shape)
        return {"weight": (g * xhat).reshape(shape).sum(dim=1), "bias": g.reshape(shape).sum(dim=1)}
    xhat = F.group_norm(x, module.num_groups, None, None, module.eps)
    shape = (batch, module.num_channels, -1)
    return {"weight": (g * xhat).reshape(shape).sum(dim=2), "bias": g.reshape(shape).sum(dim=2)}


def _summed(module: nn.Module, entries: list[tuple[torch.Tensor, torch.Tensor]], batch: int,
            dtype: torch.dtype) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for A, G in entries:
        for role, value in _sample_grads(module, A, G, batch, dtype).items():
            if getattr(module, role, None) is not None:
                total[role] = value if role not in total else total[role] + value
    return total


def norm_layer_norms(module: nn.Module, entries: list[tuple[torch.Tensor, torch.Tensor]], batch: int,
                     dtype: torch.dtype, keep: dict | None = None) -> dict[str, torch.Tensor]:
    """Squared per-sample norms (float64, shape ``(B,)``) of the affine weight and bias gradients."""
    return {role: v.reshape(batch, -1).pow(2).sum(dim=1, dtype=F64)
            for role, v in _summed(module, entries, batch, dtype).items()}


def norm_layer_write(module: nn.Module, entries: list[tuple[torch.Tensor, torch.Tensor]], coef: torch.Tensor,
                     out: dict[str, torch.Tensor], keep: dict | None = None) -> None:
    """``Σ_i coef_i · g_i`` of the affine weight and bias into ``out`` (computed in ``coef``'s dtype)."""
    for role, v in _summed(module, entries, int(coef.shape[0]), coef.dtype).items():
        if role in out:
            put(out[role], torch.tensordot(coef, v, dims=([0], [0])), True)
