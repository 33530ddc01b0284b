"""The one-run canary audit: the Binomial(r, ½) reference, exact validity, and detection of skipped unlearning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from certun.accountant import plan
from certun.audit.canary import (
    binomial_tail,
    canary_audit,
    guess_membership,
    one_run_eps_lower,
    tiny_torch_pipeline,
)
from certun.errors import InvalidParameterError

torch.set_num_threads(1)


@pytest.mark.parametrize(("correct", "r"), [(0, 10), (7, 10), (10, 10), (33, 50), (120, 200)])
def test_binomial_tail_matches_scipy_binomtest(correct, r):
    """The tail P[Binomial(r, ½) ≥ W] equals scipy's one-sided exact binomial test p-value."""
    expected = stats.binomtest(correct, r, 0.5, alternative="greater").pvalue
    assert binomial_tail(correct, r) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("r", [1, 8, 32, 100])
@pytest.mark.parametrize(("eps", "delta"), [(0.0, 0.0), (0.5, 1e-3), (1.0, 1e-5)])
def test_one_run_bound_is_exactly_valid(r, eps, delta):
    """Summed over every W, a pipeline at the worst case of (ε, δ) gets ε̂ > ε with probability ≤ 1 − confidence.

    Worst case: W ~ Binomial(r, ½) tilted by e^ε plus δ mass on the event, i.e. P[ε̂ > ε] ≤
    e^ε·P_½[ε̂ > ε] + δ, computed exactly from the Binomial(r, ½) pmf.
    """
    confidence = 0.95
    w = np.arange(r + 1)
    pmf = stats.binom.pmf(w, r, 0.5)
    bounds = np.array([one_run_eps_lower(int(k), r, delta=delta, confidence=confidence) for k in w])
    false_alarm = min(1.0, math.exp(eps) * pmf[bounds > eps].sum() + delta)
    assert false_alarm <= 1 - confidence + 1e-12


def test_one_run_bound_ceiling():
    """All r guesses right gives the largest bound, ln(α − δ) + r·ln 2."""
    assert one_run_eps_lower(20, 20, delta=0.0) == pytest.approx(math.log(0.05) + 20 * math.log(2))


def test_guess_membership_takes_the_extremes():
    """The k_in highest scores are guessed in, the k_out lowest out, the rest abstained."""
    g = guess_membership(np.array([0.3, -2.0, 5.0, 0.1, 1.0]), 2, 1)
    assert g.tolist() == [0, -1, 1, 0, 1]


def test_bad_input_is_refused():
    """Too many guesses, δ ≥ α, and more correct guesses than guesses are refused with the value."""
    with pytest.raises(InvalidParameterError, match="k_in"):
        guess_membership(np.zeros(3), 2, 2)
    with pytest.raises(InvalidParameterError, match="delta"):
        one_run_eps_lower(3, 4, delta=0.1, confidence=0.95)
    with pytest.raises(InvalidParameterError, match="correct"):
        one_run_eps_lower(5, 4, delta=0.0)


def test_scores_independent_of_membership_rarely_alarm():
    """A pipeline whose scores ignore the canaries (perfect unlearning) alarms in ≤ 5% of 200 seeds.

    Compared with the 1 − 1e-6 quantile of Binomial(200, 0.05): a valid test fails it with
    probability below 1e-6.
    """
    def blind(included, seed):
        return np.random.default_rng(seed + 1).normal(size=included.size)

    alarms = sum(canary_audit(blind, 64, k_in=16, k_out=16, delta=1e-5, seed=s).eps_lower > 0 for s in range(200))
    assert alarms <= stats.binom.ppf(1 - 1e-6, 200, 0.05)


SCHEDULE = plan(1.0, 1e-5, 10.0, 1.0, gamma=0.1, T=10)


def test_skipped_unlearning_is_detected():
    """Returning the trained model instead of unlearning is caught in one run (claimed ε = 1)."""
    result = canary_audit(tiny_torch_pipeline(SCHEDULE, unlearn=False), 64, k_in=16, k_out=16, delta=1e-5,
                          claimed_eps=1.0, seed=3)
    assert result.detected and result.correct >= 28


def test_certified_unlearning_passes():
    """The real torch backend's unlearning leaves the canaries' guesses at chance level (not refuted)."""
    result = canary_audit(tiny_torch_pipeline(SCHEDULE), 64, k_in=16, k_out=16, delta=1e-5, claimed_eps=1.0, seed=3)
    assert not result.detected
    assert result.r == 32
