"""``plan`` (calibrate σ or T for an (ε, δ) target) and ``guarantee`` (recompute (ε, δ) from a schedule).

Both are pure functions. ``plan`` validates its input, picks what to calibrate, hands a monotone
gap to the one solver (:mod:`certun.accountant._solver`), and builds a :class:`Schedule` whose
``achieved`` guarantee is recomputed by :func:`guarantee` — never copied from the target. Every
returned σ and T is the smallest value on its grid that meets the target; the next value below fails.
Source: docs/theory.md#gradient-clipping (bounds and calibration), #model-clipping, #output-perturbation.
"""

from __future__ import annotations

import math
from typing import Any

from certun.accountant import _gradient_clipping as gc
from certun.accountant import _model_clipping as mc
from certun.accountant._numerics import FLOAT_SLACK, delta_from_log, log_theta, log_theta_mp
from certun.accountant._rdp import eps_at_alpha_mp, eps_from_renyi, max_renyi_for
from certun.accountant._schedule import Guarantee, Method, Mode, Schedule, Variant, integer, real_number
from certun.accountant._solver import round_up, solve_monotone
from certun.errors import InfeasibleError, InvalidParameterError, NumericalError

__all__ = ["DEFAULT_GAMMA", "DEFAULT_MAX_T", "plan", "guarantee"]

#: Default step size γ of the noisy phase (docs/theory.md#gradient-clipping's sanity values use it). Document, don't
#: hide.
DEFAULT_GAMMA = 1e-3
#: Largest T searched when no budget is given.
DEFAULT_MAX_T = 1_000_000

# Domain of the inputs. Outside it float64 loses the answer (subnormal C², overflowing e^ε) or the
# run is meaningless (ε > 100, δ > 0.5); refusing is better than a bound on the wrong side.
from certun.accountant._schedule import MAX_DELTA, MAX_EPS, MAX_SCALE, MAX_STEPS, MIN_DELTA, MIN_SCALE  # noqa: E402


# ---------------------------------------------------------------------------------------------- input
def _real(name: str, value: Any, *, lower: float, strict: bool = True, upper: float | None = None,
          upper_strict: bool = True, valid: str | None = None) -> float:
    """A real number in a range; numpy scalars and 0-d tensors are real numbers too (:func:`real_number`)."""
    if valid is None:
        if upper is None:
            valid = f"finite and {'>' if strict else '>='} {lower:g}"
        else:
            left, right = "(" if strict else "[", ")" if upper_strict else "]"
            valid = f"finite and in {left}{lower:g}, {upper:g}{right}"
        valid = "a real number, " + valid
    x = real_number(name, value, valid)
    ok = x > lower if strict else x >= lower
    if upper is not None:
        ok = ok and (x < upper if upper_strict else x <= upper)
    if not ok:
        raise InvalidParameterError(name, value, valid)
    return x


def _int(name: str, value: Any, *, lower: int = 1, upper: int | None = None) -> int:
    valid = f"an integer >= {lower}" + (f" and <= {upper}" if upper else "")
    x = integer(name, value, valid)
    if x < lower or (upper is not None and x > upper):
        raise InvalidParameterError(name, value, valid)
    return x


def _scale(name: str, value: Any, why: str = "") -> float:
    """A norm, step size or noise scale: finite and within [MIN_SCALE, MAX_SCALE] (far from under/overflow)."""
    return _real(name, value, lower=MIN_SCALE, strict=False, upper=MAX_SCALE, upper_strict=False,
                 valid=f"a real number in [{MIN_SCALE:g}, {MAX_SCALE:g}]{why}")


def _enum(enum_type, name: str, value: Any):
    try:
        return enum_type(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in enum_type)
        raise InvalidParameterError(name, value, f"one of {valid}") from None


