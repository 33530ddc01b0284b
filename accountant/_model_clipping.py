"""Model clipping (contraction of the hockey-stick divergence): the δ-recursion of docs/theory.md#model-clipping.

``δ_0 = 1`` (or ``θ_ε(2C0/σ0)`` with initial noise); each noisy step with contraction radius
``r_t`` (``2C2/σ_t`` for noise after projection, ``2(C2 + γ_t C1)/σ_t`` for gradient clip + noise
before projection) maps

    ε̃_t = ln(1 + (e^ε − 1)/δ_t),      δ_{t+1} = θ_{ε̃_t}(r_t)·δ_t.

Everything is carried as ln δ, so δ of 1e-300 and far below is ordinary. Float64 steps are made
conservative by ``FLOAT_SLACK`` (each ln θ is shrunk towards 0 by that relative amount); the mpmath
path evaluates each θ at high precision for verification.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import mpmath

from certun.accountant._numerics import (
    FLOAT_SLACK,
    log_add_exp,
    log_expm1,
    log_theta,
    log_theta_from_tails,
    log_theta_mp,
)
from certun.accountant._schedule import Mode

_LOG_HALF = math.log(0.5)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)

__all__ = [
    "LOG_DELTA_FLOOR",
    "contraction_radius",
    "radii",
    "log_delta_initial",
    "log_delta_steps",
    "log_delta_final",
    "log_delta_final_mp",
]


#: ln δ below which the recursion stops: δ_t only falls, so the current δ_t is a valid (upper) bound
#: for every later step, and ln δ itself would otherwise overflow float64 (it squares every step).
LOG_DELTA_FLOOR = -1e12


def contraction_radius(C2: float, sigma: float, mode: Mode, gamma: float = 0.0, C1: float | None = None) -> float:
    """r_t of one noisy step *after the first* (docs/theory.md#model-clipping): the pre-noise diameter over σ."""
    if mode is Mode.CLIP_NOISE_BEFORE_PROJECTION:
        if C1 is None:
            raise ValueError("C1 is required for mode clip_noise_before_projection")
        return 2.0 * (C2 + gamma * C1) / sigma
    return 2.0 * C2 / sigma


def radii(C0: float, C2: float, sigmas, gammas, mode: Mode, C1: float | None, sigma0: float | None) -> list[float]:
    """The contraction radius of every step, with the first step treated by what it starts from.

    ``noise_after_projection`` projects onto the C2 ball before its noise, so every step, the first
    included, has pre-noise diameter ``2·C2``. ``clip_noise_before_projection`` adds the noise *before*
    projecting, so its first step starts from ``x_0``, not from the C2 ball: ``x_0 ∈ B(C0)`` gives
    ``r_0 = 2(C0 + γ_0 C1)/σ_0``, and with initial noise σ0 ``x_0`` is unbounded and the first step
    gives no contraction (``r_0 = ∞``, θ = 1; δ cannot grow under post-processing). Later steps start
    in the C2 ball: ``r_t = 2(C2 + γ_t C1)/σ_t``. (docs/theory.md#model-clipping explains why, with a counterexample;
    checked by tests/test_bruteforce.py.)
    """
    out = [contraction_radius(C2, s, mode, g, C1) for s, g in zip(sigmas, gammas, strict=True)]
    if out and mode is Mode.CLIP_NOISE_BEFORE_PROJECTION:
        out[0] = math.inf if sigma0 is not None else 2.0 * (C0 + gammas[0] * C1) / sigmas[0]
    return out


def log_delta_initial(eps: float, C0: float, sigma0: float | None) -> float:
    """ln δ_0: 0 without initial noise, ``ln θ_ε(2C0/σ0)`` with it (docs/theory.md#model-clipping)."""
    if sigma0 is None:
        return 0.0
    return log_theta(eps, 2.0 * C0 / sigma0) * (1.0 - FLOAT_SLACK)


def _eps_tilde(log_expm1_eps: float, log_delta: float) -> float:
    # ε̃ = ln(1 + (e^ε − 1)/δ) = logaddexp(0, ln(e^ε − 1) − ln δ)
    return log_add_exp(0.0, log_expm1_eps - log_delta)


def log_delta_steps(eps: float, radii: Iterable[float], log_delta0: float) -> Iterator[float]:
    """Yield ln δ_t after each step of the recursion, for the radii r_0, r_1, … in order."""
    # Hot loop of the T solve (T up to 1e4+): the common case of log_theta (both tails in math.erfc's
    # range, no cancellation) is inlined; everything else goes through log_theta itself.
    le = log_expm1(eps)
    log_delta = log_delta0
    shrink = 1.0 - FLOAT_SLACK
    erfc, log, log1p, exp, from_tails = math.erfc, math.log, math.log1p, math.exp, log_theta_from_tails
    for r in radii:
        if log_delta > LOG_DELTA_FLOOR:
            x = le - log_delta
            eps_tilde = x + log1p(exp(-x)) if x > 0 else log1p(exp(x))
            a = eps_tilde / r - 0.5 * r
            b = a + r
            step = None
            if -5.0 <= a and b <= 30.0:
                la = _LOG_HALF + log(erfc(a * _INV_SQRT2))
                lb = _LOG_HALF + log(erfc(b * _INV_SQRT2))
                step = from_tails(eps_tilde, la, lb)
            if step is None:
                step = log_theta(eps_tilde, r)
            log_delta = max(log_delta + step * shrink, LOG_DELTA_FLOOR)
        yield log_delta


def log_delta_final(eps: float, radii: Iterable[float], log_delta0: float, *,
                    stop_below: float | None = None) -> float:
    """ln δ_T after all the steps (float64, conservative).

    With ``stop_below``, returns early at the first ln δ_t ≤ stop_below: δ_t only falls, so the sign of
    ``ln δ_T − stop_below`` is already known (used by the planner's monotone solver).
    """
    log_delta = log_delta0
    for log_delta in log_delta_steps(eps, radii, log_delta0):
        if stop_below is not None and log_delta <= stop_below:
            break
    return log_delta


def log_delta_final_mp(eps: float, radii: Iterable[float], C0: float, sigma0: float | None, *, dps: int = 40) -> float:
    """ln δ_T with every θ taken at high precision in mpmath (verification path), rounded up."""
    log_delta = mpmath.mpf(0) if sigma0 is None else mpmath.mpf(log_theta_mp(eps, 2.0 * C0 / sigma0))
    with mpmath.workdps(dps):
        expm1_eps = mpmath.expm1(mpmath.mpf(eps))
        for r in radii:
            if log_delta <= LOG_DELTA_FLOOR:
                break
            eps_tilde = mpmath.log(1 + expm1_eps / mpmath.exp(log_delta))
            log_delta = max(log_delta + mpmath.mpf(log_theta_mp(float(eps_tilde), r)), LOG_DELTA_FLOOR)
        out = float(log_delta)
        # log_theta_mp rounds to float at each step; nudge the result up by a few ulps per step.
        return out + 4.0 * math.ulp(out) * max(1, _count(radii))


def _count(radii: Iterable[float]) -> int:
    try:
        return len(radii)  # type: ignore[arg-type]
    except TypeError:
        return 1
