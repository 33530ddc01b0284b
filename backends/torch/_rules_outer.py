"""Per-sample gradient norms and clipped sums of ``nn.Linear`` and ``nn.Conv2d``: outer-product layers.

Sample i's weight gradient of such a layer is ``Σ_s g_s a_sᵀ`` over its positions s (tokens, or the
output pixels of a convolution, whose input patches ``unfold`` extracts), with ``a`` the layer input
and ``g`` the gradient at its output. Its squared norm is computed one of two ways, whichever costs
fewer operations for the layer's shapes: *materialised* (``bmm`` gives the ``O×I`` matrix, then its
squares are summed) or *ghost* (``Σ_{s,t} (a_s·a_t)(g_s·g_t)``, Gram matrices over positions, in
float64 so that cancellation cannot make the norm round low). Squares are always accumulated in
float64 (docs/theory.md#floating-point-and-randomness). The clipped sum ``Σ_i c_i g_i`` is the batch
gradient of the coefficient-scaled output gradients ``c_i g_i``: one matrix product (Linear) or one
convolution weight-gradient call (Conv2d), never a per-sample tensor. It is computed in ``coef``'s dtype
(the parameters') whatever the target's: a wider target (the step's float64 buffer) receives the exact
widening of the same numbers (:func:`put`).

A layer called several times in one forward has, per sample, the sum of the calls' gradients: the
calls' positions are concatenated, which gives exactly that sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

__all__ = ["conv2d_norms", "conv2d_support", "conv2d_write", "linear_norms", "linear_write", "put"]

F64 = torch.float64
Entries = list[tuple[torch.Tensor, torch.Tensor]]
#: Upper bound on the elements of one materialised per-sample chunk (memory stays ~128 MB in float32).
_CHUNK_ELEMENTS = 1 << 25
#: Per-sample weight gradients of a layer up to this many elements are kept from the norm pass for the
#: clipped sum (one matrix-vector product); larger ones are recomputed as a weighted batch gradient.
KEEP_ELEMENTS = 1 << 24


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def outer_sq_norms(a: torch.Tensor, g: torch.Tensor, keep: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``‖Σ_s g_s a_sᵀ‖²`` per row of ``a (N, S, I)``, ``g (N, S, O)``, float64, by the cheaper method.

    When the per-sample matrices are materialised and small enough, they are put in ``keep["weight"]``
    (shape ``(N, O, I)``) for the clipped sum.
    """
    n, s, i = a.shape
    o = g.shape[-1]
    out = torch.empty(n, dtype=F64, device=a.device)
    if s == 1:
        return a.pow(2).sum(dim=(1, 2), dtype=F64) * g.pow(2).sum(dim=(1, 2), dtype=F64)
    if 2 * s * (i + o) < i * o:  # ghost, float64 Gram matrices cost about twice a float32 product
        step = max(1, _CHUNK_ELEMENTS // (s * s))
        for k in range(0, n, step):
            a64, g64 = a[k:k + step].to(F64), g[k:k + step].to(F64)
            out[k:k + step] = ((a64 @ a64.mT) * (g64 @ g64.mT)).sum(dim=(1, 2))
        return out
    if keep is not None and n * i * o <= KEEP_ELEMENTS:
        per = torch.bmm(g.mT, a)
        keep["weight"] = per
        return per.pow(2).sum(dim=(1, 2), dtype=F64)
    step = max(1, _CHUNK_ELEMENTS // (i * o))
    for k in range(0, n, step):
        out[k:k + step] = torch.bmm(g[k:k + step].mT, a[k:k + step]).pow(2).sum(dim=(1, 2), dtype=F64)
    return out


def _tokens(t: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    return t.reshape(batch, -1, t.shape[-1]).to(dtype)


def linear_norms(module: nn.Linear, entries: Entries, batch: int, dtype: torch.dtype,
                 keep: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Squared per-sample norms (float64, shape ``(B,)``) of the weight and bias gradients."""
    a = _cat([_tokens(A, batch, dtype) for A, _ in entries], dim=1)
    g = _cat([_tokens(G, batch, dtype) for _, G in entries], dim=1)
    out = {"weight": outer_sq_norms(a, g, keep)}
    if module.bias is not None:
        out["bias"] = g.sum(dim=1).pow(2).sum(dim=1, dtype=F64) if g.shape[1] > 1 else g.pow(2).sum((1, 2), dtype=F64)
    return out


def linear_write(module: nn.Linear, entries: Entries, coef: torch.Tensor, out: dict[str, torch.Tensor],
                 keep: dict[str, torch.Tensor] | None = None) -> None:
    """``Σ_i coef_i · g_i`` of the weight and bias into ``out`` (tensors of the parameters' shapes)."""
    batch, dtype = int(coef.shape[0]), coef.dtype
    for k, (A, G) in enumerate(entries):
        a = _tokens(A, batch, dtype)
        gc = _tokens(G, batch, dtype) * coef[:, None, None]
        if "weight" in out and not (keep and "weight" in keep):
            put(out["weight"], gc.reshape(-1, gc.shape[-1]).t() @ a.reshape(-1, a.shape[-1]), k == 0)
        if "bias" in out:
            put(out["bias"], gc.sum(dim=(0, 1)), k == 0)
    if "weight" in out and keep and "weight" in keep:
        put(out["weight"], torch.mv(keep["weight"].reshape(batch, -1).t(), coef), True)


def put(target: torch.Tensor, value: torch.Tensor, first: bool) -> None:
    """Copy ``value`` into ``target`` for a layer's first call, add it for the next ones.

    The sum is taken in ``value``'s dtype: a wider ``target`` (float64 for a float32 model) holds the
    exact widening of what the first calls summed to, so narrowing it back is exact and the result is,
    bit for bit, the widening of the sum a ``target`` of ``value``'s dtype would hold.
    """
    if first:
        target.copy_(value.view_as(target))
    elif target.dtype == value.dtype:
        target.add_(value.view_as(target))
    else:
        target.copy_(target.to(value.dtype).add_(value.view_as(target)))


def conv2d_support(module: nn.Conv2d) -> str | None:
    """Why certun's code cannot take this Conv2d (``None``: it can)."""
    if isinstance(module.padding, str) and module.padding == "same":
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            return "padding='same' with an even receptive field pads asymmetrically"
    return None


def _geometry(module: nn.Conv2d, A: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input as the convolution sees it (non-zero padding modes applied) and the remaining zero padding."""
    if module.padding_mode != "zeros":
        return F.pad(A, module._reversed_padding_repeated_twice, mode=module.padding_mode), (0, 0)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return A, (0, 0)
        return A, tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size, strict=True))
    return A, tuple(module.padding)


def _unfolded(module: nn.Conv2d, A: torch.Tensor, G: torch.Tensor, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, g)`` of shapes ``(B·groups, L, Cin/groups·kh·kw)`` and ``(B·groups, L, Cout/groups)`` (views)."""
    x, padding = _geometry(module, A.to(dtype))
    batch, groups = x.shape[0], module.groups
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    length = cols.shape[-1]
    a = cols.view(batch * groups, -1, length).mT
    g = G.to(dtype).reshape(batch * groups, -1, length).mT
    return a, g


def conv2d_norms(module: nn.Conv2d, entries: Entries, batch: int, dtype: torch.dtype,
                 keep: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Squared per-sample norms (float64, shape ``(B,)``) of the weight and bias gradients.

    Ghost norms on unfolded patches where they cost fewer operations (few output positions, wide
    layers); otherwise the per-sample weight gradients themselves, as one grouped weight-gradient
    convolution with the batch folded into the groups (2–3× faster than ``unfold`` and ``bmm`` on a CPU).
    """
    length = sum(G[0, 0].numel() for _, G in entries)
    i = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    o = module.out_channels // module.groups
    if 2 * length * (i + o) < i * o:
        pairs = [_unfolded(module, A, G, dtype) for A, G in entries]
        g = _cat([p[1] for p in pairs], dim=1)
        weight = outer_sq_norms(_cat([p[0] for p in pairs], dim=1), g).reshape(batch, -1).sum(dim=1)
        bias = g.sum(dim=1).pow(2).reshape(batch, -1).sum(dim=1, dtype=F64)
    else:
        step = max(1, _CHUNK_ELEMENTS // module.weight.numel())  # memory: at most one chunk of samples
        weight = torch.empty(batch, dtype=F64, device=module.weight.device)
        for k in range(0, batch, step):
            per = _per_sample_conv(module, [(A[k:k + step], G[k:k + step]) for A, G in entries], dtype)
            weight[k:k + step] = per.pow(2).sum(dim=1, dtype=F64)
            if keep is not None and step >= batch and per.numel() <= KEEP_ELEMENTS:
                keep["weight"] = per
        bias = sum(G.to(dtype).sum(dim=(2, 3)) for _, G in entries).pow(2).sum(dim=1, dtype=F64)
    out = {"weight": weight}
    if module.bias is not None:
        out["bias"] = bias
    return out


def _per_sample_conv(module: nn.Conv2d, entries: Entries, dtype: torch.dtype) -> torch.Tensor:
    """Per-sample weight gradients ``(B, weight.numel())``: the batch folded into the convolution's groups."""
    batch = entries[0][0].shape[0]
    shape = (batch * module.out_channels, module.in_channels // module.groups, *module.kernel_size)
    total = None
    for A, G in entries:
        x, padding = _geometry(module, A.to(dtype))
        w = torch.nn.grad.conv2d_weight(x.reshape(1, -1, *x.shape[2:]), shape,
                                        G.to(dtype).reshape(1, -1, *G.shape[2:]), module.stride, padding,
                                        module.dilation, batch * module.groups).view(batch, -1)
        total = w if total is None else total + w
    return total


def conv2d_write(module: nn.Conv2d, entries: Entries, coef: torch.Tensor, out: dict[str, torch.Tensor],
                 keep: dict[str, torch.Tensor] | None = None) -> None:
    """``Σ_i coef_i · g_i`` of the weight and bias into ``out``: kept per-sample gradients weighted by
    ``coef`` (one matrix-vector product), or one weight-gradient convolution per call."""
    batch, dtype = int(coef.shape[0]), coef.dtype
    for k, (A, G) in enumerate(entries):
        gc = G.to(dtype) * coef[:, None, None, None]
        if "weight" in out and not (keep and "weight" in keep):
            x, padding = _geometry(module, A.to(dtype))
            put(out["weight"], torch.nn.grad.conv2d_weight(x, module.weight.shape, gc, module.stride, padding,
                                                           module.dilation, module.groups), k == 0)
        if "bias" in out:
            put(out["bias"], gc.sum(dim=(0, 2, 3)), k == 0)
    if "weight" in out and keep and "weight" in keep:
        put(out["weight"], torch.mv(keep["weight"].reshape(batch, -1).t(), coef), True)