# ------------------------------------------------------------------------------------------ guarantee
def guarantee(schedule: Schedule, *, exact: bool = False) -> Guarantee:
    """Recompute the (ε, δ) guarantee of a schedule from its inputs alone.

    Gradient clipping reports ε at the schedule's target δ (with the Rényi coefficient and the α of
    the conversion); model clipping and output perturbation report δ at the target ε; retraining is
    (0, 0). Per-step σ_t and γ_t are honoured.

    Args:
        schedule: any :class:`Schedule` (``achieved`` is ignored).
        exact: evaluate in mpmath (slow; used by verifiers to settle near-ties).

    Returns:
        A :class:`Guarantee` that is never below the true bound of docs/theory.md: float64 results carry
        a relative slack of 1e-12 on the unsafe side; the mpmath path rounds up.
    """
    if not isinstance(schedule, Schedule):
        raise InvalidParameterError("schedule", type(schedule).__name__, "a certun Schedule")
    v = schedule.variant
    target = schedule.target
    if v is Variant.RETRAIN:
        return Guarantee(0.0, 0.0)
    if v is Variant.GRADIENT_CLIPPING:
        return _gc_guarantee(schedule, target.delta, exact=exact)
    eps = target.eps
    if v is Variant.OUTPUT_PERTURBATION:
        r = 2.0 * schedule.C0 / schedule.sigma0
        if exact:  # log_theta_mp rounds to nearest: step up a few ulps of the result itself
            ld = log_theta_mp(eps, r)
            ld = ld + 4 * math.ulp(ld)
        else:
            ld = log_theta(eps, r) * (1.0 - FLOAT_SLACK)
        return Guarantee(eps, delta_from_log(ld), log_delta=ld)
    # model clipping
    radii = _mc_radii(schedule)
    if exact:
        ld = mc.log_delta_final_mp(eps, radii, schedule.C0, schedule.sigma0)
    else:
        ld = mc.log_delta_final(eps, radii, mc.log_delta_initial(eps, schedule.C0, schedule.sigma0))
    return Guarantee(eps, delta_from_log(ld), log_delta=ld)


def _gc_guarantee(s: Schedule, delta: float, *, exact: bool) -> Guarantee:
    log_delta = math.log(delta)
    if s.sigma is not None and s.gamma is not None:
        er = gc.eps_renyi_constant(s.C0, s.C1, s.lam, s.gamma, s.sigma, s.T)
    else:
        er = gc.eps_renyi_schedule(s.C0, s.C1, s.lam, s.gammas, s.sigmas)
    eps, alpha = eps_from_renyi(er, log_delta)
    if exact:
        er = gc.eps_renyi_schedule_mp(s.C0, s.C1, s.lam, s.gammas, s.sigmas)
        if alpha is not None:
            eps = max(eps_at_alpha_mp(alpha, er, log_delta), 0.0)
    return Guarantee(eps, delta, log_delta=log_delta, eps_renyi=er, alpha=alpha)


def _mc_radii(s: Schedule) -> list[float]:
    return mc.radii(s.C0, s.C2, s.sigmas, s.gammas, s.mode, s.C1, s.sigma0)


