"""One solver for every calibration: the smallest grid value at which a monotone gap is ≤ 0.

Every calibration in certun has the same shape: a *gap* ``g(x) = achieved(x) − target`` that is
non-increasing in ``x`` (more noise σ, or more steps T on the falling branch, never hurts), and we want
the smallest ``x`` on a grid with ``g(x) ≤ 0``. The solver only ever returns a point where ``g`` was
evaluated and found ``≤ 0`` (feasible), and it also evaluates the next grid point below, which must be
infeasible: that is the "one step tighter would violate it" law of docs/theory.md#laws.

Continuous values (σ) live on a decimal grid with ``SIG_DIGITS`` significant digits, rounded up;
integers (T) on the integers. Source: dp_accounting's calibrate + feasible-endpoint bisection.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from certun.errors import NumericalError, SolverError

__all__ = ["SIG_DIGITS", "Solution", "round_up", "step_below", "solve_monotone"]

#: σ values are rounded up to this many significant decimal digits.
SIG_DIGITS = 10


def round_up(x: float, digits: int = SIG_DIGITS) -> float:
    """The smallest float with ``digits`` significant decimal digits that is ≥ ``x`` (x > 0)."""
    if not (x > 0 and math.isfinite(x)):
        raise SolverError(f"cannot round {x!r}: need a finite value > 0")
    d = Decimal(x)
    exponent = d.adjusted() - digits + 1
    q = Decimal(1).scaleb(exponent)
    out = float(d.quantize(q, rounding=ROUND_CEILING))
    while out < x:  # the decimal → float conversion may land just below; step up one unit
        out = float(Decimal(out).quantize(q, rounding=ROUND_CEILING) + q)
    return out


def step_below(x: float, digits: int = SIG_DIGITS) -> float:
    """The grid point one unit in the last significant digit below ``x`` (x on the grid)."""
    d = Decimal(repr(x))
    exponent = d.adjusted() - digits + 1
    q = Decimal(1).scaleb(exponent)
    below = d - q
    if below <= 0:
        return x / 2.0
    # 1.000000000 - 1e-9 = 0.999999999: fine on the finer grid of the next decade
    return float(below)


@dataclass(frozen=True, slots=True)
class Solution:
    """Result of :func:`solve_monotone`: the smallest feasible grid point ``x`` found and ``gap(x) ≤ 0``.

    The next grid point below ``x`` was evaluated and found infeasible (unless ``x`` is the lower end of
    the domain); that is the solver's contract, so the value itself is not carried.
    """

    x: float
    gap: float


def solve_monotone(
    gap: Callable[[float], float],
    *,
    guess: float | None = None,
    bracket: tuple[float, float] | None = None,
    integer: bool = False,
    guess_rtol: float = 1e-8,
    lower_limit: float = 0.0,
    maxiter: int = 400,
) -> Solution:
    """Smallest grid ``x`` with ``gap(x) ≤ 0`` for a ``gap`` non-increasing in ``x``.

    Args:
        gap: the monotone gap; NaN raises :class:`NumericalError` naming ``x``.
        guess: a starting point (e.g. an analytic solution); the bracket is grown around it.
        guess_rtol: relative half-width of the first bracket around ``guess``.
        bracket: ``(lo, hi)`` with ``gap(lo) > 0 ≥ gap(hi)``, grown if it is not one.
        integer: solve over the integers ≥ max(1, lower_limit) instead of the decimal grid.
        lower_limit: domain lower end (exclusive for continuous x, inclusive for integers).
        maxiter: bound on evaluations; exceeding it raises :class:`SolverError`.

    Returns:
        A :class:`Solution` with ``gap(x) ≤ 0``; unless ``x`` is the domain's lower end, the gap at
        the next grid point below was evaluated and is ``> 0``.

    Raises:
        SolverError: no feasible point could be bracketed, or the iteration limit was hit.
    """
    count = 0

    def g(x: float) -> float:
        nonlocal count
        count += 1
        if count > maxiter:
            raise SolverError(f"solver exceeded {maxiter} evaluations (last x={x!r})")
        value = gap(x)
        if math.isnan(value):
            raise NumericalError(f"gap returned NaN at x={x!r}")
        return value

    if integer:
        return _solve_integer(g, guess, bracket, max(1, math.ceil(lower_limit)))
    if bracket is None:
        if guess is None or not guess > lower_limit:
            raise SolverError("need a bracket or a guess above the lower limit")
        bracket = (guess * (1 - guess_rtol), guess * (1 + guess_rtol))
    return _solve_continuous(g, bracket, guess_rtol, lower_limit)


def _solve_continuous(g: Callable[[float], float], bracket: tuple[float, float], rtol: float,
                      lower_limit: float) -> Solution:
    """Bracket in log space, bisect to a relative width far below the grid, round up, walk the grid."""
    lo, hi = bracket
    factor = rtol
    while g(hi) > 0:
        factor = min(factor * 16.0, 1e3)
        hi = hi * (1 + factor)
        if not math.isfinite(hi):
            raise SolverError("no feasible value could be bracketed (gap > 0 up to overflow)")
    factor = rtol
    while lo > lower_limit and g(lo) <= 0:
        hi = lo
        factor = min(factor * 16.0, 0.5)
        lo = lo * (1 - factor)
    if not lo > lower_limit:
        lo = lower_limit
    while hi - lo > hi * 0.5 * 10.0 ** (-SIG_DIGITS):  # below half a grid unit; the walk settles it
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 2.0
        if mid <= lo or mid >= hi:
            break
        if g(mid) <= 0:
            hi = mid
        else:
            lo = mid
    x = round_up(hi)
    gx = g(x)
    while gx > 0:  # numerical non-monotonicity at the last digit: walk up
        x = round_up(x * (1 + 10.0 ** (-SIG_DIGITS)))
        gx = g(x)
    below = step_below(x)
    while below > lower_limit:  # walk down while the point below is still feasible
        g_below = g(below)
        if g_below > 0:
            break
        x, gx = below, g_below
        below = step_below(x)
    return Solution(x=x, gap=gx)


def _solve_integer(g: Callable[[float], float], guess: float | None, bracket: tuple[float, float] | None,
                   first: int) -> Solution:
    if bracket is not None:
        lo, hi = int(bracket[0]), int(bracket[1])
    else:
        start = max(first, int(guess) if guess is not None else first)
        lo, hi = first - 1, start
    lo = max(lo, first - 1)
    ghi = g(hi)
    step = max(1, hi)
    while ghi > 0:
        lo, hi = hi, hi + step
        step *= 2
        ghi = g(hi)
    # invariant: hi feasible; lo infeasible or below the domain
    if lo >= first and g(lo) <= 0:
        # the bracket's low end is feasible too: search downwards from it
        return _solve_integer(g, None, (first - 1, lo), first)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        gm = g(mid)
        if gm <= 0:
            hi, ghi = mid, gm
        else:
            lo = mid
    return Solution(x=hi, gap=ghi)
