"""``plan`` (calibrate σ or T for an (ε, δ) target) and ``guarantee`` (recompute (ε, δ) from a schedule).

Both are pure functions that check what every variant shares and hand the rest to the variant's
mechanism, found in the one registry (:mod:`certun.accountant._registry`). Every returned σ and T is the
smallest value on its grid that meets the target; the next value below fails, and the schedule's
``achieved`` guarantee is recomputed from its fields, never copied from the target.
Source: docs/theory.md#gradient-clipping (bounds and calibration), #model-clipping, #output-perturbation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from certun._validation import real_number
from certun.accountant._mechanism import DEFAULT_GAMMA, PLAN_OPTIONS, Mechanism
from certun.accountant._registry import mechanism, variant_of
from certun.accountant._schedule import (
    MAX_DELTA,
    MAX_EPS,
    MIN_DELTA,
    Guarantee,
    Method,
    Mode,
    Schedule,
    Variant,
    option,
)
from certun.errors import InvalidParameterError, NumericalError

__all__ = ["DEFAULT_GAMMA", "guarantee", "plan"]


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
    return mechanism(schedule.variant).guarantee(schedule, exact=exact)


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
            or ``"retrain"`` (or any registered mechanism's variant).
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
    target = _plan_target(eps, delta)
    variant, method = variant_of(variant), option("method", method, Method)
    mech = mechanism(variant)
    given = dict(C0=C0, C1=C1, lam=lam, gamma=gamma, T=T, sigma=sigma, C2=C2, mode=mode, sigma0=sigma0,
                 max_T=max_T)
    _refuse_unused(variant, mech, given)
    return _checked(variant, target, mech.plan(target, method, **{name: given[name] for name in mech.inputs}))


def _plan_target(eps: float, delta: float) -> Guarantee:
    """The target (ε, δ) of :func:`plan`, each checked against the range the accountant supports."""
    eps = _target("eps", eps, f"(0, {MAX_EPS:g}]", lambda x: 0.0 < x <= MAX_EPS)
    delta = _target("delta", delta, f"[{MIN_DELTA:g}, {MAX_DELTA:g}]", lambda x: MIN_DELTA <= x <= MAX_DELTA)
    return Guarantee(eps, delta)


def _checked(variant: Variant, target: Guarantee, schedule: Schedule) -> Schedule:
    """Hand out only a schedule of the requested variant whose derived guarantee meets the target,
    whatever the mechanism did (the built-in ones check too; a registered one may not)."""
    if not isinstance(schedule, Schedule) or schedule.variant is not variant:
        got = schedule.variant.value if isinstance(schedule, Schedule) else type(schedule).__name__
        raise NumericalError(f"internal: the {variant.value} mechanism planned a {got} schedule")
    achieved = schedule.achieved  # cached on the instance: free when the mechanism checked already
    if achieved.eps > target.eps or achieved.delta > target.delta:
        raise NumericalError(f"internal: planned schedule misses its target: achieved {achieved} vs {target}")
    return schedule


def _target(name: str, value: Any, interval: str, inside: Callable[[float], bool]) -> float:
    valid = f"a finite real number in {interval}"
    x = real_number(name, value, valid)
    if not inside(x):
        raise InvalidParameterError(name, value, valid)
    return x


def _refuse_unused(variant: Variant, mech: Mechanism, given: dict[str, Any]) -> None:
    """Refuse options that mean nothing for ``variant`` instead of dropping them silently.

    An option counts as given when it is not None and differs from its default (``lam`` 0, ``gamma``
    :data:`DEFAULT_GAMMA`), so spelling a default out is not a mistake.
    """
    for name, value in given.items():
        default = PLAN_OPTIONS[name]
        if name in mech.inputs or value is None or (default is not None and _equals(value, default)):
            continue
        keep = f"omitted or {default!r}" if default is not None else "omitted"
        takes = ", ".join(sorted(mech.inputs)) or "no options"
        raise InvalidParameterError(name, value, f"{keep} for {variant.value}",
                                    hint=f"{variant.value} takes {takes}")


def _equals(value: Any, default: float) -> bool:
    try:
        return real_number("", value) == default
    except InvalidParameterError:
        return False
