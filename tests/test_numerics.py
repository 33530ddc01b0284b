"""Float64 log-space numerics against mpmath oracles at high precision (relative error ≤ 1e-9)."""

from __future__ import annotations

import math

import mpmath
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certun.accountant._model_clipping import LOG_DELTA_FLOOR, log_delta_final, log_delta_final_mp
from certun.accountant._numerics import log_q, log_sub_exp, log_theta, log_theta_mp
from certun.accountant._rdp import eps_at_alpha, eps_from_renyi, log_delta_from_renyi, max_renyi_for
from certun.errors import NumericalError


def mp_log_theta(eps: float, r: float, dps: int = 80) -> float:
    """Oracle: log θ_ε(r) straight from the definition at 80+ digits."""
    with mpmath.workdps(dps):
        e, rr = mpmath.mpf(eps), mpmath.mpf(r)
        q = lambda x: mpmath.erfc(x / mpmath.sqrt(2)) / 2  # noqa: E731
        value = q(e / rr - rr / 2) - mpmath.exp(e) * q(e / rr + rr / 2)
        if value <= 0:
            return mp_log_theta(eps, r, dps * 4)
        return float(mpmath.log(value))


def rel_log_error(got_log: float, want_log: float) -> float:
    """Relative error of the values whose logs are given, |exp(got − want) − 1|, less float64's floor.

    Past |log| ≈ 1e4 one ulp of the log itself exceeds 1e-12, so no float64 result can be closer to the
    value than a few ulps of its log: that floor (8 ulps) is subtracted.
    """
    floor = 8 * math.ulp(abs(want_log))
    return max(abs(math.expm1(got_log - want_log)) - floor, 0.0)


@pytest.mark.parametrize("x", [-40.0, -8.0, -5.0, -1.0, 0.0, 0.5, 5.0, 20.0, 29.9, 30.1, 37.0, 100.0, 1e4])
def test_log_q_against_mpmath(x):
    """log Q(x) matches mpmath to 1e-13 relative on the value across every branch of log_q."""
    with mpmath.workdps(60):
        want = float(mpmath.log(mpmath.erfc(mpmath.mpf(x) / mpmath.sqrt(2)) / 2))
    assert rel_log_error(log_q(x), want) < 1e-12


@given(eps=st.floats(0.0, 60.0), r=st.floats(1e-3, 60.0))
def test_log_theta_against_mpmath(eps, r):
    """θ_ε(r) in float64 log space agrees with the 80-digit definition to 1e-9 relative."""
    assert rel_log_error(log_theta(eps, r), mp_log_theta(eps, r)) < 1e-9


@pytest.mark.parametrize(
    ("eps", "r"),
    [(1.0, 0.2), (1.0, 0.01), (12.0, 0.2), (700.0, 2.0), (690.0, 0.5), (5000.0, 3.0), (1.0, 1e-3), (30.0, 40.0)],
)
def test_log_theta_extreme_tails(eps, r):
    """Deep-tail θ (down to e^-1e6 and beyond, where 1 − erf loses everything) stays accurate, never 0."""
    got = log_theta(eps, r)
    assert math.isfinite(got)
    assert rel_log_error(got, mp_log_theta(eps, r)) < 1e-9


def test_log_theta_mp_path_matches_float_path():
    """The mpmath fallback and the float path agree where both are valid."""
    for eps, r in [(1.0, 1.0), (3.0, 0.5), (0.1, 2.0)]:
        assert rel_log_error(log_theta(eps, r), log_theta_mp(eps, r)) < 1e-10


def test_log_theta_edges():
    """r = 0 gives θ = 0 (log −inf), r = inf gives θ = 1; NaN and negative ε raise."""
    assert log_theta(1.0, 0.0) == -math.inf
    assert log_theta(1.0, math.inf) == 0.0
    with pytest.raises(NumericalError):
        log_theta(math.nan, 1.0)
    with pytest.raises(NumericalError):
        log_theta(-1.0, 1.0)


