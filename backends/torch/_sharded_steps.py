"""The noisy step on a shard of the float64 master: the formulas of :mod:`certun.backends.torch._steps`
with every norm taken over the WHOLE vector (the ranks' float64 squared norms all-reduced).

A per-shard norm would clip or project each shard to the full radius, so the whole vector could leave
its ball by a factor √(world size): the accountant's C0, C1, C2 would be false
(docs/theory.md#distributed-runs). The radius is enforced as in the single-process functions: the
result is measured again and shrunk until it lies inside (falling back to the centre).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from certun.backends.torch._steps import _MEASURE_SLACK, SAFETY, _shrink_towards
from certun.errors import InvalidParameterError

__all__ = ["Norm", "clip", "gc_step", "mc_step", "output_perturbation", "project_ball"]

#: ``norm(v)``: the float64 L2 norm of the whole vector whose shard on this rank is ``v`` (a 0-d tensor).
Norm = Callable[[torch.Tensor], torch.Tensor]

_RETRIES = 8


def _scale(x: torch.Tensor, C: float, center: torch.Tensor | None, norm: Norm) -> torch.Tensor:
    """``x ← c + (x − c)·min(1, C(1 − SAFETY)/‖x − c‖)``, then re-measured until ``‖x − c‖ ≤ C/(1 + 2⁻²²)``
    (the allowance for the measurement's own rounding, as in the single-process steps)."""
    target = C * (1.0 - SAFETY)
    limit = C / (1.0 + _MEASURE_SLACK)  # a re-measured norm may be low by this much: accept only below it
    for attempt in range(_RETRIES + 1):
        diff = x if center is None else x - center
        n = float(norm(diff))
        if n <= (target if attempt == 0 else limit):
            return x
        factor = 0.0 if attempt == _RETRIES or n == float("inf") else target / n
        if center is None:
            x.mul_(factor)
        else:
            torch.add(center, diff, alpha=factor, out=x)
        target = target * (1.0 - 2.0 ** (attempt - 20))
    return x


def clip(g: torch.Tensor, C: float, norm: Norm) -> torch.Tensor:
    """Scale the shard ``g`` (in place) so that the whole vector's norm is at most ``C``."""
    return _scale(g, C, None, norm)


def project_ball(x: torch.Tensor, C: float, center: torch.Tensor | None, norm: Norm) -> torch.Tensor:
    """Project the shard ``x`` (in place) so that the whole vector lies in the ball of radius ``C`` around ``c``."""
    return _scale(x, C, center, norm)


def gc_step(x: torch.Tensor, g: torch.Tensor, *, gamma: float, lam: float, C1: float, center: torch.Tensor | None,
            norm: Norm, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x ← x − γ(clip(g, C1) + λ(x − c)) + σ z`` on this rank's shard (docs/theory.md#gradient-clipping)."""
    clip(g, C1, norm)
    _shrink_towards(x, gamma, lam, center)
    x.add_(g, alpha=-float(gamma))
    return x.add_(noise, alpha=float(sigma))


def mc_step(x: torch.Tensor, g: torch.Tensor, *, gamma: float, lam: float, C2: float, sigma: float, mode: str,
            C1: float | None, center: torch.Tensor | None, norm: Norm, noise: torch.Tensor) -> torch.Tensor:
    """One model-clipping step on this rank's shard, both modes (docs/theory.md#model-clipping)."""
    if mode == "noise_after_projection":
        _shrink_towards(x, gamma, lam, center)
        x.add_(g, alpha=-float(gamma))
        project_ball(x, C2, center, norm)
        return x.add_(noise, alpha=float(sigma))
    if mode == "clip_noise_before_projection":
        if C1 is None:
            raise InvalidParameterError("C1", None, "> 0 for mode clip_noise_before_projection")
        if lam != 0.0:
            g.add_(x, alpha=float(lam))
            if center is not None:
                g.sub_(center, alpha=float(lam))
        clip(g, C1, norm)
        x.add_(g, alpha=-float(gamma))
        x.add_(noise, alpha=float(sigma))
        return project_ball(x, C2, center, norm)
    raise InvalidParameterError("mode", mode, "'noise_after_projection' or 'clip_noise_before_projection'")


def output_perturbation(x: torch.Tensor, *, C0: float, sigma0: float, center: torch.Tensor | None, norm: Norm,
                        noise: torch.Tensor) -> torch.Tensor:
    """``x ← Π_{C0}(x) + σ0 z`` on this rank's shard (docs/theory.md#output-perturbation)."""
    project_ball(x, C0, center, norm)
    return x.add_(noise, alpha=float(sigma0))
