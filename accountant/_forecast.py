"""What a schedule will do to a model of ``d`` unlearned parameters, from public quantities only.

The certifying algorithm may start anywhere in the ball, so the noise must hide a shift of the whole
radius in every direction. A trained model's deviation from the centre carries about ``radius/√d`` per
coordinate, while the noise left on the released iterate has a standard deviation ``σ_eff`` per
coordinate. When ``σ_eff·√d`` (the noise norm) exceeds the radius, every coordinate's noise exceeds
its typical signal and the noisy phase erases what the model learned beyond the centre; fine-tuning
afterwards is then retraining from the centre (docs/theory.md#utility-limit). This forecast uses the
schedule and ``d`` only, never the data, so it can be published and read before anything runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from certun.accountant._mechanism import present
from certun.accountant._schedule import Mode, Schedule, Variant
from certun.errors import InvalidParameterError

__all__ = ["Forecast", "forecast"]

#: Noise-to-signal ratio from which the forecast says the noisy phase erases the model.
ERASE_RATIO = 1.0


@dataclass(frozen=True)
class Forecast:
    """The noise a run leaves on the released iterate against the radius that bounds the model's signal."""

    d: int
    sigma_eff: float
    noise_norm: float
    radius: float
    radius_name: str
    ratio: float
    erases: bool
    text: str


def _effective_sigma(s: Schedule) -> tuple[float, float, str]:
    """``(σ_eff, radius, radius name)``: per-coordinate noise left on the released iterate, and the signal radius."""
    v = s.variant
    if v is Variant.OUTPUT_PERTURBATION:
        return present(s.sigma0), present(s.C0), "C0"
    if v is Variant.GRADIENT_CLIPPING:
        # noise of step t reaches the end contracted by the later steps' factors (1 - γλ)
        var, factor = 0.0, 1.0
        for gamma, sigma in zip(reversed(s.gammas), reversed(s.sigmas), strict=True):
            var += (factor * sigma) ** 2
            factor *= 1.0 - gamma * s.lam
        return math.sqrt(var), present(s.C0), "C0"
    # model clipping: the last step's noise stays on the iterate (after or inside the C2 projection)
    return s.sigmas[-1], present(s.C2), "C2"


def forecast(schedule: Schedule, d: int) -> Forecast | None:
    """Forecast for ``d`` unlearned parameters, or ``None`` for retraining (no noise).

    Raises:
        InvalidParameterError: ``d`` is not an integer >= 1, or ``schedule`` is not a Schedule.
    """
    if not isinstance(schedule, Schedule):
        raise InvalidParameterError("schedule", type(schedule).__name__, "a Schedule from certun.plan")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise InvalidParameterError("d", d, "the number of unlearned parameters, an integer >= 1")
    if schedule.variant is Variant.RETRAIN:
        return None
    sigma_eff, radius, name = _effective_sigma(schedule)
    noise_norm = sigma_eff * math.sqrt(d)
    ratio = noise_norm / radius
    erases = ratio >= ERASE_RATIO
    inside = schedule.variant is Variant.MODEL_CLIPPING and schedule.mode is Mode.CLIP_NOISE_BEFORE_PROJECTION
    where = "inside the C2 projection" if inside else "on the released iterate"
    verdict = ("expect the noisy phase to erase what the model learned beyond the centre; fine-tuning afterwards "
               "amounts to retraining from the centre, so compare the exact routes (docs/choosing.md)"
               if erases else
               "the model's deviation from the centre can survive the noise (utility still depends on the data)")
    text = (f"d = {d:,}: noise left {where} has norm σ_eff·√d = {noise_norm:.4g} against the ball radius "
            f"{name} = {radius:.4g} ({ratio:.3g}×): {verdict} (docs/theory.md#utility-limit)")
    return Forecast(d=d, sigma_eff=sigma_eff, noise_norm=noise_norm, radius=radius, radius_name=name, ratio=ratio,
                    erases=erases, text=text)
