"""The noisy step in numpy: the reference the torch backend is checked against.

Same functions and meaning as :mod:`certun.backends.torch._steps`, written independently and kept
plain: every function is *functional* (returns a new array, never modifies its input), works on
``(d,)`` or ``(K, d)`` arrays along the last axis, and computes in the input's dtype (the numpy
backend uses float64). Clipping and projection keep the same relative ``SAFETY`` margin so that the
two backends agree to rounding error.

Source: docs/theory.md#anchored-balls, #gradient-clipping, #model-clipping, #output-perturbation.
"""

from __future__ import annotations

import numpy as np

from certun.errors import InvalidParameterError

__all__ = [
    "SAFETY",
    "add_noise",
    "clip",
    "gc_step",
    "mc_step",
    "norm",
    "output_perturbation",
    "project_ball",
]

#: Same margin as :data:`certun.backends.torch._steps.SAFETY`.
SAFETY = 1e-5


def norm(x: np.ndarray) -> np.ndarray:
    """Global L2 norm over the last axis, accumulated in float64 whatever the dtype (a float32 sum
    undershoots at large d), kept as a trailing axis of size 1."""
    x = np.asarray(x)
    return np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=-1, keepdims=True))


def _factor(n: np.ndarray, C: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, C * (1.0 - SAFETY) / n)


def clip(g: np.ndarray, C: float) -> np.ndarray:
    """``g · min(1, C(1 − SAFETY)/‖g‖)``: ``g`` scaled into the ball of radius ``C``.
    docs/theory.md#gradient-clipping."""
    g = np.asarray(g)
    return g * _factor(norm(g), C)


def project_ball(x: np.ndarray, C: float, center: np.ndarray | None = None) -> np.ndarray:
    """``c + (x − c) · min(1, C(1 − SAFETY)/‖x − c‖)``: global projection onto ``B(c, C)``.
    docs/theory.md#anchored-balls."""
    x = np.asarray(x)
    c = 0.0 if center is None else np.asarray(center)
    v = x - c
    return c + v * _factor(norm(v), C)


def add_noise(
    x: np.ndarray,
    sigma: float,
    rng: np.random.Generator | None = None,
    *,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """``x + σ·z`` with ``z`` a fresh standard-normal draw from ``rng`` (or the given ``noise``)."""
    x = np.asarray(x)
    if noise is None:
        if rng is None:
            raise InvalidParameterError("rng", None, "a numpy Generator when no noise is given")
        noise = rng.standard_normal(x.shape, dtype=x.dtype if x.dtype in (np.float32, np.float64) else None)
    return x + sigma * np.asarray(noise, dtype=x.dtype)


def _decay(x: np.ndarray, center: np.ndarray | None) -> np.ndarray:
    return x if center is None else x - center


def gc_step(x: np.ndarray, g: np.ndarray, *, gamma: float, lam: float, C1: float,
            center: np.ndarray | None = None) -> np.ndarray:
    """``x − γ(clip(g, C1) + λ(x − c))``: a gradient-clipping step before its noise.
    docs/theory.md#gradient-clipping."""
    return x - gamma * (clip(g, C1) + lam * _decay(x, center))


def mc_step(x: np.ndarray, g: np.ndarray, *, gamma: float, lam: float, C2: float, sigma: float,
            rng: np.random.Generator | None = None, mode: str = "noise_after_projection",
            C1: float | None = None, center: np.ndarray | None = None,
            noise: np.ndarray | None = None) -> np.ndarray:
    """One model-clipping step including its noise (both modes of docs/theory.md#model-clipping).

    ``noise_after_projection``: ``Π_{C2}(x − γ(g + λ(x − c))) + N(0, σ²I)``;
    ``clip_noise_before_projection``: ``Π_{C2}(x − γ·clip(g + λ(x − c), C1) + N(0, σ²I))``.
    """
    if mode == "noise_after_projection":
        y = project_ball(x - gamma * (g + lam * _decay(x, center)), C2, center)
        return add_noise(y, sigma, rng, noise=noise)
    if mode == "clip_noise_before_projection":
        if C1 is None:
            raise InvalidParameterError("C1", None, "> 0 for mode clip_noise_before_projection")
        y = add_noise(x - gamma * clip(g + lam * _decay(x, center), C1), sigma, rng, noise=noise)
        return project_ball(y, C2, center)
    raise InvalidParameterError("mode", mode, "'noise_after_projection' or 'clip_noise_before_projection'")


def output_perturbation(x: np.ndarray, *, C0: float, sigma0: float, rng: np.random.Generator | None = None,
                        center: np.ndarray | None = None, noise: np.ndarray | None = None) -> np.ndarray:
    """``Π_{C0}(x) + N(0, σ0² I)`` around ``c``. docs/theory.md#output-perturbation."""
    return add_noise(project_ball(x, C0, center), sigma0, rng, noise=noise)
