"""The audit's statistics: Clopper–Pearson bounds against scipy, exact coverage, and the ε lower bound's validity.

Randomised checks use fixed seeds; each states the chance it would fail for a *correct* bound.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from certun.accountant import theta
from certun.audit.stats import (
    clopper_pearson_lower,
    clopper_pearson_upper,
    eps_bounds_at,
    eps_lower_bound,
)
from certun.errors import InvalidParameterError

counts = st.integers(min_value=1, max_value=400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))
confidences = st.sampled_from([0.8, 0.9, 0.95, 0.99, 0.999])


@given(counts, confidences)
def test_cp_lower_matches_scipy_binomtest(kn, confidence):
    """The lower bound equals scipy's exact one-sided interval (binomtest, alternative='greater')."""
    k, n = kn
    ci = stats.binomtest(k, n, alternative="greater").proportion_ci(confidence_level=confidence, method="exact")
    assert clopper_pearson_lower(k, n, confidence) == pytest.approx(ci.low, rel=1e-9, abs=1e-15)


@given(counts, confidences)
def test_cp_upper_matches_scipy_binomtest(kn, confidence):
    """The upper bound equals scipy's exact one-sided interval (binomtest, alternative='less')."""
    k, n = kn
    ci = stats.binomtest(k, n, alternative="less").proportion_ci(confidence_level=confidence, method="exact")
    assert clopper_pearson_upper(k, n, confidence) == pytest.approx(ci.high, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("n", [1, 7, 50, 1000])
def test_cp_closed_forms_at_the_ends(n):
    """k = 0 and k = n have closed forms: upper(0, n) = 1 − α^(1/n), lower(n, n) = α^(1/n)."""
    alpha = 0.05
    assert clopper_pearson_upper(0, n, 1 - alpha) == pytest.approx(1 - alpha ** (1 / n), rel=1e-12)
    assert clopper_pearson_lower(n, n, 1 - alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)
    assert clopper_pearson_lower(0, n, 1 - alpha) == 0.0
    assert clopper_pearson_upper(n, n, 1 - alpha) == 1.0


@pytest.mark.parametrize("n", [5, 40, 300])
@pytest.mark.parametrize("p", [0.001, 0.03, 0.2, 0.5, 0.77, 0.999])
def test_cp_exact_coverage(n, p):
    """Summed over every outcome k, each one-sided bound covers the true p with probability ≥ confidence."""
    confidence = 0.9
    k = np.arange(n + 1)
    pmf = stats.binom.pmf(k, n, p)
    lower = clopper_pearson_lower(k, np.full_like(k, n), confidence)
    upper = clopper_pearson_upper(k, np.full_like(k, n), confidence)
    assert pmf[lower <= p].sum() >= confidence - 1e-12
    assert pmf[upper >= p].sum() >= confidence - 1e-12


def test_cp_rejects_bad_input():
    """Counts outside 0 ≤ k ≤ n, n ≥ 1, or a confidence outside (0, 1) are refused with the value."""
    with pytest.raises(InvalidParameterError, match="k, n"):
        clopper_pearson_lower(5, 4, 0.9)
    with pytest.raises(InvalidParameterError, match="k, n"):
        clopper_pearson_upper(0, 0, 0.9)
    with pytest.raises(InvalidParameterError, match="confidence"):
        clopper_pearson_upper(1, 4, 1.0)


def test_eps_bounds_at_by_hand():
    """At one threshold both tails equal the formulas of the module docstring, from CP bounds."""
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 1.0]
    delta, level = 0.01, 0.9
    up, lo, p_lo, q_up, p_hat, q_hat = eps_bounds_at(a, b, [1.5], delta=delta, level=level)
    p_l = clopper_pearson_lower(3, 4, level)
    q_u = 1 - (1 - level) ** (1 / 4)  # CP upper bound for 0 of 4
    assert (p_hat[0], q_hat[0]) == (0.75, 0.0)
    assert p_lo[0] == pytest.approx(p_l) and q_up[0] == pytest.approx(q_u)
    assert up[0] == pytest.approx(math.log((p_l - delta) / q_u))
    assert lo[0] == pytest.approx(math.log((1 - q_u - delta) / (1 - p_l)))


