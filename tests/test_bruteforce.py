"""One-dimensional brute force: the certified δ is never below the true divergence (docs/theory.md#laws).

Two chains start at ±C0 and follow the worst-case maps of the analysis: ``x ↦ ρx + γC1·sign(x)``
(gradient clipping: every clipped gradient pushes away from the other run) or ``x ↦ C2·sign(x)``
(model clipping: projection onto the boundary), each followed by fresh N(0, σ²) noise. Their exact
densities are propagated on a grid and the true hockey-stick divergence E_{e^ε} compared with the
δ(ε) that the accountant certifies. A control with the authors' under-noised σ (docs/theory.md#authors-code) shows
that the check has teeth.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from certun import guarantee, plan
from certun.accountant import _gradient_clipping as gc
from certun.accountant._model_clipping import log_delta_final
from certun.accountant._rdp import log_delta_from_renyi, max_renyi_for


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
    """The released code's σ (ε_R = 1 reported as ε = 1) breaks (1, 1e-5) by orders of magnitude
    (docs/theory.md#authors-code)."""
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
    assert hockey_stick(p, q, dx, eps) <= delta  # against the target itself, not only the recursion
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


def mode2_chain(C0, C1, C2, gamma, sigma, T, sigma0=None, bins=600):
    """Model clipping, clip + noise before projection, 1-D worst case ``x ↦ Π_C2(x + γC1·sign(x) + N)``.

    States: an atom at −C2, ``bins`` equal bins of (−C2, C2), an atom at +C2 (the projection puts mass
    there). Returns the state distributions of the chains started at +C0 and −C0 (or at ±C0 plus
    N(0, σ0²) initial noise) after T steps.
    """
    edges = np.linspace(-C2, C2, bins + 1)
    pos = np.concatenate(([-C2], 0.5 * (edges[:-1] + edges[1:]), [C2]))

    def kernel(points):
        m = points + gamma * C1 * np.sign(points)
        cdf = norm.cdf((edges[None, :] - m[:, None]) / sigma)  # (n_points, bins + 1)
        K = np.empty((len(points), bins + 2))
        K[:, 0] = cdf[:, 0]
        K[:, 1:-1] = np.diff(cdf, axis=1)
        K[:, -1] = 1.0 - cdf[:, -1]
        return K  # row i: distribution of the next state from points[i]

    if sigma0 is None:
        start = np.array([C0, -C0])
        first = kernel(start)
        p, q = first[0], first[1]
    else:  # x_0 = ±C0 + N(0, σ0²), on a fine grid
        grid = np.linspace(-C0 - 10 * sigma0, C0 + 10 * sigma0, 4001)
        w_p = norm.pdf(grid, C0, sigma0)
        w_q = norm.pdf(grid, -C0, sigma0)
        K0 = kernel(grid)
        p, q = (w_p / w_p.sum()) @ K0, (w_q / w_q.sum()) @ K0
    K = kernel(pos)
    for _ in range(T - 1):
        p, q = p @ K, q @ K
    return p, q


def discrete_hockey_stick(p, q, eps):
    return float(np.sum(np.maximum(p - math.exp(eps) * q, 0.0)))


@pytest.mark.parametrize(
    ("C0", "C2", "T", "sigma0"),
    [(10.0, 1.0, 1, None), (10.0, 1.0, 3, None), (1.0, 1.0, 2, None), (0.5, 2.0, 3, None), (1.0, 1.0, 2, 1.5),
     (1.0, 1.0, 4, 1.5)],
)
def test_model_clipping_mode2_true_delta_below_certified(C0, C2, T, sigma0):
    """Clip + noise before projection: the first step starts from the C0 ball (or unbounded with σ0).

    Found in review: using r = 2(C2 + γC1)/σ for the first step too certified δ = 1e-5 where the true
    δ was 0.69 (C0 = 10, C2 = 1, T = 1). The brute force now stays below the planned δ.
    """
    C1, gamma, eps, delta = 1.0, 1e-3, 1.0, 1e-5
    s = plan(eps, delta, C0, C1, C2=C2, gamma=gamma, T=T, variant="model_clipping",
             mode="clip_noise_before_projection", sigma0=sigma0)
    p, q = mode2_chain(C0, C1, C2, gamma, s.sigma, T, sigma0)
    assert abs(p.sum() - 1) < 1e-9
    true = max(discrete_hockey_stick(p, q, eps), discrete_hockey_stick(q, p, eps))
    assert true <= delta, f"true delta {true:.3g} > target {delta}"
    assert guarantee(s).delta <= delta
    assert discrete_hockey_stick(p, q, 0.0) > 1e-4  # the chains differ (total variation): not vacuous


def test_model_clipping_mode2_old_radius_would_fail():
    """With the first-step radius of the later steps, the C0 = 10 > C2 = 1 case breaks (teeth of the test)."""
    from certun.accountant import Mode
    from certun.accountant._model_clipping import contraction_radius

    r_later = contraction_radius(1.0, 1.0, Mode.CLIP_NOISE_BEFORE_PROJECTION, 1e-3, 1.0)
    # σ that the old accounting would have certified for T = 1: θ_1(r_later) = 1e-5 → r ≈ 0.268
    sigma_old = r_later / 0.26816
    p, q = mode2_chain(10.0, 1.0, 1.0, 1e-3, sigma_old, 1)
    assert discrete_hockey_stick(p, q, 1.0) > 0.1
