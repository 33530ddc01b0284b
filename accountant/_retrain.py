"""Retraining from scratch on the retain data (docs/theory.md#retrain): exact unlearning, ε = δ = 0, with
no noise and no steps to account for. A mechanism like the others so that plan, guarantee and the
certificates treat it through the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from certun.accountant._mechanism import require_no_steps
from certun.accountant._schedule import Guarantee, Method, Schedule, Variant

__all__ = ["Retrain"]


class Retrain:
    """Exact unlearning: the guarantee is (0, 0) whatever the target."""

    inputs: frozenset[str] = frozenset()
    conversion = "exact-retraining"
    exact = True

    def validate(self, schedule: Schedule) -> Mapping[str, Any]:
        """No noisy steps (the target is recorded but does not enter the accounting)."""
        require_no_steps(schedule, "no noisy steps")
        return {}

    def guarantee(self, schedule: Schedule, *, exact: bool) -> Guarantee:
        """(0, 0): retraining never saw the forget set."""
        return Guarantee(0.0, 0.0)

    def noise_left(self, schedule: Schedule) -> None:
        """None: retraining adds no noise."""
        return None

    def plan(self, target: Guarantee, method: Method, **inputs: Any) -> Schedule:
        """The one schedule: T = 0, nothing to calibrate."""
        return Schedule(variant=Variant.RETRAIN, T=0, target=target, method=method,
                        notes=("retraining from scratch on the retain data is exact unlearning: eps = delta = 0",))
