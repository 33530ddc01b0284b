"""Model clipping (contraction of the hockey-stick divergence): the δ-recursion of docs/theory.md#model-clipping.

``δ_0 = 1`` (or ``θ_ε(2C0/σ0)`` with initial noise); each noisy step with contraction radius
``r_t`` (``2C2/σ_t`` for noise after projection, ``2(C2 + γ_t C1)/σ_t`` for gradient clip + noise
before projection) maps

    ε̃_t = ln(1 + (e^ε − 1)/δ_t),      δ_{t+1} = θ_{ε̃_t}(r_t)·δ_t.

Everything is carried as ln δ, so δ of 1e-300 and far below is ordinary. Float64 steps are made
conservative by ``FLOAT_SLACK`` (each ln θ is shrunk towards 0 by that relative amount); the mpmath
path evaluates each θ at high precision for verification.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import mpmath

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
    steps_or_noise,
)
from certun.accountant._numerics import (
    FLOAT_SLACK,
    delta_from_log,
    log_add_exp,
    log_expm1,
    log_theta,
    log_theta_from_tails,
    log_theta_mp,
)
from certun.accountant._schedule import MAX_EPS, Guarantee, Method, Mode, Schedule, Variant, option, scale
from certun.accountant._solver import solve_monotone
from certun.errors import InfeasibleError, InvalidParameterError

_LOG_HALF = math.log(0.5)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)

__all__ = [
    "LOG_DELTA_FLOOR",
    "ModelClipping",
    "contraction_radius",
    "radii",
    "log_delta_initial",
    "log_delta_steps",
    "log_delta_final",
    "log_delta_final_mp",
]


#: ln δ below which the recursion stops: δ_t only falls, so the current δ_t is a valid (upper) bound
#: for every later step, and ln δ itself would otherwise overflow float64 (it squares every step).
LOG_DELTA_FLOOR = -1e12


def contraction_radius(C2: float, sigma: float, mode: Mode | None, gamma: float = 0.0,
                       C1: float | None = None) -> float:
    """r_t of one noisy step *after the first* (docs/theory.md#model-clipping): the pre-noise diameter over σ."""
    if mode is Mode.CLIP_NOISE_BEFORE_PROJECTION:
        if C1 is None:
            raise ValueError("C1 is required for mode clip_noise_before_projection")
        return 2.0 * (C2 + gamma * C1) / sigma
    return 2.0 * C2 / sigma


def radii(C0: float, C2: float, sigmas: Sequence[float], gammas: Sequence[float], mode: Mode | None,
          C1: float | None, sigma0: float | None) -> list[float]:
    """The contraction radius of every step, with the first step treated by what it starts from.

    ``noise_after_projection`` projects onto the C2 ball before its noise, so every step, the first
    included, has pre-noise diameter ``2·C2``. ``clip_noise_before_projection`` adds the noise *before*
    projecting, so its first step starts from ``x_0``, not from the C2 ball: ``x_0 ∈ B(C0)`` gives
    ``r_0 = 2(C0 + γ_0 C1)/σ_0``, and with initial noise σ0 ``x_0`` is unbounded and the first step
    gives no contraction (``r_0 = ∞``, θ = 1; δ cannot grow under post-processing). Later steps start
    in the C2 ball: ``r_t = 2(C2 + γ_t C1)/σ_t``. (docs/theory.md#model-clipping explains why, with a counterexample;
    checked by tests/test_bruteforce.py.)
    """
    out = [contraction_radius(C2, s, mode, g, C1) for s, g in zip(sigmas, gammas, strict=True)]
    if out and mode is Mode.CLIP_NOISE_BEFORE_PROJECTION:
        out[0] = math.inf if sigma0 is not None else 2.0 * (C0 + gammas[0] * present(C1)) / sigmas[0]
    return out


def log_delta_initial(eps: float, C0: float, sigma0: float | None) -> float:
    """ln δ_0: 0 without initial noise, ``ln θ_ε(2C0/σ0)`` with it (docs/theory.md#model-clipping)."""
    if sigma0 is None:
        return 0.0
    return log_theta(eps, 2.0 * C0 / sigma0) * (1.0 - FLOAT_SLACK)


def _eps_tilde(log_expm1_eps: float, log_delta: float) -> float:
    # ε̃ = ln(1 + (e^ε − 1)/δ) = logaddexp(0, ln(e^ε − 1) − ln δ)
    return log_add_exp(0.0, log_expm1_eps - log_delta)


def log_delta_steps(eps: float, radii: Iterable[float], log_delta0: float) -> Iterator[float]:
    """Yield ln δ_t after each step of the recursion, for the radii r_0, r_1, … in order."""
    # Hot loop of the T solve (T up to 1e4+): the common case of log_theta (both tails in math.erfc's
    # range, no cancellation) is inlined; everything else goes through log_theta itself.
    le = log_expm1(eps)
    log_delta = log_delta0
    shrink = 1.0 - FLOAT_SLACK
    erfc, log, log1p, exp, from_tails = math.erfc, math.log, math.log1p, math.exp, log_theta_from_tails
    for r in radii:
        if log_delta > LOG_DELTA_FLOOR:
            x = le - log_delta
            eps_tilde = x + log1p(exp(-x)) if x > 0 else log1p(exp(x))
            a = eps_tilde / r - 0.5 * r
            b = a + r
            step = None
            if -5.0 <= a and b <= 30.0:
                la = _LOG_HALF + log(erfc(a * _INV_SQRT2))
                lb = _LOG_HALF + log(erfc(b * _INV_SQRT2))
                step = from_tails(eps_tilde, la, lb)
            if step is None:
                step = log_theta(eps_tilde, r)
            log_delta = max(log_delta + step * shrink, LOG_DELTA_FLOOR)
        yield log_delta


def log_delta_final(eps: float, radii: Iterable[float], log_delta0: float, *,
                    stop_below: float | None = None) -> float:
    """ln δ_T after all the steps (float64, conservative).

    With ``stop_below``, returns early at the first ln δ_t ≤ stop_below: δ_t only falls, so the sign of
    ``ln δ_T − stop_below`` is already known (used by the planner's monotone solver).
    """
    log_delta = log_delta0
    for log_delta in log_delta_steps(eps, radii, log_delta0):
        if stop_below is not None and log_delta <= stop_below:
            break
    return log_delta


def log_delta_final_mp(eps: float, radii: Iterable[float], C0: float, sigma0: float | None, *, dps: int = 40) -> float:
    """ln δ_T with every θ taken at high precision in mpmath (verification path), rounded up."""
    log_delta = mpmath.mpf(0) if sigma0 is None else mpmath.mpf(log_theta_mp(eps, 2.0 * C0 / sigma0))
    with mpmath.workdps(dps):
        expm1_eps = mpmath.expm1(mpmath.mpf(eps))
        for r in radii:
            if log_delta <= LOG_DELTA_FLOOR:
                break
            eps_tilde = mpmath.log(1 + expm1_eps / mpmath.exp(log_delta))
            e = float(eps_tilde)
            if mpmath.mpf(e) > eps_tilde:  # θ falls as ε grows: round ε̃ down, never up
                e = math.nextafter(e, 0.0)
            log_delta = max(log_delta + mpmath.mpf(log_theta_mp(e, r)), LOG_DELTA_FLOOR)
        out = float(log_delta)
        # log_theta_mp rounds to float at each step; nudge the result up by a few ulps per step.
        return out + 4.0 * math.ulp(out) * max(1, _count(radii))


def _count(radii: Iterable[float]) -> int:
    try:
        return len(radii)  # type: ignore[arg-type]
    except TypeError:
        return 1


# ------------------------------------------------------------------------------------ the mechanism
class ModelClipping:
    """Noisy steps projected onto the C2 ball (docs/theory.md#model-clipping): δ at the target ε by the recursion."""

    inputs = frozenset({"C0", "C1", "C2", "lam", "gamma", "T", "sigma", "sigma0", "mode", "max_T"})
    conversion = "hockey-stick-contraction-recursion"
    exact = False

    def validate(self, schedule: Schedule) -> Mapping[str, Any]:
        """C0, C2 and T ≥ 1 steps; C1 for ``clip_noise_before_projection``; ``mode`` defaults to noise after."""
        require_target(schedule, MAX_EPS)
        require(schedule, "C0")
        require_steps(schedule)
        require(schedule, "C2")
        mode = Mode.NOISE_AFTER_PROJECTION if schedule.mode is None else schedule.mode
        if mode is Mode.CLIP_NOISE_BEFORE_PROJECTION:
            require(schedule, "C1", "mode clip_noise_before_projection")
        return {"mode": mode}

    def guarantee(self, schedule: Schedule, *, exact: bool) -> Guarantee:
        """δ at the target ε after the T steps, carried as ln δ."""
        s = schedule
        eps, C0 = s.target.eps, present(s.C0)
        rs = radii(C0, present(s.C2), s.sigmas, s.gammas, s.mode, s.C1, s.sigma0)
        if exact:
            ld = log_delta_final_mp(eps, rs, C0, s.sigma0)
        else:
            ld = log_delta_final(eps, rs, log_delta_initial(eps, C0, s.sigma0))
        return Guarantee(eps, delta_from_log(ld), log_delta=ld)

    def noise_left(self, schedule: Schedule) -> NoiseLeft:
        """The last step's noise stays on the iterate (after the C2 projection, or inside it)."""
        inside = schedule.mode is Mode.CLIP_NOISE_BEFORE_PROJECTION
        return NoiseLeft(schedule.sigmas[-1], present(schedule.C2), "C2",
                         "inside the C2 projection" if inside else "on the released iterate")

    def plan(self, target: Guarantee, method: Method, **inputs: Any) -> Schedule:
        """σ for a given T, or the first T at which the recursion reaches δ for a given σ."""
        lam, gamma, T, sigma, max_T = step_inputs(inputs["lam"], inputs["gamma"], inputs["T"], inputs["sigma"],
                                                  inputs["max_T"])
        C0 = scale("C0", inputs["C0"], " (required for model_clipping)")
        C2 = scale("C2", inputs["C2"], " (required for model_clipping)")
        mode = Mode.NOISE_AFTER_PROJECTION if inputs["mode"] is None else option("mode", inputs["mode"], Mode)
        C1 = inputs["C1"]
        if mode is Mode.CLIP_NOISE_BEFORE_PROJECTION:
            C1 = scale("C1", C1, " (required for mode clip_noise_before_projection)")
        elif C1 is not None:
            C1 = scale("C1", C1)
        sigma0 = None if inputs["sigma0"] is None else scale("sigma0", inputs["sigma0"])
        if method is Method.CLOSED_FORM:
            raise InvalidParameterError("method", method.value, "'exact' for model_clipping",
                                        hint="docs/theory.md#model-clipping gives only the recursion, solved exactly")
        steps_or_noise(T, sigma, "model_clipping")
        p = _Problem(target, C0, C1, C2, lam, gamma, sigma0, mode)
        if sigma is not None:
            return p.T_for(sigma, max_T if max_T is not None else DEFAULT_MAX_T)
        return p.sigma_for(present(T))


class _Problem:
    """One calibration: the target and the fixed inputs, with ln δ_0 computed once."""

    def __init__(self, target: Guarantee, C0: float, C1: float | None, C2: float, lam: float, gamma: float,
                 sigma0: float | None, mode: Mode) -> None:
        self.target, self.C0, self.C1, self.C2, self.lam = target, C0, C1, C2, lam
        self.gamma, self.sigma0, self.mode = gamma, sigma0, mode
        self.log_delta = math.log(target.delta)
        self.ld0 = log_delta_initial(target.eps, C0, sigma0)

    def radii(self, sigmas: Sequence[float]) -> list[float]:
        return radii(self.C0, self.C2, sigmas, (self.gamma,) * len(sigmas), self.mode, self.C1, self.sigma0)

    def schedule(self, T: int, sigma: float, notes: tuple[str, ...]) -> Schedule:
        return finish(variant=Variant.MODEL_CLIPPING, C0=self.C0, C1=self.C1, C2=self.C2, lam=self.lam,
                      sigma0=self.sigma0, mode=self.mode, target=self.target, method=Method.EXACT, T=T,
                      gammas=(self.gamma,) * T, sigmas=(sigma,) * T, notes=notes)

    def sigma_for(self, T: int) -> Schedule:
        """The smallest σ whose recursion reaches the target δ in T steps."""
        if self.ld0 <= self.log_delta:
            raise InvalidParameterError(
                "sigma0", self.sigma0,
                f"small enough that the initial noise alone does not already give delta <= {self.target.delta}",
                hint="the noisy steps would need no noise: use variant='output_perturbation' and fine-tune")
        if self.mode is Mode.CLIP_NOISE_BEFORE_PROJECTION and self.sigma0 is not None and T < 2:
            raise InvalidParameterError(
                "T", T, ">= 2 for clip_noise_before_projection with sigma0",
                hint="its first step starts from the unbounded noisy x_0 and cannot contract")
        r1 = contraction_radius(self.C2, 1.0, self.mode, self.gamma, self.C1)  # r = r1 / sigma after step 1

        def gap(s: float) -> float:
            return log_delta_final(self.target.eps, self.radii((s,) * T), self.ld0,
                                   stop_below=self.log_delta) - self.log_delta

        # start where one step of the Gaussian mechanism alone would suffice: a feasible upper guess
        sigma = solve_monotone(gap, guess=r1 / 0.25).x
        notes = (f"sigma: smallest noise meeting the target in T={T} steps (docs/theory.md#model-clipping recursion)",
                 f"T rule: T={T} given; sigma calibrated for it", *cost_note(T, self.gamma, chosen=False))
        return self.schedule(T, sigma, notes)

    def T_for(self, sigma: float, budget: int) -> Schedule:
        """The first T at which the recursion reaches the target δ with σ, refused up front when hopeless."""
        eps = self.target.eps
        r = contraction_radius(self.C2, sigma, self.mode, self.gamma, self.C1)
        r_first = self.radii((sigma,))[0]
        self._check_reachable(sigma, r, r_first, budget)
        steps = 0
        last = previous = self.ld0
        for last in log_delta_steps(eps, _first_then_repeat(r_first, r, budget), self.ld0):
            steps += 1
            # equal after the first step (whose radius differs): the float recursion is stationary for ever
            if last <= self.log_delta or (steps > 1 and last == previous):
                break
            previous = last
        if not last <= self.log_delta:
            best = Guarantee(eps, delta_from_log(last), log_delta=last)
            raise InfeasibleError(
                f"model clipping with sigma={sigma} (r={r:.6g}) reaches only delta={best.delta:.3g} "
                + (f"after max_T={budget} steps" if steps >= budget else
                   f"and stalls after {steps} steps (each step contracts delta by less than float precision)")
                + f" at eps={eps}; increase sigma" + (" or the budget" if steps >= budget else ""),
                best=best, best_T=budget)
        T = max(1, steps)
        notes = (f"T rule: first step at which the docs/theory.md#model-clipping recursion reaches delta with "
                 f"sigma={sigma!r}", *cost_note(T, self.gamma, chosen=True))
        return self.schedule(T, sigma, notes)

    def _check_reachable(self, sigma: float, r: float, r_first: float, budget: int) -> None:
        """While δ_t is above the target, ε̃_t ≤ ε̃(target), so every step contracts ln δ by at most
        −ln θ_{ε̃(target)}(r): a lower bound on the steps needed, checked before iterating."""
        eps, delta = self.target.eps, self.target.delta
        eps_tilde_max = math.log1p(math.expm1(eps) / delta)
        max_rate = -log_theta(eps_tilde_max, r)
        first_rate = -log_theta(eps_tilde_max, r_first) if math.isfinite(r_first) else 0.0
        remaining = self.ld0 - self.log_delta - first_rate  # what the steps after the first must still remove
        if remaining > 0 and (max_rate <= 0.0 or 1 + remaining / max_rate > budget):
            need = math.inf if max_rate <= 0.0 else 1 + remaining / max_rate
            raise InfeasibleError(
                f"model clipping with sigma={sigma} (r={r:.6g}) needs at least {need:.3g} steps to reach "
                f"delta={delta} at eps={eps}, more than max_T={budget}; increase sigma",
                best=None, best_T=None)


def _first_then_repeat(first: float, value: float, n: int) -> Iterator[float]:
    if n > 0:
        yield first
    for _ in range(n - 1):
        yield value
