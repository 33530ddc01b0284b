"""The noisy step, as small named functions on flat parameter vectors (torch).

Every function takes ``x`` of shape ``(d,)`` or ``(K, d)`` (a leading batch of K independent
chains, as an auditor runs them) and works on the last axis: norms, clipping and projection are
per row. ``x`` is updated *in place* and returned, because in the backend ``x`` is the model's own
flat parameter storage; clone it first if you need the old value. The numpy reference
(:mod:`certun.backends.numpy_steps`) has the same functions with the same meaning, written
independently, and the tests check one against the other.

Soundness of the radii in floating point: every norm that clipping or projection uses is
accumulated in float64 (:func:`norm`), whatever the input dtype: a float32 norm over 1e8
coordinates is ~1 % low, which would leave the radius the accountant was told. :func:`clip` and
:func:`project_ball` aim at ``C·(1 − SAFETY)``; rounding the scaled vector back to its dtype moves
its norm by at most one rounding per coordinate (2⁻²⁴ relative in float32), far inside the margin.
Then the radius is *enforced*: the result's distance to the centre is measured again in float64 and
shrunk again until it is within ``C`` (falling back to the centre itself, distance 0, if the dtype
cannot represent a closer point inside the ball). Around a centre ``c`` the re-measurement is what
matters: adding ``c`` back rounds each coordinate to the precision of ``|c_i|``, an absolute error
that can exceed a small radius (C = 1e-3 around |c_i| ≈ 1, d = 1e5 lands 4e-5 outside). See
docs/theory.md#floating-point-and-randomness.

Source: docs/theory.md#anchored-balls, #gradient-clipping, #model-clipping, #output-perturbation.
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
    """Global L2 norm over the last axis, accumulated in float64 (never undershoots as float32 does at large d).

    Kept as a trailing axis of size 1 (``(1,)`` or ``(K, 1)``), dtype float64.
    """
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float64)


def _shrink_factor(n: torch.Tensor, C: float, dtype: torch.dtype) -> torch.Tensor:
    # min(1, C'/n) with C' = C(1 - SAFETY), in float64; n = 0 gives inf, clamped to 1; n = inf gives 0.
    # Cast to the vector's dtype so that the in-place product rounds once per coordinate.
    return torch.clamp(C * (1.0 - SAFETY) / n, max=1.0).to(dtype)


def clip(g: torch.Tensor, C: float) -> torch.Tensor:
    """Scale ``g`` (in place) so that ``‖g‖ ≤ C``: ``g · min(1, C(1 − SAFETY)/‖g‖)``.

    A vector already inside the ball is unchanged (bit for bit); a longer one is scaled onto the
    sphere of radius ``C(1 − SAFETY)``, then re-measured in float64 and shrunk again if rounding
    left it outside ``C``. Source: docs/theory.md#gradient-clipping (``clip``).
    """
    g.mul_(_shrink_factor(norm(g), C, g.dtype))
    return _enforce_radius(g, C, None)


def project_ball(x: torch.Tensor, C: float, center: torch.Tensor | None = None) -> torch.Tensor:
    """Project ``x`` (in place) onto the L2 ball of radius ``C`` around ``center`` (default 0).

    ``x ← c + (x − c) · min(1, C(1 − SAFETY)/‖x − c‖)``; the projection is *global* over the whole
    vector, never per tensor. Source: docs/theory.md#anchored-balls (``Π_C``).
    """
    if center is None:
        x.mul_(_shrink_factor(norm(x), C, x.dtype))
        return _enforce_radius(x, C, None)
    x.sub_(center)
    x.mul_(_shrink_factor(norm(x), C, x.dtype))
    x.add_(center)
    return _enforce_radius(x, C, center)


#: Retries of the re-measured projection before a row falls back to the centre itself.
_RETRIES = 8
#: Relative error bound of ``‖x − c‖`` as computed: ``x − c`` is exact to one float32 rounding per
#: coordinate (relative, since x and c are close), the sum is accumulated in float64 (its own error,
#: below d·2⁻⁵³ ≤ 1e-8 for d ≤ 1e8, is far inside this bound).
_MEASURE_SLACK = 2.0 ** -22


def _enforce_radius(x: torch.Tensor, C: float, center: torch.Tensor | None) -> torch.Tensor:
    """Shrink rows of ``x`` whose measured ``‖x − c‖`` exceeds ``C`` until it does not (in place; c = 0 if None).

    A row placed at intended radius ``t`` and measured at ``r > C`` carries a rounding error
    ``e = r − t``; it is placed again at ``t − 2^k·e`` (k = 1, 2, ... per retry), so the next error,
    of the same size, lands it inside. A row still outside after :data:`_RETRIES`, or whose radius
    would fall to 0, is set to ``c`` exactly (distance 0). Costs one float64-accumulated norm when
    every row is already inside, the common case.
    """
    limit = C / (1.0 + _MEASURE_SLACK)
    target = torch.full((*x.shape[:-1], 1), C * (1.0 - SAFETY), dtype=torch.float64, device=x.device)
    for attempt in range(_RETRIES + 1):
        diff = x if center is None else x - center
        dist = norm(diff)
        outside = dist > limit
        if not bool(outside.any()):
            return x
        error = torch.maximum(dist - target, dist - limit)
        target = torch.where(outside, target - 2.0 ** (attempt + 1) * error, target)
        if attempt == _RETRIES:
            target = torch.where(outside, 0.0, target)
        factor = torch.where(outside, (target / dist).clamp(min=0.0), 1.0).to(x.dtype)
        if center is None:
            x.mul_(factor)
        else:
            torch.addcmul(center, diff, factor, out=x)
    return x


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
            draws fresh noise (docs/theory.md#soundness-rules, #authors-code).
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
    :func:`add_noise` afterwards with σ_t. Source: docs/theory.md#gradient-clipping.
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
    Balls are centred at ``c`` (docs/theory.md#anchored-balls). Source: docs/theory.md#model-clipping.
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
    """Output perturbation, in place: ``x ← Π_{C0}(x) + N(0, σ0² I)`` (balls around ``c``).
    docs/theory.md#output-perturbation."""
    project_ball(x, C0, center)
    return add_noise(x, sigma0, generator, noise=noise, out=out)
