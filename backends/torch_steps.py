"""The noisy step, as small named functions on flat parameter vectors (torch).

Every function takes ``x`` of shape ``(d,)`` or ``(K, d)`` (a leading batch of K independent
chains, as an auditor runs them) and works on the last axis: norms, clipping and projection are
per row. ``x`` is updated *in place* and returned, because in the backend ``x`` is the model's own
flat parameter storage; clone it first if you need the old value. The numpy reference
(:mod:`certun.backends.numpy_steps`) has the same functions with the same meaning, written
independently, and the tests check one against the other.

Soundness margin: :func:`clip` and :func:`project_ball` aim at ``C·(1 − SAFETY)`` rather than
``C``, so that the float32 rounding of a norm (up to ~3e-7 relative, measured) can never leave a
clipped gradient or a projected iterate outside the radius the accountant was told.

Source: THEORY.md §1 (anchored balls), §2 (gradient clipping), §3 (model clipping), §4 (output
perturbation).
"""

from __future__ import annotations

import torch

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

#: Relative margin by which clipping and projection stay inside their radius (see module docstring).
SAFETY = 1e-5


def norm(x: torch.Tensor) -> torch.Tensor:
    """Global L2 norm over the last axis, kept as a trailing axis of size 1 (``(1,)`` or ``(K, 1)``)."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def _shrink_factor(n: torch.Tensor, C: float) -> torch.Tensor:
    # min(1, C'/n) with C' = C(1 - SAFETY); n = 0 gives inf, clamped to 1; n = inf gives 0.
    return torch.clamp(C * (1.0 - SAFETY) / n, max=1.0)


def clip(g: torch.Tensor, C: float) -> torch.Tensor:
    """Scale ``g`` (in place) so that ``‖g‖ ≤ C``: ``g · min(1, C(1 − SAFETY)/‖g‖)``.

    A vector already inside the ball is unchanged (bit for bit); a longer one is scaled onto the
    sphere of radius ``C(1 − SAFETY)``. Source: THEORY.md §2 (``clip``).
    """
    return g.mul_(_shrink_factor(norm(g), C))


def project_ball(x: torch.Tensor, C: float, center: torch.Tensor | None = None) -> torch.Tensor:
    """Project ``x`` (in place) onto the L2 ball of radius ``C`` around ``center`` (default 0).

    ``x ← c + (x − c) · min(1, C(1 − SAFETY)/‖x − c‖)``; the projection is *global* over the whole
    vector, never per tensor. Source: THEORY.md §1 (``Π_C``, anchored balls).
    """
    if center is None:
        return x.mul_(_shrink_factor(norm(x), C))
    x.sub_(center)
    x.mul_(_shrink_factor(norm(x), C))
    return x.add_(center)


def add_noise(
    x: torch.Tensor,
    sigma: float,
    generator: torch.Generator | None = None,
    *,
    noise: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Add ``N(0, σ² I)`` to ``x`` in place: one fresh standard-normal draw of ``x``'s shape.

    Args:
        x: the iterate, ``(d,)`` or ``(K, d)``.
        sigma: the noise standard deviation of this step (σ_t).
        generator: the run's generator; it is advanced by ``x.numel()`` normals, so the next call
            draws fresh noise (THEORY.md §1, §7.5).
        noise: a standard-normal draw to use instead of drawing one (tests inject identical noise
            into two backends this way); ``generator`` is then not used.
        out: a buffer of ``x``'s shape and dtype to draw into (avoids an allocation per step).

    Returns:
        ``x``. The draw is left in ``out`` when one is given.
    """
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device, out=out)
    return x.add_(noise, alpha=float(sigma))


def _shrink_towards(x: torch.Tensor, gamma: float, lam: float, center: torch.Tensor | None) -> None:
    # x ← x − γλ(x − c) = (1 − γλ)x + γλc, in one pass.
    if lam == 0.0:
        return
    if center is None:
        x.mul_(1.0 - gamma * lam)
    else:
        x.lerp_(center, gamma * lam)


def gc_step(
    x: torch.Tensor,
    g: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    C1: float,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """The noiseless part of a gradient-clipping step, in place: ``x ← x − γ(clip(g, C1) + λ(x − c))``.

    ``g`` is clipped in place first (the weight-decay term ``λ(x − c)`` is *not* clipped). Call
    :func:`add_noise` afterwards with σ_t. Source: THEORY.md §2.
    """
    clip(g, C1)
    _shrink_towards(x, gamma, lam, center)
    return x.add_(g, alpha=-float(gamma))


def mc_step(
    x: torch.Tensor,
    g: torch.Tensor,
    *,
    gamma: float,
    lam: float,
    C2: float,
    sigma: float,
    generator: torch.Generator | None = None,
    mode: str = "noise_after_projection",
    C1: float | None = None,
    center: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One model-clipping step including its noise, in place.

    ``mode="noise_after_projection"``: ``x ← Π_{C2}(x − γ(g + λ(x − c))) + N(0, σ²I)``.
    ``mode="clip_noise_before_projection"``: ``x ← Π_{C2}(x − γ·clip(g + λ(x − c), C1) + N(0, σ²I))``;
    here ``g`` is overwritten with the clipped ``g + λ(x − c)``.
    Balls are centred at ``c`` (THEORY.md §1). Source: THEORY.md §3.
    """
    if mode == "noise_after_projection":
        _shrink_towards(x, gamma, lam, center)
        x.add_(g, alpha=-float(gamma))
        project_ball(x, C2, center)
        return add_noise(x, sigma, generator, noise=noise, out=out)
    if mode == "clip_noise_before_projection":
        if C1 is None:
            raise InvalidParameterError("C1", None, "> 0 for mode clip_noise_before_projection")
        if lam != 0.0:
            g.add_(x, alpha=float(lam))
            if center is not None:
                g.sub_(center, alpha=float(lam))
        clip(g, C1)
        x.add_(g, alpha=-float(gamma))
        add_noise(x, sigma, generator, noise=noise, out=out)
        return project_ball(x, C2, center)
    raise InvalidParameterError("mode", mode, "'noise_after_projection' or 'clip_noise_before_projection'")


def output_perturbation(
    x: torch.Tensor,
    *,
    C0: float,
    sigma0: float,
    generator: torch.Generator | None = None,
    center: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Output perturbation, in place: ``x ← Π_{C0}(x) + N(0, σ0² I)`` (balls around ``c``). THEORY.md §4."""
    project_ball(x, C0, center)
    return add_noise(x, sigma0, generator, noise=noise, out=out)