# ----------------------------------------------------------------------------------------------- plan
def plan(
    eps: float,
    delta: float,
    C0: float | None = None,
    C1: float | None = None,
    lam: float = 0.0,
    *,
    gamma: float = DEFAULT_GAMMA,
    T: int | None = None,
    sigma: float | None = None,
    variant: Variant | str = Variant.GRADIENT_CLIPPING,
    C2: float | None = None,
    mode: Mode | str | None = None,
    sigma0: float | None = None,
    method: Method | str = Method.EXACT,
    max_T: int | None = None,
) -> Schedule:
    """Plan an unlearning run that is (ε, δ)-unlearning: calibrate σ for T, T for σ, or both.

    Args:
        eps: target ε (finite, > 0).
        delta: target δ in (0, 1).
        C0: radius of the starting ball (the trained model is projected onto it).
        C1: gradient clipping norm (gradient clipping; model clipping's second mode).
        lam: regularisation λ ≥ 0 (``γλ < 1``).
        gamma: step size γ of the noisy steps (default :data:`DEFAULT_GAMMA` = 1e-3).
        T: number of noisy steps; given T, plan finds the smallest σ.
        sigma: per-step noise σ; given σ, plan finds the smallest T.
        variant: ``"gradient_clipping"`` (default), ``"model_clipping"``, ``"output_perturbation"``
            or ``"retrain"``.
        C2: model-clipping radius.
        mode: model-clipping step form (:class:`Mode`); default ``"noise_after_projection"``.
        sigma0: model clipping: optional noise added after the initial projection.
        method: ``"exact"`` (default) or the paper's ``"closed_form"`` (for comparison; more noise).
        max_T: compute budget: the largest T allowed.

    Every real number may be a Python int or float, a numpy scalar or a 0-d tensor. Options a variant
    does not use are refused, not dropped: output perturbation takes only C0 (and the defaults of
    ``lam`` and ``gamma``), retraining nothing. γ defaults to 1e-3, so with λ = 0 the rule
    ``T = C0/(γ·C1)`` can mean thousands of steps: the notes start with ``"T rule: ..."`` and, from
    1,000 steps on, state the cost; choose ``gamma`` or ``T`` for your budget.

    Returns:
        A :class:`Schedule` with ``guarantee(s).eps ≤ eps`` and ``guarantee(s).delta ≤ delta``;
        σ is rounded up to 10 significant digits and T up to an integer, and the next value below on
        that grid violates the target (exact method).

    Raises:
        InvalidParameterError: a parameter is out of range (the message names it and the valid range).
        InfeasibleError: no T within the budget reaches the target; ``best`` holds the best guarantee.

    Source: docs/theory.md#gradient-clipping (calibration), #model-clipping, #output-perturbation (baselines).
    """
    eps = _real("eps", eps, lower=0.0, upper=MAX_EPS, upper_strict=False)
    delta = _real("delta", delta, lower=MIN_DELTA, strict=False, upper=MAX_DELTA, upper_strict=False)
    variant = _enum(Variant, "variant", variant)
    method = _enum(Method, "method", method)
    target = Guarantee(eps, delta)
    if max_T is not None:
        max_T = _int("max_T", max_T, upper=MAX_STEPS)
    if T is not None:
        T = _int("T", T, upper=MAX_STEPS)
        if max_T is not None and T > max_T:
            raise InvalidParameterError("T", T, f"<= max_T={max_T}")
    if sigma is not None:
        sigma = _scale("sigma", sigma)
    if T is not None and sigma is not None:
        raise InvalidParameterError(
            "sigma", sigma, "None when T is given", hint="plan calibrates one of T and sigma; "
            "to evaluate a fixed (T, sigma) build a Schedule and call guarantee()")
    if variant in (Variant.RETRAIN, Variant.OUTPUT_PERTURBATION):
        _refuse_unused(variant, C0=C0, C1=C1, lam=lam, gamma=gamma, T=T, sigma=sigma, C2=C2, mode=mode,
                       sigma0=sigma0, max_T=max_T)
    if variant is Variant.RETRAIN:
        return Schedule(variant=variant, T=0, target=target, method=method,
                        notes=("retraining from scratch on the retain data is exact unlearning: eps = delta = 0",))
    C0 = _scale("C0", C0, f" (required for {variant.value})")
    if variant is Variant.OUTPUT_PERTURBATION:
        return _plan_output_perturbation(eps, delta, C0, method, target)
    lam = _real("lam", lam, lower=0.0, strict=False, upper=MAX_SCALE, upper_strict=False)
    gamma = _scale("gamma", gamma)
    if not gamma * lam < 1.0:
        raise InvalidParameterError("gamma*lam", gamma * lam, "< 1", hint=f"gamma={gamma!r}, lam={lam!r}")
    if variant is Variant.GRADIENT_CLIPPING:
        C1 = _scale("C1", C1, " (required for gradient_clipping)")
        for name, value in (("C2", C2), ("mode", mode), ("sigma0", sigma0)):
            if value is not None:
                raise InvalidParameterError(name, value, "None for gradient_clipping")
        return _plan_gradient_clipping(eps, delta, C0, C1, lam, gamma, T, sigma, method, max_T, target)
    # model clipping
    C2 = _scale("C2", C2, " (required for model_clipping)")
    mode = Mode.NOISE_AFTER_PROJECTION if mode is None else _enum(Mode, "mode", mode)
    if mode is Mode.CLIP_NOISE_BEFORE_PROJECTION:
        C1 = _scale("C1", C1, " (required for mode clip_noise_before_projection)")
    elif C1 is not None:
        C1 = _scale("C1", C1)
    if sigma0 is not None:
        sigma0 = _scale("sigma0", sigma0)
    if method is Method.CLOSED_FORM:
        raise InvalidParameterError("method", method.value, "'exact' for model_clipping",
                                    hint="docs/theory.md#model-clipping gives only the recursion, solved exactly")
    if T is None and sigma is None:
        raise InvalidParameterError("T", None, "an integer >= 1, or give sigma",
                                    hint="model_clipping calibrates sigma for a given T or T for a given sigma")
    return _plan_model_clipping(eps, delta, C0, C1, C2, lam, gamma, T, sigma, sigma0, mode, max_T, target)


