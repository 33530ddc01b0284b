"""Monotonicity and round-trip laws of the accountant (docs/theory.md#laws), stated as hypothesis properties."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import strategies as strat
from hypothesis import assume, given
from hypothesis import strategies as st

from certun import InfeasibleError, InvalidParameterError, Schedule, guarantee, plan
from certun.accountant import _gradient_clipping as gc
from certun.accountant._model_clipping import log_delta_final, log_delta_steps
from certun.accountant._numerics import log_theta
from certun.accountant._rdp import eps_from_renyi
from certun.accountant._solver import step_below


def gc_eps(C0, C1, lam, gamma, sigma, T, delta=1e-5):
    return eps_from_renyi(gc.eps_renyi_constant(C0, C1, lam, gamma, sigma, T), math.log(delta))[0]


# ------------------------------------------------------------------ gradient clipping monotonicity
@given(C0=strat.C0, C1=strat.C1, lam=strat.lam, gamma=strat.gamma, T=strat.T, s1=strat.sigma, s2=strat.sigma)
def test_gc_eps_decreases_in_sigma(C0, C1, lam, gamma, T, s1, s2):
    """More noise never increases ε (GC)."""
    assume(gamma * lam < 1)
    lo, hi = sorted((s1, s2))
    assert gc_eps(C0, C1, lam, gamma, hi, T) <= gc_eps(C0, C1, lam, gamma, lo, T)


@given(C0=strat.C0, C1=strat.C1, lam=strat.lam, gamma=strat.gamma, T=strat.T, sigma=strat.sigma,
       d1=strat.delta, d2=strat.delta)
def test_gc_eps_decreases_in_delta(C0, C1, lam, gamma, T, sigma, d1, d2):
    """A larger δ never needs a larger ε (GC)."""
    assume(gamma * lam < 1)
    lo, hi = sorted((d1, d2))
    assert gc_eps(C0, C1, lam, gamma, sigma, T, hi) <= gc_eps(C0, C1, lam, gamma, sigma, T, lo)


@given(a=strat.C0, b=strat.C0, C1=strat.C1, lam=strat.lam, gamma=strat.gamma, T=strat.T, sigma=strat.sigma)
def test_gc_eps_increases_in_C0(a, b, C1, lam, gamma, T, sigma):
    """A larger starting ball never lowers ε (GC)."""
    assume(gamma * lam < 1)
    lo, hi = sorted((a, b))
    assert gc_eps(lo, C1, lam, gamma, sigma, T) <= gc_eps(hi, C1, lam, gamma, sigma, T)


@given(C0=strat.C0, a=strat.C1, b=strat.C1, lam=strat.lam, gamma=strat.gamma, T=strat.T, sigma=strat.sigma)
def test_gc_eps_increases_in_C1(C0, a, b, lam, gamma, T, sigma):
    """A larger clipping norm never lowers ε (GC)."""
    assume(gamma * lam < 1)
    lo, hi = sorted((a, b))
    assert gc_eps(C0, lo, lam, gamma, sigma, T) <= gc_eps(C0, hi, lam, gamma, sigma, T)


@given(C0=strat.C0, C1=strat.C1, lam=strat.lam, gamma=strat.gamma, t1=st.integers(1, 5000), t2=st.integers(1, 5000))
def test_gc_T_region(C0, C1, lam, gamma, t1, t2):
    """ε_R(T) falls on [1, T*] and rises on [T*, ∞) with T* = gc.t_argmin (exact region of docs/theory.md#laws)."""
    assume(gamma * lam < 1)
    t_star = gc.t_argmin(C0, C1, lam, gamma)
    lo, hi = sorted((t1, t2))
    A = lambda t: gc.noise_free_loss(C0, C1, lam, gamma, t)  # noqa: E731
    if hi <= t_star:
        assert A(hi) <= A(lo) * (1 + 1e-12)
    elif lo >= t_star:
        assert A(lo) <= A(hi) * (1 + 1e-12)


@given(C0=strat.C0, C1=strat.C1, gamma=strat.gamma, lam=st.sampled_from([0.0, 1e-3, 0.1]))
def test_the_chosen_T_is_the_best_integer(C0, C1, gamma, lam):
    """Where the T rule minimises σ (λ = 0, or λC0 ≤ C1), the T it returns beats every other integer near T*
    (docs/theory.md#gradient-clipping): picking the worse of ⌊T*⌋ and ⌈T*⌉ would fail this."""
    assume(gamma * lam < 1 and not lam * C0 > C1)
    t_star = gc.t_argmin(C0, C1, lam, gamma)
    assume(math.isfinite(t_star) and t_star < 1e6)
    T, _ = gc.closed_form_T(C0, C1, lam, gamma)
    A = lambda t: gc.noise_free_loss(C0, C1, lam, gamma, t)  # noqa: E731
    near = range(max(1, math.floor(t_star) - 3), math.ceil(t_star) + 4)
    assert A(T) <= min(A(t) for t in near)


def test_gc_not_monotone_in_T_when_lam_zero():
    """With λ = 0, ε_R first falls then rises in T: the minimum is at T* = C0/(γC1) (= 100 here)."""
    A = [gc.noise_free_loss(1.0, 10.0, 0.0, 1e-3, t) for t in (10, 100, 1000)]
    assert A[1] < A[0] and A[1] < A[2]


@given(C0=strat.C0, C1=strat.C1, lam=strat.lam, gamma=strat.gamma, T=st.integers(1, 300), sigma=strat.sigma)
def test_gc_general_schedule_matches_closed_form(C0, C1, lam, gamma, T, sigma):
    """The per-step recursion and the constant-schedule closed form give the same ε_R."""
    assume(gamma * lam < 1)
    general = gc.eps_renyi_schedule(C0, C1, lam, [gamma] * T, [sigma] * T)
    closed = gc.eps_renyi_constant(C0, C1, lam, gamma, sigma, T)
    assert math.isclose(general, closed, rel_tol=1e-10)


# ------------------------------------------------------------------ model clipping monotonicity
@given(e1=strat.eps, e2=strat.eps, r1=strat.ratio, r2=strat.ratio)
def test_theta_range_and_monotonicity(e1, e2, r1, r2):
    """θ_ε(r) ∈ [0, 1], increasing in r and decreasing in ε."""
    for e in (e1, e2):
        for r in (r1, r2):
            assert log_theta(e, r) <= 0.0
    (elo, ehi), (rlo, rhi) = sorted((e1, e2)), sorted((r1, r2))
    assert log_theta(e1, rlo) <= log_theta(e1, rhi) + 1e-12
    assert log_theta(ehi, r1) <= log_theta(elo, r1) + 1e-12


@given(eps=strat.eps, r=st.floats(0.2, 6.0), T=st.integers(1, 40))
def test_mc_delta_decreases_in_T(eps, r, T):
    """δ_t never increases from one step to the next."""
    traj = list(log_delta_steps(eps, [r] * T, 0.0))
    assert all(b <= a for a, b in zip([0.0, *traj], traj, strict=False))


@given(eps=strat.eps, r1=st.floats(0.2, 6.0), r2=st.floats(0.2, 6.0), T=st.integers(1, 30))
def test_mc_delta_increases_in_radius(eps, r1, r2, T):
    """A larger contraction radius r = 2C2/σ (more C2 or less σ) never lowers δ_T."""
    lo, hi = sorted((r1, r2))
    assert log_delta_final(eps, [lo] * T, 0.0) <= log_delta_final(eps, [hi] * T, 0.0) + 1e-9


@given(e1=strat.eps, e2=strat.eps, r=st.floats(0.2, 6.0), T=st.integers(1, 30))
def test_mc_delta_decreases_in_eps(e1, e2, r, T):
    """A larger ε never needs a larger δ_T."""
    lo, hi = sorted((e1, e2))
    assert log_delta_final(hi, [r] * T, 0.0) <= log_delta_final(lo, [r] * T, 0.0) + 1e-9


# ------------------------------------------------------------------ calibration round trips
@given(eps=strat.eps, delta=strat.delta, C0=strat.C0, C1=strat.C1, lam=strat.lam, gamma=strat.gamma, T=strat.T)
def test_plan_sigma_for_T_round_trip(eps, delta, C0, C1, lam, gamma, T):
    """plan(T) meets the target, and σ one grid step smaller violates it."""
    assume(gamma * lam < 1)
    s = plan(eps, delta, C0, C1, lam, gamma=gamma, T=T)
    g = guarantee(s)
    assert g.eps <= eps and g.delta <= delta
    tighter = dataclasses.replace(s, sigmas=(step_below(s.sigma),) * T)
    assert guarantee(tighter).eps > eps


@given(eps=strat.eps, delta=strat.delta, C0=strat.C0, C1=strat.C1, lam=strat.lam, gamma=strat.gamma, sigma=strat.sigma)
def test_plan_T_for_sigma_round_trip(eps, delta, C0, C1, lam, gamma, sigma):
    """plan(σ) finds the smallest T: it meets the target and T − 1 does not."""
    assume(gamma * lam < 1)
    try:
        s = plan(eps, delta, C0, C1, lam, gamma=gamma, sigma=sigma, max_T=20000)
    except InfeasibleError as exc:
        assert exc.best is None or exc.best.eps > eps
        return
    assert guarantee(s).eps <= eps
    if s.T > 1:
        fewer = dataclasses.replace(s, T=s.T - 1, sigmas=s.sigmas[:-1], gammas=s.gammas[:-1])
        assert guarantee(fewer).eps > eps


@given(eps=st.floats(0.05, 2.5), delta=strat.delta, C0=strat.C0, C1=strat.C1, lam=strat.lam, gamma=strat.gamma,
       T=strat.T)
def test_exact_never_needs_more_noise_than_closed_form(eps, delta, C0, C1, lam, gamma, T):
    """The exact σ is never above the paper's closed-form σ (docs/theory.md#laws)."""
    assume(gamma * lam < 1)
    assume(lam > 0 or eps <= -math.log(delta) / 4)  # the λ = 0 closed form is valid only there
    exact = plan(eps, delta, C0, C1, lam, gamma=gamma, T=T)
    raw = gc.closed_form_sigma(eps, math.log(delta), C0, C1, lam, gamma, T)
    try:
        closed = plan(eps, delta, C0, C1, lam, gamma=gamma, T=T, method="closed_form")
    except InvalidParameterError:
        # the λ > 0 closed form is sufficient only "up to constants" (docs/theory.md#gradient-clipping): plan refuses it
        # exactly when it misses the target, and then it is the closed form that is unsafe
        assert gc_eps(C0, C1, lam, gamma, raw, T, delta) > eps
        assert lam > 0
        return
    assert exact.sigma <= closed.sigma
    assert guarantee(closed).eps <= eps  # the closed form is sufficient where plan accepts it


@given(eps=strat.eps, delta=strat.delta, C0=strat.C0, C2=strat.C2, T=st.integers(1, 60), mode=st.sampled_from(
    ["noise_after_projection", "clip_noise_before_projection"]), sigma0=st.one_of(st.none(), st.floats(1.0, 30.0)))
def test_plan_model_clipping_sigma_round_trip(eps, delta, C0, C2, T, mode, sigma0):
    """Model clipping: the planned σ meets δ at ε in T steps; one grid step less noise does not."""
    if sigma0 is not None and log_theta(eps, 2 * C0 / sigma0) <= math.log(delta):
        return  # the initial noise alone suffices; plan refuses (tested in test_plan_errors)
    s = plan(eps, delta, C0, 5.0, 0.0, C2=C2, T=T, variant="model_clipping", mode=mode, sigma0=sigma0)
    assert guarantee(s).delta <= delta
    tighter = dataclasses.replace(s, sigmas=(step_below(s.sigma),) * T)
    assert guarantee(tighter).delta > delta


@given(eps=strat.eps, delta=strat.delta, C0=strat.C0, C2=strat.C2, sigma=st.floats(0.2, 20.0))
def test_plan_model_clipping_T_round_trip(eps, delta, C0, C2, sigma):
    """Model clipping: the planned T is the first step at which δ_T ≤ δ."""
    try:
        s = plan(eps, delta, C0, C2=C2, sigma=sigma, variant="model_clipping", max_T=20000)
    except InfeasibleError:
        assume(False)
    assert guarantee(s).delta <= delta
    if s.T > 1:
        fewer = dataclasses.replace(s, T=s.T - 1, sigmas=s.sigmas[:-1], gammas=s.gammas[:-1])
        assert guarantee(fewer).delta > delta


@given(eps=strat.eps, delta=strat.delta, C0=strat.C0)
def test_plan_output_perturbation_round_trip(eps, delta, C0):
    """Output perturbation: the exact σ meets δ and one grid step less does not; classic is larger."""
    s = plan(eps, delta, C0, variant="output_perturbation")
    assert guarantee(s).delta <= delta
    assert guarantee(dataclasses.replace(s, sigma0=step_below(s.sigma0))).delta > delta
    assert s.sigma0 <= 2 * C0 * math.sqrt(2 * math.log(1.25 / delta)) / eps or eps >= 1


@given(eps=strat.eps, delta=strat.delta, C0=strat.C0, C1=strat.C1, lam=strat.lam, T=strat.T)
def test_schedule_json_round_trip(eps, delta, C0, C1, lam, T):
    """Schedule.from_dict(json(s.to_dict())) == s for every variant."""
    schedules = [
        plan(eps, delta, C0, C1, lam, T=T),
        plan(eps, delta, C0, C2=1.0, T=min(T, 50), variant="model_clipping", sigma0=0.5 * C0),
        plan(eps, delta, C0, variant="output_perturbation"),
        plan(eps, delta, variant="retrain"),
    ]
    for s in schedules:
        assert Schedule.from_dict(json.loads(json.dumps(s.to_dict(), allow_nan=False))) == s


def test_per_step_schedule_round_trip_and_guarantee():
    """A varying (γ_t, σ_t) schedule survives JSON and its guarantee uses every step."""
    s = plan(1.0, 1e-5, 1.0, 10.0, 5.0, T=20)
    sigmas = tuple(s.sigma * (1 + 0.01 * i) for i in range(20))
    varied = dataclasses.replace(s, sigmas=sigmas)
    d = varied.to_dict()
    assert d["sigma"] is None and len(d["sigmas"]) == 20
    assert Schedule.from_dict(d) == varied
    assert guarantee(varied).eps < guarantee(s).eps  # more noise at every step but the first


@pytest.mark.parametrize("variant", ["gradient_clipping", "model_clipping"])
def test_guarantee_exact_agrees_with_float(variant):
    """The mpmath path and the float path of guarantee agree to 1e-9 and the float path is not below."""
    if variant == "gradient_clipping":
        s = plan(1.0, 1e-5, 1.0, 10.0, 50.0, T=47)
        f, e = guarantee(s).eps, guarantee(s, exact=True).eps
    else:
        s = plan(1.0, 1e-5, 1.0, C2=1.0, T=8, variant="model_clipping")
        f, e = guarantee(s).log_delta, guarantee(s, exact=True).log_delta
    assert abs(f - e) <= 1e-9 * abs(e)
    assert f >= e - 1e-13 * abs(e)


@given(eps=strat.eps, delta=strat.delta, C0=strat.C0, C1=strat.C1, lam=strat.lam, gamma=strat.gamma,
       T=st.integers(1, 200), jitter=st.floats(0.5, 2.0))
def test_float_guarantee_never_below_mpmath_gc(eps, delta, C0, C1, lam, gamma, T, jitter):
    """The float64 ε is ≥ the mpmath ε with no tolerance: the 1e-12 slack covers every rounding."""
    assume(gamma * lam < 1)
    s = plan(eps, delta, C0, C1, lam, gamma=gamma, T=T)
    varied = dataclasses.replace(s, sigmas=tuple(s.sigma * (jitter if i % 2 else 1.0) for i in range(T)))
    for sched in (s, varied):
        assert guarantee(sched).eps >= guarantee(sched, exact=True).eps


@given(eps=strat.eps, delta=strat.delta, C0=strat.C0, C2=strat.C2, T=st.integers(1, 12),
       mode=st.sampled_from(["noise_after_projection", "clip_noise_before_projection"]))
def test_float_guarantee_never_below_mpmath_mc(eps, delta, C0, C2, T, mode):
    """The float64 ln δ of model clipping is ≥ the mpmath one with no tolerance."""
    s = plan(eps, delta, C0, 1.0, C2=C2, T=T, variant="model_clipping", mode=mode)
    assert guarantee(s).log_delta >= guarantee(s, exact=True).log_delta


@given(eps=strat.eps, delta=strat.delta, C0=strat.C0)
def test_float_guarantee_never_below_mpmath_op(eps, delta, C0):
    """Output perturbation's float ln δ is ≥ the mpmath one, and the mpmath path rounds up."""
    s = plan(eps, delta, C0, variant="output_perturbation")
    exact = guarantee(s, exact=True).log_delta
    assert guarantee(s).log_delta >= exact
    assert exact >= log_theta(eps, 2 * C0 / s.sigma0) - 1e-9 * abs(exact)
