"""The float64 Box–Muller kernel of :mod:`certun.backends.noise`: three uint64 words to one Gaussian pair.

The sampler and its stated bounds are described in :mod:`certun.backends.noise` (docs/noise.md).
Integer steps are exact int64 operations, the angle is reduced exactly to an octant, and ``log`` is
the only libm call.
"""

from __future__ import annotations

import math

import numpy as np

_F50 = (1 << 50) - 1
_PHI_SCALE = (math.pi / 4) * 2.0**-50  # π/4 (float64) times a power of two: exact scaling
_SIN_TAYLOR = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(9))  # 1, -1/3!, ..., 1/17!


class _Workspace:
    """Preallocated temporaries for :func:`_fill_pairs` (no allocation per chunk)."""

    __slots__ = ("c", "i", "j", "o", "r", "s", "t")

    def __init__(self, n: int) -> None:
        self.i, self.j, self.o = (np.empty(n, dtype=np.int64) for _ in range(3))
        self.r, self.t, self.s, self.c = (np.empty(n, dtype=np.float64) for _ in range(4))


def _fill_pairs(w: np.ndarray, out: np.ndarray, ws: _Workspace) -> None:
    """Box–Muller on rows of three uint64 words ``w`` (m, 3) into ``out`` (m, 2) float64.

    Integer steps run on int64 views (every shifted or masked value is below 2**53, so each
    int64 -> float64 conversion is exact); signs and swaps are bit operations, hence exact.
    """
    m = w.shape[0]
    i, j, o = ws.i[:m], ws.j[:m], ws.o[:m]
    r, t, s, c = ws.r[:m], ws.t[:m], ws.s[:m], ws.c[:m]
    _radius(w, i, r, t)
    _sin_cos(w, i, j, o, t, s, c)
    np.multiply(r, c, out=out[:, 0])
    np.multiply(r, s, out=out[:, 1])
    # cos theta < 0 in octants 2..5, sin theta < 0 in octants 4..7: flip the sign bit.
    oi = out.view(np.int64)
    np.add(o, 2, out=j)
    j >>= 2
    j &= 1
    j <<= 63
    oi[:, 0] ^= j
    np.right_shift(o, 2, out=j)
    j &= 1
    j <<= 63
    oi[:, 1] ^= j


def _radius(w: np.ndarray, i: np.ndarray, r: np.ndarray, t: np.ndarray) -> None:
    """``r = sqrt(-2 ln u1)`` from words 0 and 1 (``i``, ``t`` are scratch)."""
    wi, iu = w.view(np.int64), i.view(np.uint64)
    # u1 = (w0·2^64 + w1 + 1/2)·2^-128 as four exact terms, largest first: 2^-129 <= u1 <= 1.
    np.right_shift(w[:, 0], np.uint64(11), out=iu)
    np.multiply(i, 2.0**-53, out=r)
    np.bitwise_and(wi[:, 0], 2047, out=i)
    np.multiply(i, 2.0**-64, out=t)
    r += t
    np.right_shift(w[:, 1], np.uint64(11), out=iu)
    np.multiply(i, 2.0**-117, out=t)
    r += t
    np.bitwise_and(wi[:, 1], 2047, out=i)
    np.add(i, 0.5, out=t)
    t *= 2.0**-128
    r += t
    np.log(r, out=r)
    r *= -2.0
    np.sqrt(r, out=r)


def _sin_cos(w: np.ndarray, i: np.ndarray, j: np.ndarray, o: np.ndarray, t: np.ndarray, s: np.ndarray,
             c: np.ndarray) -> None:
    """``(s, c) = (sin, cos)`` of the angle in word 2 within its octant ``o``, swapped where the octant says."""
    iu = i.view(np.uint64)
    # 53 angle bits: octant o (top 3), position f (low 50), mirrored in odd octants.
    np.right_shift(w[:, 2], np.uint64(11), out=iu)
    np.right_shift(i, 50, out=o)
    np.bitwise_and(o, 1, out=j)
    j *= _F50
    i ^= j
    i &= _F50
    np.add(i, 0.5, out=t)
    t *= _PHI_SCALE  # phi in (0, pi/4)
    # sin(phi): Taylor polynomial to phi^17 by Horner (truncation < 1e-19 relative on (0, pi/4)); only
    # IEEE multiplications and additions, so the bits do not depend on the platform's libm.
    np.multiply(t, t, out=c)
    s.fill(_SIN_TAYLOR[-1])
    for coefficient in _SIN_TAYLOR[-2::-1]:
        s *= c
        s += coefficient
    s *= t
    # cos(phi) = sqrt((1 - s)(1 + s)): well conditioned since s <= sin(pi/4); cheaper than cos.
    np.subtract(1.0, s, out=c)
    np.add(1.0, s, out=t)
    c *= t
    np.sqrt(c, out=c)
    # octants 1, 2, 5, 6 swap (cos, sin): exchange bits where the mask is all ones.
    np.add(o, 1, out=j)
    j >>= 1
    j &= 1
    np.negative(j, out=j)
    si, ci, ti = s.view(np.int64), c.view(np.int64), t.view(np.int64)
    np.bitwise_xor(si, ci, out=ti)
    ti &= j
    si ^= ti
    ci ^= ti
