"""Backend-agnostic accounting: derive σ and T for an (ε, δ) target and recompute guarantees.

Public entry points are :func:`plan` and :func:`guarantee`; both dispatch on the schedule's variant
through one table of mechanisms (:func:`mechanism`, :func:`register_mechanism`). The lower-level
functions (contraction coefficient θ, Rényi conversion) are exported for verifiers and auditors.
Source of every formula: docs/theory.md (docs/accountant.md).
"""

from certun.accountant._forecast import Forecast, forecast
from certun.accountant._mechanism import Mechanism, NoiseLeft
from certun.accountant._numerics import delta_from_log, log_theta
from certun.accountant._planner import DEFAULT_GAMMA, guarantee, plan
from certun.accountant._rdp import eps_from_renyi, log_delta_from_renyi, max_renyi_for
from certun.accountant._registry import mechanism, register_mechanism, unregister_mechanism
from certun.accountant._schedule import (
    MAX_DELTA,
    MAX_EPS,
    MAX_SCALE,
    MAX_STEPS,
    MIN_DELTA,
    MIN_SCALE,
    SCHEDULE_VERSION,
    Guarantee,
    Method,
    Mode,
    Schedule,
    Variant,
)


def theta(eps: float, r: float) -> float:
    """θ_ε(r) = Q(ε/r − r/2) − e^ε Q(ε/r + r/2): the Gaussian mechanism's δ(ε) at sensitivity/noise r.

    Rounded up to the smallest positive float rather than underflowing to 0; use :func:`log_theta`
    for the exact log. Source: docs/theory.md#model-clipping.
    """
    return 0.0 if r <= 0 else delta_from_log(log_theta(eps, r))


__all__ = [
    "DEFAULT_GAMMA",
    "MAX_DELTA",
    "MAX_EPS",
    "MAX_SCALE",
    "MAX_STEPS",
    "MIN_DELTA",
    "MIN_SCALE",
    "SCHEDULE_VERSION",
    "Forecast",
    "Guarantee",
    "Mechanism",
    "Method",
    "Mode",
    "NoiseLeft",
    "Schedule",
    "Variant",
    "eps_from_renyi",
    "forecast",
    "guarantee",
    "log_delta_from_renyi",
    "log_theta",
    "max_renyi_for",
    "mechanism",
    "plan",
    "register_mechanism",
    "theta",
    "unregister_mechanism",
]
