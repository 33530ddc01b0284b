"""What a mechanism module provides (:class:`Mechanism`) and the checks and plan steps they share.

Each unlearning mechanism lives in one module (``_gradient_clipping``, ``_model_clipping``,
``_output_perturbation``, ``_retrain``) that owns three things: what a :class:`Schedule` of its variant
must hold (``validate``), its guarantee (``guarantee``) and its calibration (``plan``). The registry
(:mod:`certun.accountant._registry`) maps each :class:`Variant` to one of them; :func:`~certun.plan`,
:func:`~certun.guarantee` and ``Schedule`` validation dispatch through it and nowhere else.
Source: docs/theory.md#gradient-clipping, #model-clipping, #output-perturbation, #retrain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, TypeVar

from certun._validation import integer, real_in_range
from certun.accountant._schedule import (
    MAX_DELTA,
    MAX_SCALE,
    MAX_STEPS,
    MIN_DELTA,
    Guarantee,
    Method,
    Schedule,
    scale,
)
from certun.errors import InvalidParameterError, NumericalError

__all__ = [
    "DEFAULT_GAMMA",
    "DEFAULT_MAX_T",
    "LARGE_T",
    "PLAN_OPTIONS",
    "Mechanism",
    "NoiseLeft",
    "cost_note",
    "finish",
    "present",
    "require",
    "require_no_steps",
    "require_steps",
    "require_target",
    "step_inputs",
    "steps_or_noise",
]

#: Default step size γ of the noisy phase (docs/theory.md#gradient-clipping's sanity values use it).
DEFAULT_GAMMA = 1e-3
#: Largest T searched when no budget is given.
DEFAULT_MAX_T = 1_000_000
#: From this many noisy steps on, plan's notes spell out what the steps cost.
LARGE_T = 1000
#: The plan options every mechanism may take, with their defaults; an option equal to its default counts
#: as not given (so ``lam=0.0`` passed to output perturbation is not a mistake).
PLAN_OPTIONS: Mapping[str, Any] = {"C0": None, "C1": None, "lam": 0.0, "gamma": DEFAULT_GAMMA, "T": None,
                                   "sigma": None, "C2": None, "mode": None, "sigma0": None, "max_T": None}


_V = TypeVar("_V")


def present(value: _V | None) -> _V:
    """A field the mechanism's ``validate`` requires, so never None here; None is an internal error, not 0."""
    if value is None:
        raise NumericalError("internal: a schedule field its mechanism requires is None")
    return value


class NoiseLeft(NamedTuple):
    """The noise a run leaves on what it releases, against the ball radius that bounds the model's signal
    (the input of :func:`~certun.accountant.forecast`; docs/theory.md#utility-limit)."""

    sigma_eff: float  #: per-coordinate standard deviation of the noise left
    radius: float  #: radius of the ball the signal lives in
    radius_name: str  #: its name in the schedule ("C0", "C2")
    where: str  #: where the noise sits, in words ("on the released iterate")


class Mechanism(Protocol):
    """One unlearning mechanism: its schedule's rules, its guarantee and its calibration.

    Attributes:
        inputs: the :func:`~certun.plan` options it takes (a subset of ``PLAN_OPTIONS``); any other
            option given to ``plan`` is refused by name instead of being dropped.
        conversion: how its (ε, δ) is derived, recorded in certificates.
        exact: whether it is exact unlearning (ε = δ = 0 by construction).
    """

    inputs: frozenset[str]
    conversion: str
    exact: bool

    def validate(self, schedule: Schedule) -> Mapping[str, Any]:
        """Raise :class:`~certun.errors.InvalidParameterError` unless ``schedule`` is a valid schedule of
        this mechanism; return the fields to fill in with their defaults (e.g. ``{"mode": ...}``)."""
        ...

    def guarantee(self, schedule: Schedule, *, exact: bool) -> Guarantee:
        """The (ε, δ) of a valid ``schedule``, from its fields alone; ``exact`` evaluates in mpmath."""
        ...

    def plan(self, target: Guarantee, method: Method, **inputs: Any) -> Schedule:
        """The cheapest schedule meeting ``target``; ``inputs`` holds exactly the names in ``inputs``."""
        ...

    def noise_left(self, schedule: Schedule) -> NoiseLeft | None:
        """The noise a valid ``schedule`` leaves on the released model; None when it adds none."""
        ...


