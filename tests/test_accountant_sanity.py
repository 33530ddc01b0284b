"""Every sanity value of docs/theory.md#gradient-clipping, #model-clipping, #output-perturbation, #authors-code, from
tests/assets/theory_sanity.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from certun import guarantee, plan
from certun.accountant._numerics import log_theta
from certun.accountant._rdp import eps_from_renyi, max_renyi_for

SANITY = json.loads((Path(__file__).parent / "assets" / "theory_sanity.json").read_text())
DELTA = SANITY["delta"]


def close(got: float, want: float, rel: float = 5e-5) -> bool:
    return abs(got - want) <= rel * abs(want)


def test_renyi_budget_improved_conversion():
    """The largest Rényi coefficient admissible at (1, 1e-5) is 0.030557 with the improved conversion."""
    budget, _ = max_renyi_for(1.0, math.log(DELTA))
    assert close(budget, SANITY["renyi_budget"]["improved"])


def test_renyi_budget_mironov_is_smaller():
    """Mironov's bound α·ε_R + L/(α−1) admits only 0.020820 at (1, 1e-5), less than the improved conversion."""
    L = -math.log(DELTA)
    # the largest ε_R with min_α αε_R + L/(α−1) ≤ 1 is (1 − ... ) solved in closed form: (√(1+ε_R) ...)
    # min over α of αx + L/(α−1) = x + 2√(xL); solve x + 2√(xL) = 1 for √x.
    root = -math.sqrt(L) + math.sqrt(L + 1.0)
    assert close(root * root, SANITY["renyi_budget"]["mironov"])
    assert root * root < max_renyi_for(1.0, math.log(DELTA))[0]


@pytest.mark.parametrize("case", SANITY["gradient_clipping"], ids=lambda c: f"lam={c['lam']}")
def test_gradient_clipping_sigmas(case):
    """Exact and closed-form σ for the two worked examples of docs/theory.md#gradient-clipping."""
    args = (1.0, DELTA, case["C0"], case["C1"], case["lam"])
    exact = plan(*args, gamma=case["gamma"], T=case["T"])
    closed = plan(*args, gamma=case["gamma"], T=case["T"], method="closed_form")
    assert close(exact.sigma, case["exact_sigma"], 1e-4)
    assert close(closed.sigma, case["closed_form_sigma"], 1e-4)
    assert exact.sigma >= case["exact_sigma"] * (1 - 1e-4)
    assert guarantee(exact).eps <= 1.0


@pytest.mark.parametrize("case", SANITY["model_clipping_T"], ids=lambda c: f"r={c['r']}")
def test_model_clipping_T(case):
    """The recursion reaches δ = 1e-5 at ε = 1 in 6, 3 and 40 steps for r = 2, 1, 4 (docs/theory.md#model-clipping)."""
    s = plan(case["eps"], DELTA, 1.0, C2=1.0, sigma=2.0 / case["r"], variant="model_clipping")
    assert s.T == case["T"]
    assert guarantee(s).delta <= DELTA


@pytest.mark.parametrize("case", SANITY["theta"], ids=lambda c: f"r={c['r']}")
def test_theta_values(case):
    """θ_1(2), θ_1(1), θ_1(0.2) as printed in docs/theory.md#model-clipping."""
    assert close(math.exp(log_theta(case["eps"], case["r"])), case["value"], 1e-4)


def test_output_perturbation_sigmas():
    """Analytic-Gaussian σ = 7.4613·C0 at (1, 1e-5), classic 9.6896·C0 (docs/theory.md#output-perturbation)."""
    op = SANITY["output_perturbation"]
    for C0 in (1.0, 3.0):
        s = plan(op["eps"], DELTA, C0, variant="output_perturbation")
        assert close(s.sigma0 / C0, op["exact_sigma_over_C0"], 1e-4)
        classic = 2 * C0 * math.sqrt(2 * math.log(1.25 / DELTA)) / op["eps"]
        assert close(classic / C0, op["classic_sigma_over_C0"], 1e-4)
        assert guarantee(s).delta <= DELTA


def test_official_code_conversion_error():
    """Reporting the Rényi coefficient ε_R = 1 as ε = 1 really means ε ≈ 7.08 at δ = 1e-5
    (docs/theory.md#authors-code)."""
    eps, _ = eps_from_renyi(SANITY["official_code_error"]["eps_renyi"], math.log(DELTA))
    assert abs(eps - SANITY["official_code_error"]["true_eps"]) < 0.005


def test_official_code_sigma_is_seven_times_too_small():
    """The σ giving ε_R = 1 is ≈ 7.2× smaller than the exact σ for (1, 1e-5) (docs/theory.md#authors-code)."""
    s = plan(1.0, DELTA, 1.0, 10.0, 0.0, gamma=1e-3, T=100)
    budget, _ = max_renyi_for(1.0, math.log(DELTA))
    ratio = math.sqrt(1.0 / budget)
    assert 5.6 < ratio < 5.8  # against the exact calibration (improved conversion)
    closed = plan(1.0, DELTA, 1.0, 10.0, 0.0, gamma=1e-3, T=100, method="closed_form")
    buggy_sigma = s.sigma / ratio
    assert 7.1 < closed.sigma / buggy_sigma < 7.3  # against the closed form, as docs/theory.md#authors-code states
