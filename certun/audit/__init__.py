"""Empirical audit of an unlearning guarantee: a lower bound on the ε the running code achieves.

:func:`audit` plays the worst-case-start game (:mod:`certun.audit.game`) for a schedule and its
controls, and turns the scores into an ε lower bound with an exact confidence statement
(:mod:`certun.audit.stats`). :mod:`certun.audit.canary` is a black-box, one-run canary audit of a whole
train-then-unlearn pipeline (much looser). ``certun audit`` is the command line. See docs/audit.md.
"""

from __future__ import annotations

from certun.accountant import Schedule
from certun.audit.game import NOISE_MODES, GameResult, play, run_chains, under_noised
from certun.audit.stats import EpsilonBound, clopper_pearson_lower, clopper_pearson_upper, eps_lower_bound
from certun.audit.suite import QUICK_N_RUNS, AuditReport, Case, CaseResult, cases_for, quick_cases, run_cases

__all__ = [
    "NOISE_MODES",
    "QUICK_N_RUNS",
    "AuditReport",
    "Case",
    "CaseResult",
    "EpsilonBound",
    "GameResult",
    "audit",
    "cases_for",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "eps_lower_bound",
    "play",
    "quick_cases",
    "run_chains",
    "under_noised",
]


def audit(
    schedule: Schedule | None = None,
    *,
    controls: bool = True,
    n_runs: int = QUICK_N_RUNS,
    confidence: float = 0.95,
    seed: int | None = None,
    select: str = "bonferroni",
    d: int = 1,
    device: str | None = None,
    runner: str = "batched",
) -> AuditReport:
    """Audit ``schedule`` (or, when ``None``, the ``--quick`` suite) with the worst-case-start game.

    Each case is played with ``n_runs`` runs per start and its own seed derived from ``seed`` (drawn
    fresh and recorded in the report when ``None``). Every real case's ε̂ holds at ``confidence``
    on its own: with probability ≥ ``confidence``, a correct implementation of a correct schedule
    gives ε̂ ≤ its claimed ε. With k real cases the chance that *any* false alarm occurs is at most
    ``k·(1 − confidence)``.

    Args:
        schedule: the planned schedule to audit; its target (ε, δ) is the claim tested.
        controls: also play the variant's control (under-noised σ for gradient clipping, reused
            noise for model clipping), which must be detected.
        n_runs, confidence, select, d, device, runner: passed to :func:`certun.audit.game.play`
            (``runner="backend"`` runs every chain through ``get_backend("torch").unlearn``: slow).

    Returns:
        An :class:`AuditReport` (``refuted``, ``powerless``, ``exit_code``, per-case results).
    """
    from certun.audit.game import resolve_seed

    cases = quick_cases() if schedule is None else cases_for(schedule, controls=controls)
    return run_cases(cases, n_runs=n_runs, confidence=confidence, seed=resolve_seed(seed), select=select, d=d,
                     device=device, runner=runner)
