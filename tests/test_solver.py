"""The one solver's contract, including its failure paths: a gap that never crosses zero is a typed
SolverError (never a hang, never a wrong answer), and a NaN gap is a NumericalError naming x."""

from __future__ import annotations

import math

import pytest

from certun.accountant._solver import SIG_DIGITS, round_up, solve_monotone, step_below
from certun.errors import CertunError, NumericalError, SolverError


def test_continuous_returns_the_smallest_feasible_grid_point():
    root = math.pi
    sol = solve_monotone(lambda x: root - x, guess=3.0)
    assert sol.x == round_up(root) and sol.gap <= 0
    assert root - step_below(sol.x) > 0  # one grid step tighter violates it
    assert len(repr(sol.x).replace(".", "").lstrip("0")) <= SIG_DIGITS


def test_integer_returns_the_smallest_feasible_integer():
    sol = solve_monotone(lambda t: 37.5 - t, bracket=(0, 5), integer=True)
    assert sol.x == 38 and sol.gap <= 0


def test_continuous_gap_that_never_crosses_is_a_solver_error():
    calls = []

    def never(x: float) -> float:
        calls.append(x)
        return 1.0  # non-increasing, but never feasible

    with pytest.raises(SolverError, match="no feasible value could be bracketed"):
        solve_monotone(never, guess=1.0)
    assert calls and all(math.isfinite(x) for x in calls)


def test_integer_gap_that_never_crosses_hits_the_evaluation_limit():
    with pytest.raises(SolverError, match="exceeded 50 evaluations"):
        solve_monotone(lambda t: 1.0, guess=1, integer=True, maxiter=50)


def test_missing_start_is_a_solver_error():
    with pytest.raises(SolverError, match="need a bracket or a guess"):
        solve_monotone(lambda x: -1.0)
    with pytest.raises(SolverError, match="need a bracket or a guess"):
        solve_monotone(lambda x: -1.0, guess=-2.0)  # not above the lower limit


def test_nan_gap_is_a_numerical_error_naming_x():
    with pytest.raises(NumericalError, match=r"gap returned NaN at x="):
        solve_monotone(lambda x: math.nan, guess=1.0)


def test_solver_errors_are_certun_errors():
    with pytest.raises(CertunError):
        solve_monotone(lambda x: 1.0, guess=1.0, maxiter=10)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_round_up_refuses_non_positive_or_non_finite(bad: float):
    with pytest.raises(SolverError, match="cannot round"):
        round_up(bad)