def test_gaussian_delta_is_theta():
    """θ_ε(μ) is the Gaussian mechanism's δ(ε) (Balle–Wang 2018), checked against direct integration."""
    eps, mu = 0.7, 1.3
    with mpmath.workdps(40):
        # δ(ε) = ∫ max(0, p(x) − e^ε q(x)) dx with p = N(mu, 1), q = N(0, 1)
        p = lambda x: mpmath.npdf(x, mu, 1)  # noqa: E731
        q = lambda x: mpmath.npdf(x, 0, 1)  # noqa: E731
        x0 = eps / mu + mu / 2  # p > e^ε q for x > x0
        direct = mpmath.quad(lambda x: p(x) - mpmath.exp(eps) * q(x), [x0, mpmath.inf])
    assert rel_log_error(log_theta(eps, mu), float(mpmath.log(direct))) < 1e-9


@given(eps_renyi=st.floats(1e-6, 5.0), log_delta=st.floats(-700.0, -0.1))
def test_conversion_against_mpmath_grid(eps_renyi, log_delta):
    """The continuous α minimum is within 1e-9 of a fine mpmath search and never below it (safe side)."""
    got, alpha = eps_from_renyi(eps_renyi, log_delta)

    def f(a):
        with mpmath.workdps(40):
            a = mpmath.mpf(a)
            return a * eps_renyi + mpmath.log(1 - 1 / a) - (log_delta + mpmath.log(a)) / (a - 1)

    with mpmath.workdps(40):
        best = mpmath.findroot(lambda a: mpmath.diff(f, a), alpha)
        oracle = float(f(best))
    oracle = max(oracle, 0.0)
    assert got >= oracle - 1e-12 * (1 + abs(oracle))
    assert got - oracle <= 1e-9 * (1 + abs(oracle))


def test_conversion_any_alpha_is_an_upper_bound():
    """Every α gives a valid ε, and the optimiser's ε is no larger than any of them."""
    ld = math.log(1e-5)
    got, _ = eps_from_renyi(0.05, ld)
    for alpha in (1.5, 2.0, 5.0, 13.0, 40.0, 200.0):
        assert got <= eps_at_alpha(alpha, 0.05, ld) + 1e-12


def test_max_renyi_round_trip():
    """max_renyi_for inverts eps_from_renyi: converting the budget back gives ε within slack."""
    for eps in (0.1, 0.5, 1.0, 4.0, 10.0):
        for delta in (1e-3, 1e-5, 1e-12):
            budget, _ = max_renyi_for(eps, math.log(delta))
            back, _ = eps_from_renyi(budget, math.log(delta))
            assert abs(back - eps) < 1e-9 * eps
            assert eps_from_renyi(budget * (1 + 1e-6), math.log(delta))[0] > eps


def test_log_delta_from_renyi_inverts_conversion():
    """δ(ε) from the Rényi coefficient is consistent with ε(δ): converting back gives ≤ ε."""
    for er in (0.01, 0.03, 0.3):
        ld, _ = log_delta_from_renyi(er, 1.0)
        eps, _ = eps_from_renyi(er, ld)
        assert abs(eps - 1.0) < 1e-7


def test_recursion_reaches_1e_minus_300_and_below():
    """The model-clipping recursion carries ln δ far below float64's range, matching mpmath step by step."""
    for steps in (2, 3, 4):
        radii = [0.5] * steps
        got = log_delta_final(1.0, radii, 0.0)
        want = log_delta_final_mp(1.0, radii, 1.0, None)
        assert math.isfinite(got)
        assert abs(got - want) <= 1e-9 * abs(want)  # relative error of ln δ
        assert got >= want - 1e-12 * abs(want)  # the float path is never below the exact value
    assert log_delta_final(1.0, [0.5] * 3, 0.0) < math.log(1e-300)


def test_recursion_floor_is_an_upper_bound():
    """Once ln δ passes the floor the recursion stops there: finite, never NaN, and ≥ the true value."""
    got = log_delta_final(1.0, [0.5] * 50, 0.0)
    assert got == LOG_DELTA_FLOOR
    assert log_delta_final(1.0, [0.5] * 4, 0.0) > LOG_DELTA_FLOOR  # the floor is far below real use


def test_log_sub_exp():
    """log(e^a − e^b) is exact for ordinary inputs and refuses b > a."""
    assert abs(log_sub_exp(math.log(5.0), math.log(2.0)) - math.log(3.0)) < 1e-15
    assert log_sub_exp(1.0, -math.inf) == 1.0
    with pytest.raises(NumericalError):
        log_sub_exp(0.0, 1.0)


