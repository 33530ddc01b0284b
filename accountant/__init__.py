"""Backend-agnostic accounting: derive σ and T for an (ε, δ) target and recompute guarantees.

Public entry points are :func:`plan` and :func:`guarantee`; the lower-level functions (contraction
coefficient θ, Rényi conversion, per-variant bounds) are exported for tests, verifiers and auditors.
Source of every formula: THEORY.md (docs/accountant.md).
"""

from certun.accountant.planner import guarantee, plan
from certun.accountant.schedule import SCHEDULE_VERSION, Guarantee, Method, Mode, Schedule, Variant

__all__ = [
    "SCHEDULE_VERSION",
    "Guarantee",
    "Method",
    "Mode",
    "Schedule",
    "Variant",
    "guarantee",
    "plan",
]