# ------------------------------------------------------------------------ schedule checks
def require_target(s: Schedule, eps_max: float) -> None:
    """The target must be one the accounting can evaluate: ε in (0, eps_max] and δ in [MIN_DELTA, MAX_DELTA]."""
    t = s.target
    if not (0 < t.eps <= eps_max and math.isfinite(t.eps)):
        raise InvalidParameterError("eps", t.eps, f"finite and in (0, {eps_max:g}] for the target of {s.variant.value}")
    if not MIN_DELTA <= t.delta <= MAX_DELTA:
        raise InvalidParameterError("delta", t.delta, f"in [{MIN_DELTA:g}, {MAX_DELTA:g}] for the target")


def require(s: Schedule, name: str, why: str = "") -> None:
    """Field ``name`` must be set (not None) for this variant."""
    if getattr(s, name) is None:
        raise InvalidParameterError(name, None, f"> 0 for {why or s.variant.value}")


def require_no_steps(s: Schedule, why: str) -> None:
    """No noisy steps: T = 0 and no per-step values."""
    if s.T != 0 or s.sigmas or s.gammas:
        raise InvalidParameterError("T", s.T, f"0 for {s.variant.value} ({why})")


def require_steps(s: Schedule) -> None:
    """T ≥ 1 noisy steps with T values of σ and γ, each step contracting (γλ < 1)."""
    if s.T < 1:
        raise InvalidParameterError("T", s.T, f"an integer >= 1 for {s.variant.value}")
    if len(s.sigmas) != s.T:
        raise InvalidParameterError("sigmas", f"<{len(s.sigmas)} values>", f"exactly T={s.T} values")
    if len(s.gammas) != s.T:
        raise InvalidParameterError("gammas", f"<{len(s.gammas)} values>", f"exactly T={s.T} values")
    for g in s.gammas:
        if not g * s.lam < 1:
            raise InvalidParameterError("gamma*lam", g * s.lam, "< 1 (contraction needs 1 - gamma*lam > 0)")


# ------------------------------------------------------------------------- plan inputs
def _count(name: str, value: Any, upper: int) -> int:
    valid = f"an integer >= 1 and <= {upper}"
    return integer(name, value, valid, low=1, high=upper)


def step_inputs(lam: Any, gamma: Any, T: Any, sigma: Any, max_T: Any) -> tuple[float, float, int | None,
                                                                                   float | None, int | None]:
    """Validate the options of mechanisms with noisy steps: ``(lam, gamma, T, sigma, max_T)``.

    At most one of T and σ (plan calibrates the other), T within the budget, and γλ < 1.
    """
    if max_T is not None:
        max_T = _count("max_T", max_T, MAX_STEPS)
    if T is not None:
        T = _count("T", T, MAX_STEPS)
        if max_T is not None and T > max_T:
            raise InvalidParameterError("T", T, f"<= max_T={max_T}")
    if sigma is not None:
        sigma = scale("sigma", sigma)
    if T is not None and sigma is not None:
        raise InvalidParameterError(
            "sigma", sigma, "None when T is given", hint="plan calibrates one of T and sigma; "
            "to evaluate a fixed (T, sigma) build a Schedule and call guarantee()")
    lam = real_in_range("lam", lam, low=0.0, high=MAX_SCALE)
    gamma = scale("gamma", gamma)
    if not gamma * lam < 1.0:
        raise InvalidParameterError("gamma*lam", gamma * lam, "< 1", hint=f"gamma={gamma!r}, lam={lam!r}")
    return lam, gamma, T, sigma, max_T


def steps_or_noise(T: int | None, sigma: float | None, variant: str) -> None:
    """Mechanisms without a rule for T need T or σ given."""
    if T is None and sigma is None:
        raise InvalidParameterError("T", None, "an integer >= 1, or give sigma",
                                    hint=f"{variant} calibrates sigma for a given T or T for a given sigma")


def cost_note(T: int, gamma: float, *, chosen: bool) -> tuple[str, ...]:
    """A plain line on the cost of a large T, so that nobody launches 10,000 noisy steps by accident."""
    if T < LARGE_T:
        return ()
    why = ""
    if chosen:
        why = (f" (plan chose T for the default step size gamma={gamma:g})" if gamma == DEFAULT_GAMMA
               else f" (plan chose T for gamma={gamma:g})")
    return (f"T = {T} noisy steps: each is a full gradient step on a minibatch plus d Gaussian draws{why}; "
            "set gamma or T explicitly",)


def finish(**fields: Any) -> Schedule:
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