def _refuse_unused(variant: Variant, **given: Any) -> None:
    """Refuse options that mean nothing for ``variant`` instead of dropping them silently.

    Output perturbation is one noise draw on the projected model (its only input is C0); retraining
    needs nothing. ``lam`` and ``gamma`` count as given when they differ from their defaults.
    """
    used = {"C0"} if variant is Variant.OUTPUT_PERTURBATION else set()
    defaults = {"lam": 0.0, "gamma": DEFAULT_GAMMA}
    for name, value in given.items():
        if name in used or value is None or (name in defaults and _equals_default(value, defaults[name])):
            continue
        what = ("only C0 (one noise draw, sigma0 calibrated by plan)" if variant is Variant.OUTPUT_PERTURBATION
                else "no noise parameters (exact unlearning)")
        keep = f"omitted or {defaults[name]!r}" if name in defaults else "omitted"
        raise InvalidParameterError(name, value, f"{keep} for {variant.value}", hint=f"{variant.value} takes {what}")


def _equals_default(value: Any, default: float) -> bool:
    try:
        return real_number("", value) == default
    except InvalidParameterError:
        return False


#: From this many noisy steps on, plan's notes spell out what the steps cost.
LARGE_T = 1000


def _cost_note(T: int, gamma: float, *, chosen: bool) -> str | None:
    """A plain line on the cost of a large T, so that nobody launches 10,000 noisy steps by accident."""
    if T < LARGE_T:
        return None
    why = ""
    if chosen:
        why = (f" (plan chose T for the default step size gamma={gamma:g})" if gamma == DEFAULT_GAMMA
               else f" (plan chose T for gamma={gamma:g})")
    return (f"T = {T} noisy steps: each is a full gradient step on a minibatch plus d Gaussian draws{why}; "
            "set gamma or T explicitly")


def _finish(**fields: Any) -> Schedule:
    """Build the schedule and re-check its derived guarantee against the target before handing it out."""
    target = fields["target"]
    schedule = Schedule(**fields)
    achieved = schedule.achieved  # guarantee(schedule), recomputed from the fields
    if achieved.eps > target.eps or achieved.delta > target.delta:
        if fields.get("method") is Method.CLOSED_FORM:  # sufficient only within a range: refuse it
            raise InvalidParameterError("method", Method.CLOSED_FORM.value, "'exact' for these parameters",
                                        hint="the paper's closed form does not reach the target here")
        raise NumericalError(f"internal: planned schedule misses its target: achieved {achieved} vs {target}")
    return schedule


