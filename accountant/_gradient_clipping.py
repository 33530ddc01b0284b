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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import mpmath
import numpy as np

from certun.accountant._mechanism import (
    DEFAULT_MAX_T,
    NoiseLeft,
    cost_note,
    finish,
    present,
    require,
    require_steps,
    require_target,
    step_inputs,
)
from certun.accountant._numerics import FLOAT_SLACK
from certun.accountant._rdp import eps_at_alpha_mp, eps_from_renyi, max_renyi_for
from certun.accountant._schedule import Guarantee, Method, Schedule, Variant, scale
from certun.accountant._solver import round_up, solve_monotone
from certun.errors import InfeasibleError, InvalidParameterError

__all__ = [
    "GradientClipping",
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
    # Each ρ = 1 − γλ as computed errs by up to u/ρ relative (u = 2⁻⁵³: the rounding of γλ is an absolute
    # error that 1 − γλ does not shrink), and the products and dot products over T steps add up to T such
    # errors each (relative; every term is non-negative), so N²/D errs by under 8·T·u/min(1, ρ_min): added
    # upwards with the usual slack.
    rho_min = min(1.0, float(rho.min()))
    return value * (1.0 + FLOAT_SLACK + 8.0 * rho.size * 2.0**-53 / rho_min)


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
    ``λC0 ≥ C1`` (``T* = inf``). Derivation in docs/accountant.md; the bound minimised:
    docs/theory.md#gradient-clipping.
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


def _nearest_best(t_star: float, key: Callable[[int], float], cap: int | None = None) -> int:
    """The better by ``key`` of ``⌊t*⌋`` and ``⌈t*⌉`` (each at least 1, and at most ``cap``), the smaller on a tie.

    ``t*`` minimises a function of a real T that falls, then rises (docs/theory.md#gradient-clipping); the best
    integer is one of its two neighbours.
    """
    candidates = {max(1, math.floor(t_star)), max(1, math.ceil(t_star))}
    if cap is not None:
        candidates = {min(cap, t) for t in candidates}
    return min(candidates, key=lambda t: (key(t), t))


def closed_form_T(C0: float, C1: float, lam: float, gamma: float) -> tuple[int, str]:
    """The paper's choice of T with its reason (docs/theory.md#gradient-clipping), as an integer ≥ 1.

    λ = 0: ``T = C0/(γC1)``, the exact minimiser of σ (floor or ceil, whichever is better).
    λ > 0 and λC0 > C1: ``T = ln(λC0/C1)/(γλ)`` rounded up, which brings the C0 term down to C1/λ.
    λ > 0 and λC0 ≤ C1: the paper's rule gives T ≤ 0; use the exact minimiser of σ instead.
    """
    def loss(t: int) -> float:
        return noise_free_loss(C0, C1, lam, gamma, t)

    if lam == 0.0:
        t_star = t_argmin(C0, C1, lam, gamma)
        T = _nearest_best(t_star, loss)
        return T, f"T = C0/(gamma*C1) = {t_star:.6g} -> {T} (minimises sigma; docs/theory.md#gradient-clipping)"
    if lam * C0 > C1:
        raw = math.log(lam * C0 / C1) / (gamma * lam)
        T = max(1, math.ceil(raw))
        return T, f"T = ln(lam*C0/C1)/(gamma*lam) = {raw:.6g} -> {T} (paper's rule; docs/theory.md#gradient-clipping)"
    t_star = t_argmin(C0, C1, lam, gamma)
    T = _nearest_best(t_star, loss)
    return T, f"lam*C0 <= C1: T = argmin sigma = {t_star:.6g} -> {T} (docs/theory.md#gradient-clipping)"


# ------------------------------------------------------------------------------------ the mechanism
class GradientClipping:
    """Noisy clipped-gradient steps from the projected model (docs/theory.md#gradient-clipping): ε at the target δ."""

    inputs = frozenset({"C0", "C1", "lam", "gamma", "T", "sigma", "max_T"})
    conversion = "renyi-shift-bound+cks2020-conversion"
    exact = False

    def validate(self, schedule: Schedule) -> Mapping[str, Any]:
        """C0, C1 and T ≥ 1 steps; no model-clipping fields (``mode``, ``sigma0``)."""
        require_target(schedule, math.inf)  # ε never enters the computation: any finite ε is fine
        require(schedule, "C0")
        require_steps(schedule)
        require(schedule, "C1")
        if schedule.mode is not None:
            raise InvalidParameterError("mode", schedule.mode.value, "None for gradient_clipping")
        if schedule.sigma0 is not None:
            raise InvalidParameterError("sigma0", schedule.sigma0,
                                        "None for gradient_clipping (docs/theory.md#gradient-clipping)")
        return {}

    def guarantee(self, schedule: Schedule, *, exact: bool) -> Guarantee:
        """ε at the schedule's target δ, with the Rényi coefficient and the α of the conversion."""
        s = schedule
        C0, C1 = present(s.C0), present(s.C1)
        delta = s.target.delta
        log_delta = math.log(delta)
        if s.sigma is not None and s.gamma is not None:
            er = eps_renyi_constant(C0, C1, s.lam, s.gamma, s.sigma, s.T)
        else:
            er = eps_renyi_schedule(C0, C1, s.lam, s.gammas, s.sigmas)
        eps, alpha = eps_from_renyi(er, log_delta)
        if exact:
            er = eps_renyi_schedule_mp(C0, C1, s.lam, s.gammas, s.sigmas)
            if alpha is not None:
                eps = max(eps_at_alpha_mp(alpha, er, log_delta), 0.0)
        return Guarantee(eps, delta, log_delta=log_delta, eps_renyi=er, alpha=alpha)

    def noise_left(self, schedule: Schedule) -> NoiseLeft:
        """Every step's noise, contracted by the later steps' factors (1 − γλ), on the released iterate."""
        var, factor = 0.0, 1.0
        for gamma, sigma in zip(reversed(schedule.gammas), reversed(schedule.sigmas), strict=True):
            var += (factor * sigma) ** 2
            factor *= 1.0 - gamma * schedule.lam
        return NoiseLeft(math.sqrt(var), present(schedule.C0), "C0", "on the released iterate")

    def plan(self, target: Guarantee, method: Method, **inputs: Any) -> Schedule:
        """σ for T (T from the paper's rule when not given), or the smallest T for σ."""
        lam, gamma, T, sigma, max_T = step_inputs(inputs["lam"], inputs["gamma"], inputs["T"], inputs["sigma"],
                                                  inputs["max_T"])
        C0 = scale("C0", inputs["C0"], " (required for gradient_clipping)")
        C1 = scale("C1", inputs["C1"], " (required for gradient_clipping)")
        p = _Problem(target, method, C0, C1, lam, gamma, max_T)
        return p.T_for(sigma) if sigma is not None else p.sigma_for(T)


class _Problem:
    """One calibration: the target and the fixed inputs, with ε as a function of (T, σ)."""

    def __init__(self, target: Guarantee, method: Method, C0: float, C1: float, lam: float, gamma: float,
                 max_T: int | None) -> None:
        self.target, self.method, self.max_T = target, method, max_T
        self.C0, self.C1, self.lam, self.gamma = C0, C1, lam, gamma
        self.log_delta = math.log(target.delta)

    def eps_of(self, T: int, sigma: float) -> float:
        return eps_from_renyi(eps_renyi_constant(self.C0, self.C1, self.lam, self.gamma, sigma, T), self.log_delta)[0]

    def closed_form(self, T: int) -> float:
        return closed_form_sigma(self.target.eps, self.log_delta, self.C0, self.C1, self.lam, self.gamma, T)

    def schedule(self, T: int, sigma: float, notes: list[str]) -> Schedule:
        return finish(variant=Variant.GRADIENT_CLIPPING, T=T, C0=self.C0, C1=self.C1, lam=self.lam,
                      gammas=(self.gamma,) * T, sigmas=(sigma,) * T, target=self.target, method=self.method,
                      notes=tuple(notes))

    def sigma_for(self, T: int | None) -> Schedule:
        """The smallest σ for T; without T, T is the paper's rule capped at the budget."""
        eps, notes = self.target.eps, []
        chosen = T is None
        if T is None:
            T, reason = closed_form_T(self.C0, self.C1, self.lam, self.gamma)
            cap = self.max_T if self.max_T is not None else DEFAULT_MAX_T
            if T > cap:
                reason += (f"; capped at the budget max_T={cap} (sigma is minimised within it)" if self.max_T
                           is not None else f"; capped at DEFAULT_MAX_T={cap} (pass T or max_T to choose)")
                T = cap
            notes.append("T rule: " + reason)
        else:
            notes.append(f"T rule: T={T} given; sigma calibrated for it")
        if self.method is Method.CLOSED_FORM:
            raw = self.closed_form(T)
            sigma = round_up(raw)
            if self.eps_of(T, sigma) > eps:  # sufficient only within a range: re-check, refuse if it misses
                raise InvalidParameterError("method", self.method.value, "'exact' for these parameters",
                                            hint="the paper's closed form does not reach the target here")
            notes.append(f"sigma from the paper's closed form: {raw:.10g} (docs/theory.md#gradient-clipping)")
        else:
            er_max, _ = max_renyi_for(eps, self.log_delta)
            guess = math.sqrt(noise_free_loss(self.C0, self.C1, self.lam, self.gamma, T) / er_max)
            # guess is the exact solution up to the conversion's float slack: a tight first bracket
            sigma = solve_monotone(lambda s: self.eps_of(T, s) - eps, guess=guess, guess_rtol=1e-10).x
        notes += cost_note(T, self.gamma, chosen=chosen)
        return self.schedule(T, sigma, notes)

    def T_for(self, sigma: float) -> Schedule:
        """The smallest T for σ: ε(T) falls until T* and rises after (:func:`t_argmin`), so search the
        falling branch [1, T_best] where T_best is the best integer within the budget."""
        eps, delta = self.target.eps, self.target.delta
        if self.method is Method.CLOSED_FORM:
            def gap(t: float) -> float:
                return self.closed_form(int(t)) - sigma
        else:
            def gap(t: float) -> float:
                return self.eps_of(int(t), sigma) - eps

        budget = self.max_T if self.max_T is not None else DEFAULT_MAX_T
        t_star = t_argmin(self.C0, self.C1, self.lam, self.gamma)
        if math.isfinite(t_star):
            T_best = _nearest_best(t_star, gap, cap=budget)
        else:
            T_best = budget
        if gap(T_best) > 0:
            best = Guarantee(max(self.eps_of(T_best, sigma), 0.0), delta)
            raise InfeasibleError(
                f"no T <= {budget} reaches eps={eps} at delta={delta} with sigma={sigma} "
                f"(best: eps={best.eps:.6g} at T={T_best}); increase sigma"
                + ("" if math.isfinite(t_star) else " or the budget max_T"),
                best=best, best_T=T_best)
        T = int(solve_monotone(gap, bracket=(0, T_best), integer=True).x)
        notes = [f"T rule: smallest number of steps meeting the target with sigma={sigma!r}",
                 *cost_note(T, self.gamma, chosen=True)]
        return self.schedule(T, sigma, notes)
