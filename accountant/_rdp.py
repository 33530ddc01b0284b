"""Rényi → (ε, δ) conversion for the Gaussian-shift Rényi profile D_α ≤ α·eps_renyi.

The conversion is the improved one of Canonne–Kamath–Steinke 2020 (Prop. 12) / Balle et al. 2020:
``ε(δ) = min_{α>1} α·eps_renyi + ln((α−1)/α) − (ln δ + ln α)/(α−1)``, with α optimised continuously
(golden search over u = ln(α − 1)). Every α gives a valid bound, so the reported ε is always safe;
optimising only makes it tight. Source: docs/theory.md#gradient-clipping.
"""

from __future__ import annotations

import math

import mpmath

from certun.accountant._numerics import FLOAT_SLACK, golden_minimize
from certun.errors import NumericalError

__all__ = [
    "eps_at_alpha",
    "eps_from_renyi",
    "max_renyi_for",
    "log_delta_from_renyi",
    "eps_at_alpha_mp",
]

_U_HALF_WIDTH = 12.0  # search u = ln(α−1) within ±12 of the Gaussian rule of thumb
_U_MIN = math.log(1e-12)  # α − 1 ≥ 1e-12: closer to 1, α − 1 loses its digits (any α is valid anyway)


def eps_at_alpha(alpha: float, eps_renyi: float, log_delta: float) -> float:
    """ε given by the conversion at one order α > 1 (a valid bound for any such α)."""
    am1 = alpha - 1.0
    return alpha * eps_renyi + math.log1p(-1.0 / alpha) - (log_delta + math.log(alpha)) / am1


def eps_at_alpha_mp(alpha: float, eps_renyi: float, log_delta: float, *, dps: int = 50) -> float:
    """:func:`eps_at_alpha` evaluated in mpmath, rounded up to the next float (verification path)."""
    with mpmath.workdps(dps):
        a = mpmath.mpf(alpha)
        value = a * mpmath.mpf(eps_renyi) + mpmath.log(1 - 1 / a) - (mpmath.mpf(log_delta) + mpmath.log(a)) / (
            a - 1
        )
        out = float(value)
        return out if out >= value else math.nextafter(out, math.inf)


def _u_center(eps_renyi: float, log_delta: float) -> float:
    """ln(α*−1) of the Mironov bound α·ε_R + L/(α−1), a good centre for the search."""
    L = max(-log_delta, 1e-300)
    return 0.5 * (math.log(L) - math.log(eps_renyi))


def eps_from_renyi(eps_renyi: float, log_delta: float) -> tuple[float, float | None]:
    """The smallest ε(δ) over α for a Rényi coefficient; returns ``(eps, alpha)``.

    Args:
        eps_renyi: coefficient of the Rényi profile ``D_α ≤ α·eps_renyi`` (≥ 0).
        log_delta: natural log of δ (< 0).

    Returns:
        ``(eps, alpha)`` with ``eps ≥ 0`` inflated by :data:`FLOAT_SLACK`; ``alpha`` is ``None`` when
        ``eps_renyi == 0`` (then ε = 0: the two runs coincide).
    """
    if not (eps_renyi >= 0) or math.isinf(eps_renyi):
        raise NumericalError(f"eps_renyi must be finite and >= 0, got {eps_renyi!r}")
    if not log_delta < 0:
        raise NumericalError(f"log_delta must be < 0, got {log_delta!r}")
    if eps_renyi == 0.0:
        return 0.0, None
    u0 = _u_center(eps_renyi, log_delta)

    def f(u: float) -> float:
        return eps_at_alpha(1.0 + math.exp(u), eps_renyi, log_delta)

    lo, hi = max(u0 - _U_HALF_WIDTH, _U_MIN), max(u0 + _U_HALF_WIDTH, _U_MIN + 1.0)
    u, eps = golden_minimize(f, lo, hi, xtol=1e-8)
    if math.isnan(eps):
        raise NumericalError(f"conversion produced NaN for eps_renyi={eps_renyi!r}")
    eps = eps + FLOAT_SLACK * (1.0 + abs(eps))
    return max(eps, 0.0), 1.0 + math.exp(u)


def max_renyi_for(eps: float, log_delta: float) -> tuple[float, float]:
    """The largest Rényi coefficient whose conversion at some α gives ε(δ) ≤ ``eps``.

    For a fixed α the conversion is affine in eps_renyi, so the largest admissible value is
    ``max_α [eps − ln(1 − 1/α) + (ln δ + ln α)/(α − 1)] / α``; returns ``(eps_renyi_max, alpha)``.
    The caller must still re-check with :func:`eps_from_renyi` (plan does).
    """
    if not eps > 0 or math.isinf(eps):
        raise NumericalError(f"eps must be finite and > 0, got {eps!r}")

    def neg_g(u: float) -> float:
        alpha = 1.0 + math.exp(u)
        return -(eps - math.log1p(-1.0 / alpha) + (log_delta + math.log(alpha)) / (alpha - 1.0)) / alpha

    # Rule of thumb: ε_R ≈ ε²/(4L), α − 1 ≈ 2L/ε.
    L = -log_delta
    u0 = math.log(2.0 * L / eps)
    u, value = golden_minimize(neg_g, max(u0 - _U_HALF_WIDTH, _U_MIN), max(u0 + _U_HALF_WIDTH, _U_MIN + 1.0),
                               xtol=1e-8)
    eps_renyi = -value
    if not eps_renyi > 0:
        raise NumericalError(f"no positive Rényi budget for eps={eps!r}, log_delta={log_delta!r}")
    return eps_renyi, 1.0 + math.exp(u)


def log_delta_from_renyi(eps_renyi: float, eps: float) -> tuple[float, float | None]:
    """The smallest ln δ over α for which the conversion gives ``eps``; returns ``(log_delta, alpha)``.

    Inverting the conversion at fixed α: ``ln δ = (α−1)(α·ε_R − ε + ln(1 − 1/α)) − ln α``.
    Used to compare the certified δ(ε) with brute-force divergences (docs/theory.md#laws).
    """
    if eps_renyi == 0.0:
        return -math.inf, None

    def h(u: float) -> float:
        alpha = 1.0 + math.exp(u)
        am1 = alpha - 1.0
        return am1 * (alpha * eps_renyi - eps + math.log1p(-1.0 / alpha)) - math.log(alpha)

    # optimum of (α−1)(αε_R − ε): α ≈ (ε + ε_R)/(2ε_R)
    u0 = math.log(max(eps / (2.0 * eps_renyi), 1e-6))
    u, value = golden_minimize(h, max(u0 - _U_HALF_WIDTH, _U_MIN), max(u0 + _U_HALF_WIDTH, _U_MIN + 1.0),
                               xtol=1e-8)
    value = value + FLOAT_SLACK * (1.0 + abs(value))
    return min(value, 0.0), 1.0 + math.exp(u)