# ------------------------------------------------------------------------------- gradient clipping
def _plan_gradient_clipping(eps, delta, C0, C1, lam, gamma, T, sigma, method, max_T, target) -> Schedule:
    log_delta = math.log(delta)
    notes: list[str] = []

    def eps_of(t: int, s: float) -> float:
        return eps_from_renyi(gc.eps_renyi_constant(C0, C1, lam, gamma, s, t), log_delta)[0]

    if sigma is None:
        if T is None:
            T, reason = gc.closed_form_T(C0, C1, lam, gamma)
            cap = max_T if max_T is not None else DEFAULT_MAX_T
            if T > cap:
                reason += (f"; capped at the budget max_T={cap} (sigma is minimised within it)" if max_T is not None
                           else f"; capped at DEFAULT_MAX_T={cap} (pass T or max_T to choose)")
                T = cap
            notes.append("T rule: " + reason)
            chosen = True
        else:
            notes.append(f"T rule: T={T} given; sigma calibrated for it")
            chosen = False
        if method is Method.CLOSED_FORM:
            raw = gc.closed_form_sigma(eps, log_delta, C0, C1, lam, gamma, T)
            sigma = round_up(raw)
            if eps_of(T, sigma) > eps:  # sufficient only within a range: re-check, refuse if it misses
                raise InvalidParameterError("method", method.value, "'exact' for these parameters",
                                            hint="the paper's closed form does not reach the target here")
            notes.append(f"sigma from the paper's closed form: {raw:.10g} (docs/theory.md#gradient-clipping)")
        else:
            er_max, _ = max_renyi_for(eps, log_delta)
            guess = math.sqrt(gc.noise_free_loss(C0, C1, lam, gamma, T) / er_max)
            # guess is the exact solution up to the conversion's float slack: a tight first bracket
            sigma = solve_monotone(lambda s: eps_of(T, s) - eps, guess=guess, guess_rtol=1e-10).x
        cost = _cost_note(T, gamma, chosen=chosen)
        if cost is not None:
            notes.append(cost)
        return _finish(variant=Variant.GRADIENT_CLIPPING, T=T, C0=C0, C1=C1, lam=lam, gammas=(gamma,) * T,
                       sigmas=(sigma,) * T, target=target, method=method, notes=tuple(notes))

    # sigma given: the smallest T. eps(T) falls until T* and rises after (gc.t_argmin), so search the
    # falling branch [1, T_best] where T_best is the best integer within the budget.
    if method is Method.CLOSED_FORM:
        def gap(t: float) -> float:
            return gc.closed_form_sigma(eps, log_delta, C0, C1, lam, gamma, int(t)) - sigma
    else:
        def gap(t: float) -> float:
            return eps_of(int(t), sigma) - eps

    budget = max_T if max_T is not None else DEFAULT_MAX_T
    t_star = gc.t_argmin(C0, C1, lam, gamma)
    if math.isfinite(t_star):
        cands = {min(budget, max(1, math.floor(t_star))), min(budget, max(1, math.ceil(t_star)))}
        T_best = min(cands, key=lambda t: (gap(t), t))
    else:
        T_best = budget
    if gap(T_best) > 0:
        best = Guarantee(max(eps_of(T_best, sigma), 0.0), delta)
        raise InfeasibleError(
            f"no T <= {budget} reaches eps={eps} at delta={delta} with sigma={sigma} "
            f"(best: eps={best.eps:.6g} at T={T_best}); increase sigma"
            + ("" if math.isfinite(t_star) else " or the budget max_T"),
            best=best, best_T=T_best)
    T = int(solve_monotone(gap, bracket=(0, T_best), integer=True).x)
    notes.append(f"T rule: smallest number of steps meeting the target with sigma={sigma!r}")
    cost = _cost_note(T, gamma, chosen=True)
    if cost is not None:
        notes.append(cost)
    return _finish(variant=Variant.GRADIENT_CLIPPING, T=T, C0=C0, C1=C1, lam=lam, gammas=(gamma,) * T,
                   sigmas=(sigma,) * T, target=target, method=method, notes=tuple(notes))


