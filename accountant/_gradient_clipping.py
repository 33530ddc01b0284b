"""Gradient clipping (privacy amplification by iteration): the Rényi coefficient and its closed forms.

Step: ``x_{t+1} = x_t − γ_t (clip(g_t, C1) + λ x_t) + N(0, σ_t² I)`` after ``x_0 = Π_{C0}(x̂)``.
With ``ρ_t = 1 − γ_t λ`` and ``s_t = 2 γ_t C1`` the two runs satisfy ``D_α ≤ α·eps_renyi`` with

    eps_renyi = N_T² / (2 D_T),   N_{t+1} = ρ_t N_t + s_t,  N_0 = 2 C0,
                                  D_{t+1} = ρ_t² D_t + σ_t², D_0 = 0,

which is the general-schedule bound of docs/theory.md#gradient-clipping written as a forward recursion. Every function
here is σ-free where it can be (``A(T) = eps_renyi·σ²``), so calibration is a closed form in σ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import mpmath
import numpy as np

from certun.accountant._numerics import FLOAT_SLACK
from certun.errors import InvalidParameterError

__all__ = [
    "eps_renyi_schedule",
    "eps_renyi_schedule_mp",
    "noise_free_loss",
    "eps_renyi_constant",
    "t_argmin",
    "closed_form_sigma",
    "closed_form_T",
]


def eps_renyi_schedule(C0: float, C1: float, lam: float, gammas: Sequence[float], sigmas: Sequence[float]) -> float:
    """Rényi coefficient of an arbitrary (γ_t, σ_t) schedule, inflated by FLOAT_SLACK
    (docs/theory.md#gradient-clipping).

    Vectorised: ``N_T = P_0·2C0 + Σ_t P_{t+1} s_t`` and ``D_T = Σ_t P_{t+1}² σ_t²`` with suffix
    products ``P_t = ∏_{k≥t} ρ_k``. All terms are non-negative, so there is no cancellation.
    """
    g = np.asarray(gammas, dtype=np.float64)
    s = np.asarray(sigmas, dtype=np.float64)
    rho = 1.0 - g * lam
    # suffix[t] = prod_{k>t} rho_k  (suffix[T-1] = 1)
    suffix = np.ones_like(rho)
    if rho.size > 1:
        suffix[:-1] = np.cumprod(rho[::-1])[::-1][1:]
    total = float(np.prod(rho))
    numerator = total * 2.0 * C0 + float(np.dot(suffix, 2.0 * g * C1))
    denominator = float(np.dot(suffix * suffix, s * s))
    value = numerator * numerator / (2.0 * denominator)
    return value * (1.0 + FLOAT_SLACK)


def eps_renyi_schedule_mp(
    C0: float, C1: float, lam: float, gammas: Sequence[float], sigmas: Sequence[float], *, dps: int = 50
) -> float:
    """:func:`eps_renyi_schedule` in mpmath by the forward recursion (verification oracle), rounded up."""
    with mpmath.workdps(dps):
        N = 2 * mpmath.mpf(C0)
        D = mpmath.mpf(0)
        c1, la = mpmath.mpf(C1), mpmath.mpf(lam)
        for gamma, sigma in zip(gammas, sigmas, strict=True):
            rho = 1 - mpmath.mpf(gamma) * la
            N = rho * N + 2 * mpmath.mpf(gamma) * c1
            D = rho * rho * D + mpmath.mpf(sigma) ** 2
        value = N * N / (2 * D)
        out = float(value)
        return out if out >= value else math.nextafter(out, math.inf)


def noise_free_loss(C0: float, C1: float, lam: float, gamma: float, T: int) -> float:
    """``A(T) = eps_renyi·σ²`` for a constant schedule: the σ-free part of the Rényi coefficient.

    λ = 0: ``(2C0 + 2γC1T)²/(2T)``; λ > 0: ``Z²(1 − ρ²)/(2(1 − ρ^{2T}))`` with
    ``Z = 2C0ρ^T + 2C1(1 − ρ^T)/λ`` (docs/theory.md#gradient-clipping, constant γ, σ), in cancellation-free form.
    """
    if T < 1:
        raise InvalidParameterError("T", T, "an integer >= 1")
    gl = gamma * lam
    if gl == 0.0:
        z = 2.0 * C0 + 2.0 * gamma * C1 * T
        return z * z / (2.0 * T)
    log_rho = math.log1p(-gl)
    rho_T = math.exp(T * log_rho)
    one_minus_rho_T = -math.expm1(T * log_rho)
    one_minus_rho_2T = -math.expm1(2.0 * T * log_rho)
    z = 2.0 * C0 * rho_T + 2.0 * C1 * one_minus_rho_T / lam
    return z * z * gl * (2.0 - gl) / (2.0 * one_minus_rho_2T)


def eps_renyi_constant(C0: float, C1: float, lam: float, gamma: float, sigma: float, T: int) -> float:
    """Rényi coefficient of a constant schedule (closed form of docs/theory.md#gradient-clipping), with FLOAT_SLACK."""
    return noise_free_loss(C0, C1, lam, gamma, T) / (sigma * sigma) * (1.0 + FLOAT_SLACK)


def t_argmin(C0: float, C1: float, lam: float, gamma: float) -> float:
    """Continuous minimiser of ``A(T)`` (so of eps_renyi at fixed σ); ``inf`` if A decreases forever.

    eps_renyi(T) is unimodal: it falls until ``T*`` and rises after. λ = 0: ``T* = C0/(γC1)``.
    λ > 0: with u = ρ^T, d ln A/du has the sign of ``(C0 − C1/λ) + (C1/λ)·u``, so
    ``T* = ln(1 − λC0/C1)/ln ρ`` when ``λC0 < C1``, and A decreases in T for every T when
    ``λC0 ≥ C1`` (``T* = inf``). Derivation in docs/accountant.md.
    """
    gl = gamma * lam
    if gl == 0.0:
        return C0 / (gamma * C1) if gamma > 0 else math.inf
    if lam * C0 >= C1:
        return math.inf
    return math.log1p(-lam * C0 / C1) / math.log1p(-gl)


def closed_form_sigma(eps: float, log_delta: float, C0: float, C1: float, lam: float, gamma: float, T: int) -> float:
    """The paper's sufficient σ (docs/theory.md#gradient-clipping); looser than the exact calibration.

    λ = 0: ``σ² = 9L(C0 + C1γT)²/(ε²T)``, valid for ε ≤ L/4; λ > 0:
    ``σ² = 72γλL(C0(1 − γλ)^T + C1/λ)²/ε²``.
    """
    L = -log_delta
    if lam == 0.0:
        if eps > L / 4.0:
            raise InvalidParameterError("eps", eps, f"<= ln(1/delta)/4 = {L / 4.0:.6g} for the closed form",
                                        hint="use method='exact'")
        return math.sqrt(9.0 * L * (C0 + C1 * gamma * T) ** 2 / (eps * eps * T))
    gl = gamma * lam
    return math.sqrt(72.0 * gl * L * (C0 * (1.0 - gl) ** T + C1 / lam) ** 2 / (eps * eps))


def closed_form_T(C0: float, C1: float, lam: float, gamma: float) -> tuple[int, str]:
    """The paper's choice of T with its reason (docs/theory.md#gradient-clipping), as an integer ≥ 1.

    λ = 0: ``T = C0/(γC1)``, the exact minimiser of σ (floor or ceil, whichever is better).
    λ > 0 and λC0 > C1: ``T = ln(λC0/C1)/(γλ)`` rounded up, which brings the C0 term down to C1/λ.
    λ > 0 and λC0 ≤ C1: the paper's rule gives T ≤ 0; use the exact minimiser of σ instead.
    """
    if lam == 0.0:
        t_star = t_argmin(C0, C1, lam, gamma)
        candidates = {max(1, math.floor(t_star)), max(1, math.ceil(t_star))}
        T = min(candidates, key=lambda t: (noise_free_loss(C0, C1, lam, gamma, t), t))
        return T, f"T = C0/(gamma*C1) = {t_star:.6g} -> {T} (minimises sigma; docs/theory.md#gradient-clipping)"
    if lam * C0 > C1:
        raw = math.log(lam * C0 / C1) / (gamma * lam)
        T = max(1, math.ceil(raw))
        return T, f"T = ln(lam*C0/C1)/(gamma*lam) = {raw:.6g} -> {T} (paper's rule; docs/theory.md#gradient-clipping)"
    t_star = t_argmin(C0, C1, lam, gamma)
    candidates = {max(1, math.floor(t_star)), max(1, math.ceil(t_star))}
    T = min(candidates, key=lambda t: (noise_free_loss(C0, C1, lam, gamma, t), t))
    return T, f"lam*C0 <= C1: T = argmin sigma = {t_star:.6g} -> {T} (docs/theory.md#gradient-clipping)"