def test_eps_bound_no_evidence_is_zero():
    """When no test has a positive numerator the bound is 0, never negative or NaN."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=10), rng.normal(size=10)
    res = eps_lower_bound(a, b, delta=0.5, confidence=0.99, select="bonferroni", thresholds=[0.0])
    assert res.eps_lower == 0.0


def _false_alarms(select: str, trials: int, n: int, grid: np.ndarray | None, confidence: float, seed: int) -> int:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        a, b = rng.normal(size=n), rng.normal(size=n)
        res = eps_lower_bound(a, b, delta=0.0, confidence=confidence, select=select, thresholds=grid)
        hits += res.eps_lower > 0.0
    return hits


@pytest.mark.parametrize("confidence", [0.5, 0.9])
@pytest.mark.parametrize("select", ["bonferroni", "holdout"])
def test_identical_distributions_false_alarm_rate(select, confidence):
    """Two identical distributions are (0, 0)-close, so ε̂ > 0 may happen in at most 1 − confidence of trials.

    The count is compared with the 1 − 1e-6 quantile of Binomial(trials, 1 − confidence): a valid
    bound fails this test with probability below 1e-6.
    """
    trials = 300
    grid = np.linspace(-2.5, 2.5, 21) if select == "bonferroni" else None
    hits = _false_alarms(select, trials, 200, grid, confidence, seed=11)
    assert hits <= stats.binom.ppf(1 - 1e-6, trials, 1 - confidence)


def test_uncorrected_threshold_choice_is_invalid():
    """Picking the best threshold on the same runs without a correction breaks the confidence statement.

    At confidence 0.5 the naive maximum over every split of the pooled scores raises ε̂ > 0 for two
    identical distributions in far more than half of the trials (above the 1 − 1e-6 quantile of
    Binomial(trials, 0.5)), while both corrected rules stay below it (test above). Measured: ~79%.
    """
    rng = np.random.default_rng(11)
    trials, hits = 300, 0
    for _ in range(trials):
        a, b = rng.normal(size=200), rng.normal(size=200)
        grid = np.unique(np.concatenate([a, b]))
        up, lo, *_ = eps_bounds_at(a, b, grid, delta=0.0, level=1 - 0.5 / 2)  # the level of a single test
        hits += max(up.max(), lo.max()) > 0.0
    assert hits > stats.binom.ppf(1 - 1e-6, trials, 0.5)


def _gaussian_eps(mu: float, delta: float) -> float:
    """The exact ε(δ) of a Gaussian shift μ (θ_ε(μ) = δ), by bisection on the accountant's θ."""
    lo, hi = 0.0, 50.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if theta(mid, mu) > delta else (lo, mid)
    return hi


def test_gaussian_shift_bound_is_below_the_true_eps():
    """For N(μ, 1) against N(0, 1), whose exact ε(δ) is known, ε̂ exceeds it in at most 5% of trials.

    Compared with the 1 − 1e-6 quantile of Binomial(trials, 0.05); also, the bound has power: its
    median is well above 0.
    """
    mu, delta, trials = 1.0, 1e-3, 60
    true_eps = _gaussian_eps(mu, delta)
    rng = np.random.default_rng(5)
    grid = np.linspace(-3.0, 4.0, 29)
    values = []
    for _ in range(trials):
        a, b = rng.normal(mu, 1.0, size=4000), rng.normal(0.0, 1.0, size=4000)
        values.append(eps_lower_bound(a, b, delta=delta, confidence=0.95, select="bonferroni",
                                      thresholds=grid).eps_lower)
    values = np.array(values)
    assert np.sum(values > true_eps) <= stats.binom.ppf(1 - 1e-6, trials, 0.05)
    assert np.median(values) > 0.5 * mu


def test_holdout_uses_disjoint_runs():
    """The hold-out bound is computed on the runs left after the selection share, and says so."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 1.0, size=1001), rng.normal(size=999)
    res = eps_lower_bound(a, b, delta=1e-5, select="holdout", holdout_fraction=0.25)
    assert (res.n_a, res.n_b, res.n_tests) == (1001 - 250, 999 - 249, 1)
    assert res.eps_lower > 0.0


def test_eps_lower_bound_rejects_bad_input():
    """Bonferroni without a grid, an unknown rule, non-finite scores and bad δ are refused."""
    a, b = [0.0, 1.0, 2.0], [0.0, 1.0, 3.0]
    with pytest.raises(InvalidParameterError, match="thresholds"):
        eps_lower_bound(a, b, delta=1e-5, select="bonferroni")
    with pytest.raises(InvalidParameterError, match="select"):
        eps_lower_bound(a, b, delta=1e-5, select="best")
    with pytest.raises(InvalidParameterError, match="scores_a"):
        eps_lower_bound([0.0, math.nan], b, delta=1e-5)
    with pytest.raises(InvalidParameterError, match="delta"):
        eps_lower_bound(a, b, delta=1.5)
