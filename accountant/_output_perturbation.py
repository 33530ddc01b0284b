"""Output perturbation (docs/theory.md#output-perturbation): one Gaussian draw of σ0 on the model projected
onto the C0 ball, then fine-tuning. Its δ at ε is the Gaussian mechanism's ``θ_ε(2·C0/σ0)`` (the analytic
Gaussian mechanism), so calibration is one monotone solve in σ0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from certun.accountant._mechanism import NoiseLeft, finish, present, require, require_no_steps, require_target
from certun.accountant._numerics import FLOAT_SLACK, delta_from_log, log_theta, log_theta_mp
from certun.accountant._schedule import MAX_EPS, Guarantee, Method, Schedule, Variant, scale
from certun.accountant._solver import round_up, solve_monotone
from certun.errors import InvalidParameterError

__all__ = ["OutputPerturbation"]


class OutputPerturbation:
    """One noise draw on the projected model: δ at the target ε (analytic Gaussian mechanism)."""

    inputs = frozenset({"C0"})
    conversion = "analytic-gaussian-mechanism"
    exact = False

    def validate(self, schedule: Schedule) -> Mapping[str, Any]:
        """C0 and σ0, no noisy steps."""
        require_target(schedule, MAX_EPS)
        require(schedule, "C0")
        require_no_steps(schedule, "one noise draw")
        require(schedule, "sigma0")
        return {}

    def guarantee(self, schedule: Schedule, *, exact: bool) -> Guarantee:
        """``θ_ε(2·C0/σ0)`` at the target ε, conservative in float64, rounded up in mpmath."""
        eps = schedule.target.eps
        r = 2.0 * present(schedule.C0) / present(schedule.sigma0)
        if exact:  # log_theta_mp rounds to nearest: step up a few ulps of the result itself
            ld = log_theta_mp(eps, r)
            ld = ld + 4 * math.ulp(ld)
        else:
            ld = log_theta(eps, r) * (1.0 - FLOAT_SLACK)
        return Guarantee(eps, delta_from_log(ld), log_delta=ld)

    def noise_left(self, schedule: Schedule) -> NoiseLeft:
        """The one draw σ0, on the released iterate."""
        return NoiseLeft(present(schedule.sigma0), present(schedule.C0), "C0", "on the released iterate")

    def plan(self, target: Guarantee, method: Method, **inputs: Any) -> Schedule:
        """The smallest σ0 (exact), or the classic ``2·C0·√(2 ln(1.25/δ))/ε`` (closed form, ε < 1 only)."""
        eps, delta = target.eps, target.delta
        C0 = scale("C0", inputs["C0"], " (required for output_perturbation)")
        classic = 2.0 * C0 * math.sqrt(2.0 * math.log(1.25 / delta)) / eps
        if method is Method.CLOSED_FORM:
            if eps >= 1.0:
                raise InvalidParameterError("eps", eps, "< 1 for the classic Gaussian-mechanism formula",
                                            hint="use method='exact' (analytic Gaussian)")
            sigma0 = round_up(classic)
            note = (f"classic sigma = 2*C0*sqrt(2 ln(1.25/delta))/eps = {classic:.10g} "
                    "(docs/theory.md#output-perturbation)")
        else:
            log_delta = math.log(delta)

            def gap(s: float) -> float:
                return log_theta(eps, 2.0 * C0 / s) * (1.0 - FLOAT_SLACK) - log_delta

            sigma0 = solve_monotone(gap, guess=classic * 0.8).x
            validity = "" if eps < 1.0 else ", a formula valid only for eps < 1"
            note = (f"exact analytic-Gaussian sigma (the classic 2*C0*sqrt(2 ln(1.25/delta))/eps would give "
                    f"{classic:.6g}{validity}; docs/theory.md#output-perturbation)")
        return finish(variant=Variant.OUTPUT_PERTURBATION, T=0, C0=C0, sigma0=sigma0, target=target,
                      method=method, notes=(note,))
