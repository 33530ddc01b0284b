"""Log-space numerics shared by every variant: normal tails, log-add/sub, θ_ε(r), golden search.

Private module. Float64 paths are accurate to ~1e-12 relative; where float64 cannot decide (a
difference of two nearly equal tails) the mpmath path takes over with precision set per call
(``mpmath.workdps``), never globally. Source: docs/theory.md#model-clipping.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mpmath
from scipy.special import log_ndtr

from certun.errors import NumericalError

_SQRT2 = math.sqrt(2.0)
_LOG_HALF = math.log(0.5)

#: Relative slack added on the unsafe side of float64 results (see ``docs/accountant.md``): every
#: float64 privacy loss is inflated by this factor so that rounding can never report a bound below
#: the exact value. It is far below the 1e-9 grid on which σ is rounded.
FLOAT_SLACK = 1e-12

#: The smallest positive float64 (a subnormal): a δ that underflows is reported as this, never as 0.
TINY = math.ulp(0.0)

#: Relative size, against the largest term, below which ``log(e^ε Q(b)/Q(a))`` is too close to 0 for
#: float64 to resolve ``Q(a) − e^ε Q(b)``; :func:`log_theta_from_tails` then declines and mpmath decides.
CANCELLATION = 1e-5


def log_q(x: float) -> float:
    """log Q(x) = log(1 − Φ(x)), the log standard-normal upper tail, without cancellation.

    ``math.erfc`` keeps full relative accuracy until it underflows near x ≈ 37; beyond that scipy's
    ``log_ndtr`` (asymptotic series) is used. For x ≪ 0, ``log1p`` of the small lower tail.
    """
    if math.isnan(x):
        raise NumericalError("log_q received NaN")
    if x < -5.0:
        return math.log1p(-0.5 * math.erfc(-x / _SQRT2))
    if x <= 30.0:
        return _LOG_HALF + math.log(math.erfc(x / _SQRT2))
    return float(log_ndtr(-x))


def log_sub_exp(a: float, b: float) -> float:
    """log(e^a − e^b) for a ≥ b; raises :class:`NumericalError` if b > a."""
    if b > a:
        raise NumericalError(f"log_sub_exp needs a >= b, got a={a!r}, b={b!r}")
    if b == -math.inf:
        return a
    if a == b:
        return -math.inf
    return a + math.log(-math.expm1(b - a))


def log_add_exp(a: float, b: float) -> float:
    """log(e^a + e^b) without overflow."""
    if a < b:
        a, b = b, a
    if b == -math.inf:
        return a
    return a + math.log1p(math.exp(b - a))


def log_expm1(x: float) -> float:
    """log(e^x − 1) for x > 0, accurate for tiny and huge x."""
    if not x > 0:
        raise NumericalError(f"log_expm1 needs x > 0, got {x!r}")
    if x > 50.0:
        return x + math.log1p(-math.exp(-x))
    return math.log(math.expm1(x))


def log_theta(eps: float, r: float) -> float:
    """log θ_ε(r), θ_ε(r) = Q(ε/r − r/2) − e^ε·Q(ε/r + r/2) (docs/theory.md#model-clipping).

    θ_ε(r) is the hockey-stick divergence E_{e^ε} between N(0, 1) and N(r, 1): the Gaussian
    mechanism's δ(ε) at sensitivity/noise ratio r, and the contraction coefficient of a Gaussian
    kernel whose pre-noise points lie in a set of diameter r·σ. Exact to ~1e-12 relative: when the two
    tails nearly cancel in float64, the difference is taken in mpmath at adequate precision.
    """
    if math.isnan(eps) or math.isnan(r):
        raise NumericalError(f"log_theta received NaN (eps={eps!r}, r={r!r})")
    if eps < 0:
        raise NumericalError(f"log_theta needs eps >= 0, got {eps!r}")
    if r <= 0:
        return -math.inf
    if math.isinf(r):
        return 0.0
    if math.isinf(eps):
        return -math.inf
    a = eps / r - r / 2.0
    b = eps / r + r / 2.0
    if a > _ASYMPTOTIC_FROM:
        return _log_theta_asymptotic(a, b, r)
    la = log_q(a)
    lb = log_q(b)
    if lb == -math.inf:  # b > ~1e154 while a ≤ 1e4: e^ε·Q(b) is nothing next to Q(a)
        return la
    value = log_theta_from_tails(eps, la, lb)
    return value if value is not None else log_theta_mp(eps, r)


def log_theta_from_tails(eps: float, la: float, lb: float) -> float | None:
    """log(Q(a) − e^ε·Q(b)) from ``la = log Q(a)`` and ``lb = log Q(b)``, or ``None`` when float64 cannot tell.

    The absolute error of ``log_ratio = ε + lb − la`` is a few ulps of its largest term (~1e-15·scale),
    so the relative error of θ = Q(a)·(1 − e^{log_ratio}) is about 1e-15·scale/(−log_ratio): float64 is
    used only while that stays below 1e-10 (:data:`CANCELLATION`), and that error bound is added to the
    result (upwards); otherwise the caller resolves the difference in mpmath. The one criterion for
    :func:`log_theta` and the model-clipping hot loop (docs/theory.md#floating-point-and-randomness).
    """
    log_ratio = eps + lb - la  # log(e^ε Q(b) / Q(a)) ≤ 0 mathematically
    scale = abs(eps) + abs(la) + abs(lb) + 1.0
    if log_ratio < -CANCELLATION * scale:
        # ln(1 − e^x) moves by at most |Δx|/(−x) when x errs by Δx; Δx ≤ 8 ulps of the scale. That error
        # (up to 1e-10, far above FLOAT_SLACK) is added upwards: a larger θ is the safe side.
        return la + math.log(-math.expm1(log_ratio)) + 8.0 * 2.0**-53 * scale / -log_ratio
    return None


def delta_from_log(log_delta: float) -> float:
    """δ = e^{ln δ} capped at 1, rounded up to :data:`TINY` instead of underflowing to 0 (a bound stays a bound)."""
    if log_delta >= 0.0:
        return 1.0
    d = math.exp(log_delta)
    return d if d > 0.0 else TINY


_ASYMPTOTIC_FROM = 1e4
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _log_theta_asymptotic(a: float, b: float, r: float) -> float:
    """log θ for a = ε/r − r/2 ≥ 1e4, where both tails are below e^{-5e7}.

    With the Mills ratio R(x) = Q(x)/φ(x) and e^ε·φ(b) = φ(a): θ = φ(a)·(R(a) − R(b)), and
    R(x) = 1/x − 1/x³ + 3/x⁵ − …, so R(a) − R(b) = (r/(ab))·(1 − (a² + ab + b²)/(a²b²) + O(a⁻⁴)).
    The O(a⁻⁴) ≤ 1e-15 remainder is covered by an explicit relative slack of 1e-14 upwards (the Mills-ratio
    series: Abramowitz & Stegun 26.2.12; θ itself: docs/theory.md#output-perturbation).
    """
    correction = 1.0 / (b * b) + 1.0 / (a * b) + 1.0 / (a * a)  # (a² + ab + b²)/(a²b²), overflow-free
    return (-0.5 * a * a - _LOG_SQRT_2PI + math.log(r) - math.log(a) - math.log(b)
            + math.log1p(-correction) + 1e-14)


def log_theta_mp(eps: float, r: float, *, max_dps: int = 2000) -> float:
    """log θ_ε(r) evaluated with mpmath, raising the precision until the difference is resolved."""
    if r <= 0:
        return -math.inf
    if math.isinf(r):
        return 0.0
    if eps / r - r / 2.0 > _ASYMPTOTIC_FROM:  # mpmath's erfc overflows its series check out there
        return _log_theta_asymptotic(eps / r - r / 2.0, eps / r + r / 2.0, r)
    dps = 40
    while dps <= max_dps:
        with mpmath.workdps(dps):
            e, rr = mpmath.mpf(eps), mpmath.mpf(r)
            a = e / rr - rr / 2
            b = e / rr + rr / 2
            qa = mpmath.erfc(a / mpmath.sqrt(2)) / 2
            qb = mpmath.exp(e) * mpmath.erfc(b / mpmath.sqrt(2)) / 2
            diff = qa - qb
            if diff > 0 and diff > qa * mpmath.mpf(10) ** (-(dps - 15)):
                return float(mpmath.log(diff))
        dps *= 2
    raise NumericalError(f"log_theta could not resolve theta at eps={eps!r}, r={r!r} with {max_dps} digits")


def golden_minimize(
    f: Callable[[float], float], lo: float, hi: float, *, xtol: float = 1e-10, maxiter: int = 200
) -> tuple[float, float]:
    """Minimise a unimodal ``f`` on ``[lo, hi]`` by golden-section search; returns ``(x, f(x))``.

    Pure Python (a few microseconds per step). The returned point is one where ``f`` was evaluated,
    so a caller that only needs *a* valid bound (any α of the Rényi conversion is valid) is safe even
    if ``f`` is not unimodal.
    """
    invphi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c = b - invphi * (b - a)
    d = a + invphi * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(maxiter):
        if abs(b - a) <= xtol * max(1.0, abs(c)):
            break
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - invphi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + invphi * (b - a)
            fd = f(d)
    if math.isnan(fc) or math.isnan(fd):
        raise NumericalError(f"objective returned NaN near x={c!r}")
    return (c, fc) if fc <= fd else (d, fd)