def _band_cases(n: int = 400) -> list[tuple[float, float]]:
    """(ε, r) whose float64 cancellation ratio log(e^ε Q(b)/Q(a)) lies just inside the float path's band."""
    import random

    from certun.accountant._numerics import CANCELLATION, log_q

    rng, cases = random.Random(20261206), []
    while len(cases) < n:
        eps = 10.0 ** rng.uniform(-6, 0)
        r = eps * rng.uniform(0.05, 2.0)
        a, b = eps / r - r / 2.0, eps / r + r / 2.0
        la, lb = log_q(a), log_q(b)
        ratio = -(eps + lb - la) / (abs(eps) + abs(la) + abs(lb) + 1.0)
        if CANCELLATION < ratio < 1e3 * CANCELLATION:
            cases.append((eps, r))
    return cases


def test_float_log_theta_is_never_below_mpmath_in_the_cancellation_band() -> None:
    """One-sided: where Q(a) − e^ε Q(b) nearly cancels, the float64 ln θ (with the slack the accountant applies)
    must never be below the mpmath value — a δ rounded low is a privacy breach."""
    from certun.accountant._numerics import FLOAT_SLACK, log_theta, log_theta_mp

    assert log_theta(3.8425865916544245e-4, 2.2433636183164977e-4) * (1 - FLOAT_SLACK) >= log_theta_mp(
        3.8425865916544245e-4, 2.2433636183164977e-4)
    low = [(e, r) for e, r in _band_cases() if log_theta(e, r) * (1 - FLOAT_SLACK) < log_theta_mp(e, r)]
    assert not low, f"{len(low)} cases below mpmath, e.g. {low[:3]}"


def test_schedule_renyi_coefficient_is_never_below_mpmath_for_long_varying_schedules() -> None:
    """One-sided: the vectorised Rényi coefficient of a varying (γ_t, σ_t) schedule is ≥ its mpmath value."""
    import random

    from certun.accountant._gradient_clipping import eps_renyi_schedule

    rng = random.Random(7)
    for T in (3, 200, 5000):
        gammas = [rng.uniform(1e-4, 0.2) for _ in range(T)]
        sigmas = [rng.uniform(0.1, 5.0) for _ in range(T)]
        C0, C1, lam = 1.3, 0.7, 0.9
        with mpmath.workdps(60):
            rho = [1 - mpmath.mpf(g) * lam for g in gammas]
            suffix, acc = [mpmath.mpf(1)] * T, mpmath.mpf(1)
            for t in range(T - 1, -1, -1):
                suffix[t] = acc
                acc *= rho[t]
            num = acc * 2 * C0 + sum(suffix[t] * 2 * mpmath.mpf(gammas[t]) * C1 for t in range(T))
            den = sum(suffix[t] ** 2 * mpmath.mpf(sigmas[t]) ** 2 for t in range(T))
            exact = num * num / (2 * den)
        assert eps_renyi_schedule(C0, C1, lam, gammas, sigmas) >= exact, T


def test_schedule_renyi_coefficient_is_never_below_mpmath_when_gamma_lam_is_near_one() -> None:
    """One-sided, where ρ = 1 − γλ is tiny: the rounding of γλ is then a large relative error of ρ, which the
    rounding allowance must scale with 1/ρ (an allowance of a few ulps per step left ε low by up to 3e-8)."""
    import random

    from certun.accountant._gradient_clipping import eps_renyi_schedule, eps_renyi_schedule_mp

    rng = random.Random(1)
    low = []
    for _ in range(300):
        T, lam = rng.choice([2, 3, 5, 50]), rng.uniform(0.1, 10)
        gammas = [rng.choice([rng.uniform(0, 1 / lam), (1 - 10 ** -rng.uniform(6, 9)) / lam]) for _ in range(T)]
        sigmas = [10 ** rng.uniform(-4, 8) for _ in range(T)]
        C0, C1 = rng.uniform(0.1, 10), rng.uniform(0.1, 10)
        if eps_renyi_schedule(C0, C1, lam, gammas, sigmas) < eps_renyi_schedule_mp(C0, C1, lam, gammas, sigmas, dps=60):
            low.append((T, lam))
    assert not low, f"{len(low)} schedules below mpmath, e.g. {low[:3]}"
