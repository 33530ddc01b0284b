"""Recompute a certificate's guarantee with the accountant and decide whether the claim holds.

The claim holds iff the claimed ε is at least the recomputed ε **and** the claimed δ is at least the
recomputed δ. Stored "achieved" numbers are never consulted. When the float64 result lies within a
relative 1e-9 of the claim, the decision is taken again from ``guarantee(schedule, exact=True)``
(mpmath), and there is no tolerance on the unsafe side: a recomputed value above the claim fails,
however slightly. Source: docs/theory.md#what-a-certificate-records; docs/certificates.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from certun.accountant import Guarantee, Schedule, guarantee

__all__ = ["NEAR_TIE_RTOL", "ClaimDecision", "decide_claim"]

#: Relative distance below which the float64 recomputation is re-done with mpmath.
NEAR_TIE_RTOL = 1e-9


@dataclass(frozen=True)
class ClaimDecision:
    """Whether a claimed (ε, δ) is supported by a schedule, with the numbers behind the answer."""

    holds: bool
    recomputed: Guarantee
    exact: bool
    detail: str


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= NEAR_TIE_RTOL * max(abs(a), abs(b))


def _fmt(value: float, other: float) -> str:
    """Six significant digits, or full precision when that would hide the difference."""
    short = f"{value:.6g}"
    return repr(value) if short == f"{other:.6g}" and value != other else short


def _claimed(value: float, other: float) -> str:
    """A claimed value as written in the certificate (``1.0``, ``1e-05``), or in full if needed."""
    return repr(value) if len(repr(value)) <= 12 else _fmt(value, other)


def decide_claim(schedule: Schedule, claim_eps: float, claim_delta: float, *,
                 reserved_delta: float = 0.0) -> ClaimDecision:
    """Decide whether ``(claim_eps, claim_delta)`` is implied by ``schedule``.

    Args:
        schedule: the mechanism, as rebuilt from the certificate (``Schedule.from_dict``).
        claim_eps, claim_delta: the certificate's claim.
        reserved_delta: the part of ``claim_delta`` another source of error already takes (the noise
            sampler's misplaced mass, docs/theory.md#floating-point-and-randomness): the mechanism must fit
            in the rest. Gradient clipping's ε is then computed at that smaller δ.

    Returns:
        A :class:`ClaimDecision`; its ``detail`` prints what was claimed and what was recomputed, e.g.
        ``claimed eps 1.0 < recomputed 1.0042 (delta 1e-05, alpha 12.7)``.
    """
    if reserved_delta:
        claim_delta = float(claim_delta) - float(reserved_delta)
        schedule = dataclasses.replace(schedule, target=dataclasses.replace(schedule.target, delta=claim_delta))
    rec = guarantee(schedule)
    near = [name for name, claimed, value in (("eps", claim_eps, rec.eps), ("delta", claim_delta, rec.delta))
            if _near(claimed, value)]
    exact = bool(near)
    if exact:
        rec = guarantee(schedule, exact=True)
    extras = []
    if rec.alpha is not None:
        extras.append(f"alpha {rec.alpha:.4g}")
    if rec.eps_renyi is not None:
        extras.append(f"eps_renyi {rec.eps_renyi:.6g}")
    if rec.log_delta is not None and rec.delta < 1e-300:
        extras.append(f"ln delta {rec.log_delta:.6g}")
    tail = (f" [float64 {' and '.join(near)} within {NEAR_TIE_RTOL:g} of the claim: decided with mpmath]"
            if exact else "")
    if rec.eps > claim_eps:
        inner = ", ".join([f"delta {rec.delta:.6g}", *extras])
        detail = f"claimed eps {_claimed(claim_eps, rec.eps)} < recomputed {_fmt(rec.eps, claim_eps)} ({inner}){tail}"
        return ClaimDecision(False, rec, exact, detail)
    if rec.delta > claim_delta:
        inner = ", ".join([f"eps {rec.eps:.6g}", *extras])
        detail = (f"claimed delta {_claimed(claim_delta, rec.delta)} < recomputed {_fmt(rec.delta, claim_delta)} "
                  f"({inner}){tail}")
        return ClaimDecision(False, rec, exact, detail)
    inner = "; ".join(extras)
    detail = (f"claimed (eps {_claimed(claim_eps, rec.eps)}, delta {_claimed(claim_delta, rec.delta)}) >= recomputed "
              f"(eps {_fmt(rec.eps, claim_eps)}, delta {_fmt(rec.delta, claim_delta)}"
              f"{'; ' + inner if inner else ''}){tail}")
    return ClaimDecision(True, rec, exact, detail)