# -------------------------------------------------------------------------------- model clipping
def _plan_model_clipping(eps, delta, C0, C1, C2, lam, gamma, T, sigma, sigma0, mode, max_T, target) -> Schedule:
    log_delta = math.log(delta)
    ld0_cache: dict[float, float] = {}

    def ld0() -> float:
        if sigma0 not in ld0_cache:
            ld0_cache[sigma0] = mc.log_delta_initial(eps, C0, sigma0)
        return ld0_cache[sigma0]

    common = dict(variant=Variant.MODEL_CLIPPING, C0=C0, C1=C1, C2=C2, lam=lam, sigma0=sigma0, mode=mode,
                  target=target, method=Method.EXACT)
    if sigma is None:
        if ld0() <= log_delta:
            raise InvalidParameterError(
                "sigma0", sigma0, f"small enough that the initial noise alone does not already give delta <= {delta}",
                hint="the noisy steps would need no noise: use variant='output_perturbation' and fine-tune")
        if mode is Mode.CLIP_NOISE_BEFORE_PROJECTION and sigma0 is not None and T < 2:
            raise InvalidParameterError(
                "T", T, ">= 2 for clip_noise_before_projection with sigma0",
                hint="its first step starts from the unbounded noisy x_0 and cannot contract")
        r1 = mc.contraction_radius(C2, 1.0, mode, gamma, C1)  # r = r1 / sigma after the first step

        def gap(s: float) -> float:
            rs = mc.radii(C0, C2, (s,) * T, (gamma,) * T, mode, C1, sigma0)
            return mc.log_delta_final(eps, rs, ld0(), stop_below=log_delta) - log_delta

        # start where one step of the Gaussian mechanism alone would suffice: a feasible upper guess
        sol = solve_monotone(gap, guess=r1 / 0.25)
        sigma = sol.x
        notes = (f"sigma: smallest noise meeting the target in T={T} steps (docs/theory.md#model-clipping recursion)",
                 f"T rule: T={T} given; sigma calibrated for it", *_optional(_cost_note(T, gamma, chosen=False)))
        return _finish(T=T, gammas=(gamma,) * T, sigmas=(sigma,) * T, notes=notes, **common)

    r = mc.contraction_radius(C2, sigma, mode, gamma, C1)
    r_first = mc.radii(C0, C2, (sigma,), (gamma,), mode, C1, sigma0)[0]
    budget = max_T if max_T is not None else DEFAULT_MAX_T
    # While delta_t is still above the target, eps~_t <= eps~(target), so every step contracts ln delta
    # by at most -ln theta_{eps~(target)}(r): a lower bound on the steps needed, checked up front.
    eps_tilde_max = math.log1p(math.expm1(eps) / delta)
    max_rate = -log_theta(eps_tilde_max, r)
    first_rate = -log_theta(eps_tilde_max, r_first) if math.isfinite(r_first) else 0.0
    remaining = ld0() - log_delta - first_rate  # what the steps after the first must still remove
    if remaining > 0 and (max_rate <= 0.0 or 1 + remaining / max_rate > budget):
        need = math.inf if max_rate <= 0.0 else 1 + remaining / max_rate
        raise InfeasibleError(
            f"model clipping with sigma={sigma} (r={r:.6g}) needs at least {need:.3g} steps to reach "
            f"delta={delta} at eps={eps}, more than max_T={budget}; increase sigma",
            best=None, best_T=None)
    steps = 0
    last = previous = ld0()
    for last in mc.log_delta_steps(eps, _first_then_repeat(r_first, r, budget), ld0()):
        steps += 1
        # equal after the first step (whose radius differs): the float recursion is stationary for ever
        if last <= log_delta or (steps > 1 and last == previous):
            break
        previous = last
    if not last <= log_delta:
        best = Guarantee(eps, delta_from_log(last), log_delta=last)
        raise InfeasibleError(
            f"model clipping with sigma={sigma} (r={r:.6g}) reaches only delta={best.delta:.3g} "
            + (f"after max_T={budget} steps" if steps >= budget else
               f"and stalls after {steps} steps (each step contracts delta by less than float precision)")
            + f" at eps={eps}; increase sigma" + (" or the budget" if steps >= budget else ""),
            best=best, best_T=budget)
    T = max(1, steps)
    notes = (f"T rule: first step at which the docs/theory.md#model-clipping recursion reaches delta with "
             f"sigma={sigma!r}", *_optional(_cost_note(T, gamma, chosen=True)))
    return _finish(T=T, gammas=(gamma,) * T, sigmas=(sigma,) * T, notes=notes, **common)


def _optional(note: str | None) -> tuple[str, ...]:
    return () if note is None else (note,)


def _first_then_repeat(first: float, value: float, n: int):
    if n > 0:
        yield first
    for _ in range(n - 1):
        yield value


# ---------------------------------------------------------------------------- output perturbation
def _plan_output_perturbation(eps, delta, C0, method, target) -> Schedule:
    classic = 2.0 * C0 * math.sqrt(2.0 * math.log(1.25 / delta)) / eps
    if method is Method.CLOSED_FORM:
        if eps >= 1.0:
            raise InvalidParameterError("eps", eps, "< 1 for the classic Gaussian-mechanism formula",
                                        hint="use method='exact' (analytic Gaussian)")
        sigma0 = round_up(classic)
        note = f"classic sigma = 2*C0*sqrt(2 ln(1.25/delta))/eps = {classic:.10g} (docs/theory.md#output-perturbation)"
    else:
        log_delta = math.log(delta)

        def gap(s: float) -> float:
            return log_theta(eps, 2.0 * C0 / s) * (1.0 - FLOAT_SLACK) - log_delta

        sigma0 = solve_monotone(gap, guess=classic * 0.8).x
        validity = "" if eps < 1.0 else ", a formula valid only for eps < 1"
        note = (f"exact analytic-Gaussian sigma (the classic 2*C0*sqrt(2 ln(1.25/delta))/eps would give "
                f"{classic:.6g}{validity}; docs/theory.md#output-perturbation)")
    return _finish(variant=Variant.OUTPUT_PERTURBATION, T=0, C0=C0, sigma0=sigma0, target=target,
                   method=method, notes=(note,))
