"""The backend's noisy step on its flat float64 master, fused into few passes over memory.

The step functions of :mod:`certun.backends.torch._steps` make one pass over the ``d`` coordinates
per operation (scale, shrink, update, noise, each norm): at ``d = 10⁷`` that is ten passes over 80 MB
per step. Here the same elementwise operations, in the same order per coordinate and with the same
scalars, run block by block over cache-sized slices, so a coordinate is read from memory once per
phase. Elementwise operations do not depend on how the vector is cut, so the released parameters
are bit for bit those of the step functions (tests check this against them). What is *not* cut:
every norm that sets a clipping or projection factor is measured over the whole vector by
:func:`~certun.backends.torch._steps.norm` exactly as before, so the factors are the same numbers.

Two passes of the step functions are left out where they cannot change anything:

* on the CPU, a multiplication by a factor of exactly 1 (the vector was inside its ball): it is the
  identity (on an accelerator it runs, since asking would wait for the device every step);
* the re-measurement after scaling a float64 vector with no centre. Measured ``n`` and the true norm
  differ by a relative ``d·2⁻⁵³`` at most (float64 accumulation, any summation order), the factor and
  the scaled coordinates add a few roundings of 2⁻⁵³, so for ``d ≤ 2³⁰`` the scaled norm, and its
  re-measurement, stay below ``C(1 − SAFETY)(1 + 3·10⁻⁷) < C/(1 + 2⁻²²)``, the limit under which the
  re-measurement does nothing. Above ``2³⁰`` coordinates, or around a centre (where adding the centre
  back rounds to the precision of the centre's coordinates), the re-measurement runs as before. See
  docs/theory.md#floating-point-and-randomness.

The history's statistics (the gradient's norm, the distance to the centre) are summed from the
blocks while they are in cache: they equal the whole-vector norms up to float64 rounding.
Runs with a centre use the step functions unchanged.
"""

from __future__ import annotations

import torch

from certun.backends.torch._steps import SAFETY, _enforce_radius, norm
from certun.errors import InvalidParameterError

__all__ = ["BLOCK", "FusedStep"]

#: Coordinates per block on a CPU: 1 MiB of float64, a multiple of every SIMD width, so the blocks'
#: vectorised loops and scalar tails cover the coordinates exactly as one whole-vector loop does.
BLOCK = 1 << 17
#: Largest ``d`` for which the analytic bound replaces the re-measurement (module docstring).
_ANALYTIC_D = 1 << 30


def _factor(n: torch.Tensor, C: float) -> torch.Tensor:
    # the step functions' shrink factor, bit for bit: min(1, C(1 − SAFETY)/n) in float64
    return torch.clamp(C * (1.0 - SAFETY) / n, max=1.0)


def _is_one(f: torch.Tensor) -> bool:
    """Whether a factor is exactly 1, so its multiplication can be skipped. On an accelerator the answer
    would wait for the device each step, so the multiplication runs anyway (``v·1`` is exactly ``v``)."""
    return f.device.type == "cpu" and bool(f == 1.0)


