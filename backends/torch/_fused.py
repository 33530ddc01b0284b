"""The backend's noisy step on its flat float64 master, fused into few passes over memory.

The step functions of :mod:`certun.backends.torch._steps` make one pass over the ``d`` coordinates
per operation (widen the gradient, each norm, scale, shrink, update, noise, round into the
parameters): at ``d = 10⁷`` each pass moves 80 MB, and those passes, not arithmetic, were most of the
step's cost. Here the same elementwise operations, in the same order per coordinate and with the
same scalars, run block by block (:data:`BLOCK` coordinates), so a coordinate is read from memory
once per phase:

* the gradient is read where autograd left it, one float32 (or float64) tensor per parameter, and
  widened to float64 a block at a time into a buffer of one block (no float64 copy of the whole
  gradient exists; on an accelerator one block is the whole vector); a gradient that is already one
  float64 vector (per-sample paths, distributed runs) is read and scaled in place;
* the new iterate is rounded into the model's parameters in the same pass, so the next step's
  forward needs no copy (the caller copies anyway when user code ran between steps).

(Producing the noise block by block inside the loop was tried and measured slower on a CPU: the
sampler's temporaries evict the blocks being updated. The draw is made whole, into a reused buffer.)

The blocks are a fixed partition of ``[0, d)`` (they depend on ``d`` and the device only), whichever
way the gradient is handed over. Every norm that sets a clipping or projection factor is the float64
norm of the blocks' float64 norms, so it is the same number for the same vector (whatever the number
of threads), and its relative error is below ``d·2⁻⁵³`` as for any summation order. A vector of one block
(``d ≤`` :data:`BLOCK` on a CPU, any ``d`` elsewhere) gets exactly the step functions' norm, so small
models release the bits the step functions would.

The re-measurement after scaling a float64 vector with no centre is left out where it cannot act
(and a multiplication by a factor of exactly 1 on the CPU, which is the identity): the measured
``n`` and the true norm differ by a relative ``d·2⁻⁵³`` at most, the factor and the scaled
coordinates add a few roundings of 2⁻⁵³, so for ``d ≤ 2³⁰`` the scaled norm stays below
``C(1 − SAFETY)(1 + 3·10⁻⁷) < C/(1 + 2⁻²²)``, the limit under which the re-measurement does nothing.
Above ``2³⁰`` coordinates the caller runs the step functions instead. Runs with a centre use the
step functions too. See docs/theory.md#floating-point-and-randomness.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import torch

from certun.backends.torch._steps import _shrink_factor
from certun.errors import InvalidParameterError, UnlearningRunError

__all__ = ["BLOCK", "FusedStep", "fits"]

#: Coordinates per block on a CPU: 1 MiB of float64; large enough that the per-operation overhead of
#: a block is small, small enough that a block's operands stay in cache between its operations.
BLOCK = 1 << 17
#: Largest ``d`` for which the analytic bound replaces the re-measurement (module docstring).
_ANALYTIC_D = 1 << 30


def fits(d: int) -> bool:
    """Whether the fused step may run on ``d`` coordinates (the analytic bound's range)."""
    return d <= _ANALYTIC_D


class Block(NamedTuple):
    """Coordinates ``[start, stop)`` of the flat vector, and where they lie in the parameters: one
    ``(parameter, lo, hi, offset in the block)`` per parameter the block meets."""

    start: int
    stop: int
    pieces: tuple[tuple[int, int, int, int], ...]


def _factor(n: torch.Tensor, C: float) -> torch.Tensor:
    """The step functions' shrink factor ``min(1, C(1 − SAFETY)/n)``, for a float64 vector."""
    return _shrink_factor(n, C, torch.float64)


def _is_one(f: torch.Tensor) -> bool:
    """Whether a factor is exactly 1, so its multiplication can be skipped. On an accelerator the answer
    would wait for the device each step, so the multiplication runs anyway (``v·1`` is exactly ``v``)."""
    return f.device.type == "cpu" and bool(f == 1.0)


class FusedStep:
    """The noisy update of a 1-D float64 master ``x`` (no centre), in place, block by block.

    Args:
        sizes: the unlearned parameters' sizes, in the master's order (they sum to ``d``).
        device: where ``x`` lives; on a CPU the blocks are :data:`BLOCK` long, elsewhere one block.
        block: block length override (tests use small blocks on small models).

    Each update takes the gradient as ``pieces`` (one flat tensor per parameter, or one of length
    ``d``), the draw ``z`` (float64, length ``d``), and ``params``, the model's flat parameter vector
    that receives the new iterate rounded to its dtype (None: not written).
    """

    def __init__(self, sizes: Sequence[int], device: torch.device, block: int | None = None) -> None:
        d = sum(sizes)
        self.d, self.sizes, self.device = d, list(sizes), device
        self.block = block or (BLOCK if device.type == "cpu" else max(d, 1))
        ends = list(itertools.accumulate(sizes))
        self.blocks = [self._block(lo, min(lo + self.block, d), ends) for lo in range(0, d, self.block)]
        self.work: torch.Tensor | None = None  # the widened block, made when a gradient is not float64 already

    @staticmethod
    def _block(start: int, stop: int, ends: list[int]) -> Block:
        """Block ``[start, stop)`` with the parameter ranges it covers (``ends``: the parameters' cumulative sizes)."""
        pieces, i = [], bisect.bisect_right(ends, start)
        while i < len(ends):
            begin = ends[i - 1] if i else 0
            if begin >= stop:
                break
            lo, hi = max(start, begin), min(stop, ends[i])
            if lo < hi:
                pieces.append((i, lo - begin, hi - begin, lo - start))
            i += 1
        return Block(start, stop, tuple(pieces))

    # ------------------------------------------------------------------ the three updates
    def gc(self, x: torch.Tensor, pieces: Sequence[torch.Tensor], z: torch.Tensor, params: torch.Tensor | None, *,
           gamma: float, lam: float, C1: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient clipping: ``x ← x − γ(clip(g, C1) + λx) + σz``.

        Returns the clipped gradient's norm (``f·‖g‖``) and ``‖x‖`` after the step (float64 scalars).
        """
        n = self._norm(pieces, z)
        f = _factor(n, C1)
        scale = not _is_one(f)
        xn = []
        for b in self.blocks:
            w, xb = self._again(pieces, b), x[b.start:b.stop]
            if scale:
                w.mul_(f)
            if lam != 0.0:
                xb.mul_(1.0 - gamma * lam)
            xb.add_(w, alpha=-float(gamma))
            xb.add_(z[b.start:b.stop], alpha=float(sigma))
            xn.append(_square(xb))
            _write(params, xb, b)
        return (n * f).reshape(()), _root(xn, x)

    def mc_after(self, x: torch.Tensor, pieces: Sequence[torch.Tensor], z: torch.Tensor, params: torch.Tensor | None,
                 *, gamma: float, lam: float, C2: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Model clipping, noise after projection: ``x ← Π_{C2}(x − γ(g + λx)) + σz``.

        Returns ``‖g‖`` (unclipped, as the history records it) and ``‖x‖`` after the step.
        """
        self._check(pieces, z)
        gn, un = [], []
        for b in self.blocks:
            w, xb = self._widen(pieces, b), x[b.start:b.stop]
            gn.append(_square(w))
            if lam != 0.0:
                xb.mul_(1.0 - gamma * lam)
            xb.add_(w, alpha=-float(gamma))
            un.append(self._part(xb))
        f = _factor(self._whole(un, x), C2)
        scale = not _is_one(f)
        xn = []
        for b in self.blocks:
            xb = x[b.start:b.stop]
            if scale:
                xb.mul_(f)
            xb.add_(z[b.start:b.stop], alpha=float(sigma))
            xn.append(_square(xb))
            _write(params, xb, b)
        return _root(gn, x), _root(xn, x)

    def mc_before(self, x: torch.Tensor, pieces: Sequence[torch.Tensor], z: torch.Tensor, params: torch.Tensor | None,
                  *, gamma: float, lam: float, C1: float | None, C2: float,
                  sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Model clipping, noise before projection: ``x ← Π_{C2}(x − γ·clip(g + λx, C1) + σz)``.

        Returns the clipped ``g + λx``'s norm and ``‖x‖`` after the step (``f2·‖x'‖``: the projection
        factor times the measured norm before it, as the history needs it; nothing is decided on it).
        """
        if C1 is None:
            raise InvalidParameterError("C1", None, "> 0 for mode clip_noise_before_projection")
        n = self._norm(pieces, z, x=x, lam=lam)  # a float64 vector now holds g + λx itself (see _widen)
        f = _factor(n, C1)
        scale = not _is_one(f)
        again = None if _in_place(pieces) else x
        xn = []
        for b in self.blocks:
            w, xb = self._again(pieces, b, x=again, lam=lam), x[b.start:b.stop]
            if scale:
                w.mul_(f)
            xb.add_(w, alpha=-float(gamma))
            xb.add_(z[b.start:b.stop], alpha=float(sigma))
            xn.append(self._part(xb))
        m = self._whole(xn, x)
        f2 = _factor(m, C2)
        one = _is_one(f2)
        for b in self.blocks:
            xb = x[b.start:b.stop]
            if not one:
                xb.mul_(f2)
            _write(params, xb, b)
        return (n * f).reshape(()), (m * f2).reshape(())  # the history's ‖x‖: f2·m, not measured again

    # ------------------------------------------------------------------ passes
    def _part(self, v: torch.Tensor) -> torch.Tensor:
        """One block's float64 norm, by the step functions' own reduction (:func:`._steps.norm`).

        Not ``torch.dot``: on a CPU that goes to a threaded BLAS whose result changes with the number
        of threads, and the released bits must not (``vector_norm``'s do not)."""
        return torch.linalg.vector_norm(v, dtype=torch.float64)

    def _whole(self, parts: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """The vector's Euclidean norm from its blocks' norms (a float64 scalar on ``like``'s device): one
        block's own, or the norm of the blocks' norms."""
        if not parts:
            return torch.zeros((), dtype=torch.float64, device=like.device)
        if len(parts) == 1:
            return parts[0]
        return torch.linalg.vector_norm(torch.stack(parts))

    def _widen(self, pieces: Sequence[torch.Tensor], b: Block, *, x: torch.Tensor | None = None,
               lam: float = 0.0) -> torch.Tensor:
        """Block ``b`` of the gradient in float64 (plus ``λx`` when ``x`` is given), to scale in place.

        A gradient handed over as one float64 vector (a scratch buffer of the caller's) is that block
        itself, changed in place; any other is widened into the work buffer, the block's size.
        """
        if _in_place(pieces):
            w = pieces[0][b.start:b.stop]
        elif len(pieces) == 1:
            w = self._work(b).copy_(pieces[0][b.start:b.stop])
        else:
            w = self._work(b)
            for i, lo, hi, at in b.pieces:
                w[at:at + hi - lo].copy_(pieces[i][lo:hi])
        if x is not None and lam != 0.0:
            w.add_(x[b.start:b.stop], alpha=float(lam))
        return w

    def _again(self, pieces: Sequence[torch.Tensor], b: Block, *, x: torch.Tensor | None = None,
               lam: float = 0.0) -> torch.Tensor:
        """Block ``b`` as :meth:`_norm` widened it, for the pass after it. With one block the work buffer
        still holds it, so a small model's pieces are not copied twice a step; otherwise it is widened again.

        The caller's contract: the same ``x`` and ``lam`` as it gave :meth:`_norm`, and nothing written to the
        buffer or ``x`` in between (only the factor is computed there); with one block they are not read."""
        if len(self.blocks) == 1 and not _in_place(pieces):
            return self._work(b)
        return self._widen(pieces, b, x=x, lam=lam)

    def _work(self, b: Block) -> torch.Tensor:
        if self.work is None:
            self.work = torch.empty(min(self.block, self.d), dtype=torch.float64, device=self.device)
        return self.work[: b.stop - b.start]

    def _norm(self, pieces: Sequence[torch.Tensor], z: torch.Tensor, *, x: torch.Tensor | None = None,
              lam: float = 0.0) -> torch.Tensor:
        """The float64 norm of the gradient (of ``g + λx`` when ``x`` is given), from the blocks."""
        self._check(pieces, z)
        norms = []
        for b in self.blocks:
            w = self._widen(pieces, b, x=x, lam=lam)
            norms.append(self._part(w))
        return self._whole(norms, z)

    def _check(self, pieces: Sequence[torch.Tensor], z: torch.Tensor) -> None:
        sizes = [p.numel() if p.dim() == 1 else -1 for p in pieces]
        if sizes != self.sizes and sizes != [self.d]:
            shapes = [tuple(p.shape) for p in pieces[:8]]
            raise UnlearningRunError(f"gradient pieces of shapes {shapes} do not match the parameters' sizes "
                                     f"{self.sizes[:8]} as 1-D tensors (or one vector of {self.d})")
        if z.shape != (self.d,):
            raise UnlearningRunError(f"the draw has shape {tuple(z.shape)}, expected ({self.d},)")


def _in_place(pieces: Sequence[torch.Tensor]) -> bool:
    """Whether the gradient is one float64 vector, read (and scaled) in place rather than widened."""
    return len(pieces) == 1 and pieces[0].dtype == torch.float64


def _write(params: torch.Tensor | None, xb: torch.Tensor, b: Block) -> None:
    if params is not None:
        params[b.start:b.stop].copy_(xb)  # the one rounding to the parameters' dtype


def _square(v: torch.Tensor) -> torch.Tensor:
    """A block's float64 sum of squares for the history's statistics only (never for a factor): a dot
    product, fast, whose last bits may depend on the number of threads."""
    return torch.dot(v, v)


def _root(squares: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """A history statistic's norm from its blocks' :func:`_square` (a float64 scalar on ``like``'s device)."""
    if not squares:
        return torch.zeros((), dtype=torch.float64, device=like.device)
    if len(squares) == 1:
        return squares[0].sqrt()  # the sum of one term, without stacking it
    return torch.stack(squares).sum().sqrt()
