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
from typing import Any

from certun.accountant._registry import mechanism
from certun.accountant._schedule import Schedule
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


def forecast(schedule: Schedule, d: Any) -> Forecast | None:
    """Forecast for ``d`` unlearned parameters (an integer, or a model whose trainable parameters are
    counted), or ``None`` for retraining (no noise).

    The noise left is the schedule's mechanism's (``noise_left``), so a registered mechanism is forecast too.

    Raises:
        InvalidParameterError: ``d`` is not an integer >= 1 or a model, or ``schedule`` is not a Schedule.
    """
    if callable(getattr(d, "parameters", None)):  # a torch module, duck-typed (the accountant imports no torch)
        d = sum(int(p.numel()) for p in d.parameters() if getattr(p, "requires_grad", True))
    if not isinstance(schedule, Schedule):
        raise InvalidParameterError("schedule", type(schedule).__name__, "a Schedule from certun.plan")
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise InvalidParameterError("d", d, "the number of unlearned parameters, an integer >= 1")
    left = mechanism(schedule.variant).noise_left(schedule)
    if left is None:
        return None
    sigma_eff, radius, name, where = left
    noise_norm = sigma_eff * math.sqrt(d)
    ratio = noise_norm / radius
    erases = ratio >= ERASE_RATIO
    verdict = ("expect the noisy phase to erase what the model learned beyond the centre; fine-tuning afterwards "
               "amounts to retraining from the centre, so compare the exact routes (docs/choosing.md)"
               if erases else
               "the model's deviation from the centre can survive the noise (utility still depends on the data)")
    text = (f"d = {d:,}: noise left {where} has norm σ_eff·√d = {noise_norm:.4g} against the ball radius "
            f"{name} = {radius:.4g} ({ratio:.3g}×): {verdict} (docs/theory.md#utility-limit)")
    return Forecast(d=d, sigma_eff=sigma_eff, noise_norm=noise_norm, radius=radius, radius_name=name, ratio=ratio,
                    erases=erases, text=text)
