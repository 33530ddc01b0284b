"""Do the per-sample gradients add up to the batch gradient? A check against hooks that see only part of a use.

Per-sample clipping gets each sample's gradient from hooks on layers (certun's ``nn.Linear`` path,
Opacus' ``GradSampleHooks``). A weight also used outside its layer (``F.linear(h, layer.weight)``, a
tied embedding) receives gradient the hooks never see: its per-sample gradients, and so the clipping
that bounds each sample's influence (docs/theory.md#gradient-clipping), are wrong while the run looks
normal. Before clipping, ``Σ_i g_i`` must equal autograd's gradient of the summed loss; the gradient
computer compares the two, in float64, on the first step and refuses the model when they differ by
more than rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from certun.errors import UnsupportedModelError

__all__ = ["check_per_sample_sum", "opacus_sums", "tf32_possible"]

#: Rounding allowance, relative to ``Σ_i ‖g_i‖``, in units of the precision the gradients were computed
#: in. Both sides share every activation and backpropagated gradient; they differ only in how the
#: batch is reduced, whose float32 error grows like ``sqrt(terms)`` units of ``Σ_i ‖g_i‖ / terms``:
#: 1024 units is a margin of orders of magnitude. TF32 rounds the *inputs* of each product to 10
#: mantissa bits (error about 2^-11 of ``Σ_i ‖g_i‖`` whatever the batch), so 8 of its units suffice.
_UNITS = 1024
_TF32_EPS, _TF32_UNITS = 2.0**-10, 8


def check_per_sample_sum(sums: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor | None], *,
                         scale: float, dtype: torch.dtype, tf32: bool = False) -> bool:
    """Refuse when ``sums[name]`` (``Σ_i g_i``, float64) is not autograd's ``batch[name]`` up to rounding.

    Returns ``False`` (nothing checked) when a gradient is not finite: the run refuses those itself, and
    the caller checks the next batch instead.

    Args:
        sums: per parameter, the sum over the batch of its per-sample gradients (before clipping).
        batch: per parameter, autograd's gradient of the summed loss (``None`` for no gradient).
        scale: ``Σ_i ‖g_i‖`` (or a bound on it): the size of what was summed, which rounding scales with.
        dtype: the dtype the gradients were computed in (its unit roundoff sets the tolerance).
        tf32: float32 products may have run in TF32 (CUDA with ``allow_tf32``): a looser tolerance.

    Raises:
        UnsupportedModelError: one entry per parameter whose sums differ.
    """
    finite = math.isfinite(scale) and all(bool(torch.isfinite(t).all()) for t in sums.values()) and all(
        t is None or bool(torch.isfinite(t).all()) for t in batch.values())
    if not finite:
        return False
    eps, units = torch.finfo(dtype).eps, _UNITS
    if tf32 and dtype == torch.float32:
        eps, units = _TF32_EPS, _TF32_UNITS
    tol = eps * units * max(float(scale), torch.finfo(dtype).tiny)
    problems = []
    for name, total in sums.items():
        expected = batch.get(name)
        expected = (torch.zeros_like(total, dtype=torch.float64) if expected is None
                    else expected.detach().to(torch.float64).reshape(total.shape))
        gap = float(torch.linalg.vector_norm(total.to(torch.float64) - expected))
        if not gap <= tol:  # a NaN gap is refused too
            # no numbers in the message: the gap is a statistic of the starting model, before any noise
            problems.append((name, "its per-sample gradients do not sum to autograd's batch gradient (beyond "
                             "rounding): it is used outside the layer whose hooks compute "
                             "per-sample gradients (e.g. F.linear(h, layer.weight), or tied to another layer), so "
                             "per-sample clipping would bound the wrong gradients",
                             "use clip='batch', or call the layer as a module only (no functional reuse, no tying)"))
    if problems:
        raise UnsupportedModelError(problems)
    return True


def opacus_sums(named: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
    """``(Σ_i g_i per parameter, Σ_i ‖g_i‖)`` from Opacus' ``grad_sample`` tensors ``(B, ...)``."""
    sums: dict[str, torch.Tensor] = {}
    squares = None
    for name, gs in named.items():
        g = gs.detach().to(torch.float64)
        sums[name] = g.sum(dim=0)
        sq = g.reshape(g.shape[0], -1).pow(2).sum(dim=1)
        squares = sq if squares is None else squares + sq
    scale = 0.0 if squares is None else float(squares.sqrt().sum())
    return sums, scale


def tf32_possible(device: torch.device) -> bool:
    """Whether float32 matrix products or convolutions on ``device`` may run in TF32."""
    return device.type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