class FusedStep:
    """The noisy update of a 1-D float64 master ``x`` (no centre), in place, block by block.

    Args:
        d: the number of coordinates.
        device: where ``x`` lives; on a CPU the blocks are :data:`BLOCK` long, elsewhere one block.
        block: block length override (tests use small blocks on small models).
    """

    def __init__(self, d: int, device: torch.device, block: int | None = None) -> None:
        size = block or (BLOCK if device.type == "cpu" else max(d, 1))
        self.blocks = [slice(s, min(s + size, d)) for s in range(0, d, size)] or [slice(0, 0)]
        self.remeasure = d > _ANALYTIC_D

    def gc(self, x: torch.Tensor, g: torch.Tensor, z: torch.Tensor, *, gamma: float, lam: float, C1: float,
           sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient clipping: ``x ← x − γ(clip(g, C1) + λx) + σz``; ``g`` is clipped in place.

        Returns the clipped gradient's norm and ``‖x‖`` after the step (float64 scalars).
        """
        f, scale, gnorm = self._clip_factor(g, C1)
        gsq, xsq = [], []
        for b in self.blocks:
            xb, gb = x[b], g[b]
            if scale:
                gb.mul_(f)
                gsq.append(torch.dot(gb, gb))
            if lam != 0.0:
                xb.mul_(1.0 - gamma * lam)
            xb.add_(gb, alpha=-float(gamma))
            xb.add_(z[b], alpha=float(sigma))
            xsq.append(torch.dot(xb, xb))
        return _root(gsq) if scale else gnorm, _root(xsq)

    def _clip_factor(self, g: torch.Tensor, C1: float) -> tuple[torch.Tensor, bool, torch.Tensor]:
        """``g``'s clipping factor, whether the blocks must still apply it, and ``‖g‖`` when they need not."""
        n = norm(g)
        f = _factor(n, C1)
        if _is_one(f):
            return f, False, n.reshape(())
        if self.remeasure:
            _scale_and_check(g, f, C1)
            return f, False, norm(g).reshape(())
        return f, True, n.reshape(())

    def mc_after(self, x: torch.Tensor, g: torch.Tensor, z: torch.Tensor, *, gamma: float, lam: float, C2: float,
                 sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Model clipping, noise after projection: ``x ← Π_{C2}(x − γ(g + λx)) + σz``.

        Returns ``‖g‖`` (unclipped, as the history records it) and ``‖x‖`` after the step.
        """
        gsq, xsq = [], []
        for b in self.blocks:
            xb, gb = x[b], g[b]
            if lam != 0.0:
                xb.mul_(1.0 - gamma * lam)
            xb.add_(gb, alpha=-float(gamma))
            gsq.append(torch.dot(gb, gb))
        f = _factor(norm(x), C2)
        scale = not _is_one(f)
        if scale and self.remeasure:
            _scale_and_check(x, f, C2)
            scale = False
        for b in self.blocks:
            xb = x[b]
            if scale:
                xb.mul_(f)
            xb.add_(z[b], alpha=float(sigma))
            xsq.append(torch.dot(xb, xb))
        return _root(gsq), _root(xsq)

    def mc_before(self, x: torch.Tensor, g: torch.Tensor, z: torch.Tensor, *, gamma: float, lam: float,
                  C1: float | None, C2: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Model clipping, noise before projection: ``x ← Π_{C2}(x − γ·clip(g + λx, C1) + σz)``.

        ``g`` is overwritten with the clipped ``g + λx``. Returns its norm and ``‖x‖`` after the step.
        """
        if C1 is None:
            raise InvalidParameterError("C1", None, "> 0 for mode clip_noise_before_projection")
        if lam != 0.0:
            for b in self.blocks:
                g[b].add_(x[b], alpha=float(lam))
        f, scale, gnorm = self._clip_factor(g, C1)
        gsq = []
        for b in self.blocks:
            xb, gb = x[b], g[b]
            if scale:
                gb.mul_(f)
                gsq.append(torch.dot(gb, gb))
            xb.add_(gb, alpha=-float(gamma))
            xb.add_(z[b], alpha=float(sigma))
        gnorm = _root(gsq) if scale else gnorm
        m = norm(x)
        f2 = _factor(m, C2)
        if _is_one(f2):
            return gnorm, m.reshape(())
        if self.remeasure:
            _scale_and_check(x, f2, C2)
            return gnorm, norm(x).reshape(())
        xsq = []
        for b in self.blocks:
            xb = x[b].mul_(f2)
            xsq.append(torch.dot(xb, xb))
        return gnorm, _root(xsq)


def _scale_and_check(v: torch.Tensor, f: torch.Tensor, C: float) -> None:
    # beyond the analytic bound's range: scale, then re-measure and enforce as the step functions do
    v.mul_(f)
    _enforce_radius(v, C, None)


def _root(squares: list[torch.Tensor]) -> torch.Tensor:
    """The Euclidean norm from per-block sums of squares (float64 scalar)."""
    return torch.stack(squares).sum().sqrt()
