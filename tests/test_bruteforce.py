"""One-dimensional brute force: the certified δ is never below the true divergence (THEORY.md §5).

Two chains start at ±C0 and follow the worst-case maps of the analysis: ``x ↦ ρx + γC1·sign(x)``
(gradient clipping: every clipped gradient pushes away from the other run) or ``x ↦ C2·sign(x)``
(model clipping: projection onto the boundary), each followed by fresh N(0, σ²) noise. Their exact
densities are propagated on a grid and the true hockey-stick divergence E_{e^ε} compared with the
δ(ε) that the accountant certifies. A control with the authors' under-noised σ (THEORY.md §7) shows
that the check has teeth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from certun import guarantee, plan
from certun.accountant import gradient_clipping as gc
from certun.accountant.model_clipping import log_delta_final
from certun.accountant.rdp import log_delta_from_renyi, max_renyi_for


def gc_densities(C0, C1, lam, gamma, sigma, T, n_sd=9.0, per_sigma=24):
    """Densities of the two GC chains after T steps on a common grid (exact up to discretisation)."""
    rho = 1 - gamma * lam
    reach = C0 + T * gamma * C1 + n_sd * sigma * math.sqrt(T)
    dx = sigma / per_sigma
    x = np.arange(-reach, reach + dx, dx)
    m = rho * x + gamma * C1 * np.sign(x)
    # first step from point masses at ±C0 is an exact Gaussian
    p = norm.pdf(x, rho * C0 + gamma * C1, sigma)
    q = norm.pdf(x, -(rho * C0 + gamma * C1), sigma)
    if T > 1:
        K = norm.pdf(x[:, None], m[None, :], sigma) * dx  # K[i, j]: density at x_i from x_j
        for _ in range(T - 1):
            p, q = K @ p, K @ q
    return x, dx, p, q


def hockey_stick(p, q, dx, eps):
    """E_{e^ε}(P‖Q) = ∫ max(0, p − e^ε q)."""
    return float(np.sum(np.maximum(p - math.exp(eps) * q, 0.0)) * dx)


GC_SETTINGS = [
    dict(C0=1.0, C1=10.0, lam=0.0, gamma=1e-2, T=10, eps=1.0),
    dict(C0=1.0, C1=10.0, lam=0.0, gamma=1e-2, T=3, eps=0.5),
    dict(C0=2.0, C1=5.0, lam=20.0, gamma=1e-2, T=8, eps=2.0),
    dict(C0=1.0, C1=1.0, lam=0.0, gamma=0.1, T=20, eps=1.0),
]


@pytest.mark.parametrize("cfg", GC_SETTINGS, ids=lambda c: f"T={c['T']},lam={c['lam']},eps={c['eps']}")
def test_gradient_clipping_true_delta_below_certified(cfg):
    """For the planned σ, the worst-case 1-D chains' true δ(ε) never exceeds the certified δ(ε)."""
    delta = 1e-5
    s = plan(cfg["eps"], delta, cfg["C0"], cfg["C1"], cfg["lam"], gamma=cfg["gamma"], T=cfg["T"])
    _x, dx, p, q = gc_densities(cfg["C0"], cfg["C1"], cfg["lam"], cfg["gamma"], s.sigma, cfg["T"])
    assert abs(p.sum() * dx - 1) < 1e-6 and abs(q.sum() * dx - 1) < 1e-6  # no mass lost off the grid
    eps_renyi = guarantee(s).eps_renyi
    trues = []
    for eps in (cfg["eps"] * f for f in (0.05, 0.25, 0.5, 1.0, 1.5)):
        certified = math.exp(log_delta_from_renyi(eps_renyi, eps)[0])
        true = max(hockey_stick(p, q, dx, eps), hockey_stick(q, p, dx, eps))
        trues.append(true)
        assert true <= certified, f"eps={eps}: true delta {true:.3g} > certified {certified:.3g}"
    assert trues[0] > 1e-3  # the chains do differ measurably: the comparison is not vacuous


def test_authors_sigma_fails_brute_force():
    """The released code's σ (ε_R = 1 reported as ε = 1) breaks (1, 1e-5) by orders of magnitude (§7)."""
    C0, C1, gamma, T = 1.0, 10.0, 1e-2, 10
    A = gc.noise_free_loss(C0, C1, 0.0, gamma, T)
    buggy_sigma = math.sqrt(A / 1.0)  # ε_R = 1
    _x, dx, p, q = gc_densities(C0, C1, 0.0, gamma, buggy_sigma, T)
    true = hockey_stick(p, q, dx, 1.0)
    assert true > 100 * 1e-5
    honest_sigma = math.sqrt(A / max_renyi_for(1.0, math.log(1e-5))[0])
    assert honest_sigma / buggy_sigma > 5


def mc_two_point_chain(C0, C2, sigma, T):
    """Model-clipping chains under x ↦ C2·sign(x) + N: mixtures of N(±C2, σ²); returns P(+C2) of chain A."""
    a = 1.0  # after the first step chain A is N(+C2, σ²) (its start +C0 projects to +C2)
    stay = norm.cdf(C2 / sigma)
    for _ in range(T - 1):
        a = a * stay + (1 - a) * (1 - stay)
    return a


@pytest.mark.parametrize(("C2", "T", "eps"), [(1.0, 3, 1.0), (1.0, 6, 1.0), (0.5, 10, 0.5), (2.0, 2, 2.0)])
def test_model_clipping_true_delta_below_certified(C2, T, eps):
    """For the planned σ, the worst-case model-clipping chains never exceed the certified δ."""
    delta = 1e-5
    s = plan(eps, delta, 10.0, C2=C2, T=T, variant="model_clipping")
    sigma = s.sigma
    a = mc_two_point_chain(10.0, C2, sigma, T)
    dx = sigma / 200
    x = np.arange(-C2 - 12 * sigma, C2 + 12 * sigma, dx)
    p = a * norm.pdf(x, C2, sigma) + (1 - a) * norm.pdf(x, -C2, sigma)
    q = (1 - a) * norm.pdf(x, C2, sigma) + a * norm.pdf(x, -C2, sigma)
    assert guarantee(s).delta <= delta
    radii = [2 * C2 / sigma] * T
    trues = []
    for e in (eps / 8, eps / 2, eps):
        true = hockey_stick(p, q, dx, e)
        certified = math.exp(log_delta_final(e, radii, 0.0))
        trues.append(true)
        assert true <= certified, f"eps={e}: true {true:.3g} > certified {certified:.3g}"
    assert trues[0] > 1e-6  # the chains do differ measurably: the comparison is not vacuous


def test_output_perturbation_is_exactly_the_gaussian_mechanism():
    """Output perturbation's certified δ equals the true divergence of N(±C0, σ²) up to grid error."""
    s = plan(1.0, 1e-5, 1.0, variant="output_perturbation")
    sigma = s.sigma0
    dx = sigma / 400
    x = np.arange(-1 - 12 * sigma, 1 + 12 * sigma, dx)
    true = hockey_stick(norm.pdf(x, 1.0, sigma), norm.pdf(x, -1.0, sigma), dx, 1.0)
    certified = guarantee(s).delta
    assert true <= certified * (1 + 1e-3)
    assert true >= certified * (1 - 1e-2)  # tight: the analytic Gaussian is exact
