"""Which games an audit plays: the schedule under test, and controls that show the test has power.

A control is the same setting with a known defect of the authors' released code (docs/theory.md#authors-code):

- ``under_noised`` (gradient clipping): σ chosen so that the Rényi coefficient ε_R equals the claimed
  ε (docs/theory.md#authors-code; about 5.7× too little σ at (1, 1e-5), true ε ≈ 7.08);
- ``reuse_noise`` (model clipping, noise after projection): one noise draw added at every step
  (docs/theory.md#authors-code).

A control must be *detected* (ε̂ > claimed ε); the schedule itself must *pass*. Reused noise is not a
control for gradient clipping: with λ = 0 it multiplies the noise along the canary direction by
``√T`` (``Tσ`` instead of ``√T·σ``), so the worst-case game cannot see it.
"""

from __future__ import annotations

from dataclasses import dataclass

from certun.accountant import Mode, Schedule, Variant, plan
from certun.audit.game import GameResult, derive_seed, play, under_noised
from certun.errors import InvalidParameterError

__all__ = ["Case", "CaseResult", "AuditReport", "quick_cases", "cases_for", "run_cases", "QUICK_N_RUNS"]

#: Runs per start in ``certun audit --quick`` (each game takes well under a second on one CPU core).
QUICK_N_RUNS = 100_000


@dataclass(frozen=True)
class Case:
    """One game to play: a label, the schedule, the noise mode, and the defect if it is a control."""

    label: str
    schedule: Schedule
    noise_mode: str = "fresh"
    control: str | None = None

    @property
    def is_control(self) -> bool:
        """True for a deliberately broken case that must be detected."""
        return self.control is not None


@dataclass(frozen=True)
class CaseResult:
    """A case and its game's outcome; ``ok`` means pass for a real case and detected for a control.

    ``refusal`` is set (and ``result`` is ``None``) when the real backend refused to run a control
    to completion: it recomputes the guarantee before issuing a certificate, so a lying schedule (the
    under-noised control) raises instead of producing runs. The game then never ran, so the control
    is *not run*: it shows nothing about the audit's power and never counts as detected.
    """

    case: Case
    result: GameResult | None
    refusal: str | None = None

    @property
    def detected(self) -> bool:
        """ε̂ exceeded the claim (a case that did not run detected nothing)."""
        return self.result is not None and self.result.detected

    @property
    def ok(self) -> bool:
        """Pass (not detected) for a real case; detected for a control (a control that did not run is not ok)."""
        return self.detected == self.case.is_control

    @property
    def verdict(self) -> str:
        """``pass``/``FAIL`` for a real case; ``detected``/``NOT DETECTED``/``not run (refused by backend)``
        for a control."""
        if self.refusal is not None:
            return "not run (refused by backend)"
        if self.case.is_control:
            return "detected" if self.detected else "NOT DETECTED"
        return "FAIL" if self.detected else "pass"


@dataclass(frozen=True)
class AuditReport:
    """The outcome of an audit: every case, and the verdicts.

    ``refuted`` is true when some real (non-control) case has ε̂ > its claimed ε: the implementation
    or the accounting is wrong, at the stated confidence. ``powerless`` is true when some control
    was not detected or not run: the audit's power is not shown.
    """

    results: tuple[CaseResult, ...]
    seed: int

    @property
    def refuted(self) -> bool:
        """Some real case's claim was refuted."""
        return any(r.detected for r in self.results if not r.case.is_control)

    @property
    def powerless(self) -> bool:
        """Some control was not detected (or not run)."""
        return any(not r.detected for r in self.results if r.case.is_control)

    @property
    def exit_code(self) -> int:
        """0: every real case passed and every control was detected; 1: a claim was refuted;
        3: no claim refuted but a control went undetected or did not run (power not shown)."""
        if self.refuted:
            return 1
        return 3 if self.powerless else 0

    def to_dict(self) -> dict:
        """A JSON-ready summary."""
        return {
            "seed": self.seed, "refuted": self.refuted, "powerless": self.powerless, "exit_code": self.exit_code,
            "cases": [{"label": r.case.label, "control": r.case.control, "verdict": r.verdict, "refusal": r.refusal,
                       **(r.result.to_dict() if r.result is not None else {})} for r in self.results],
        }


def cases_for(schedule: Schedule, *, controls: bool = True, label: str | None = None) -> tuple[Case, ...]:
    """The schedule as a real case, followed by its variant's control when ``controls``.

    Gradient clipping gets the under-noised control, model clipping (noise after projection) the
    reused-noise one. Output perturbation and model clipping's clipped mode get none: there a
    reused draw pushes both worst-case chains to the *same* boundary point ``C2·sign(ξ)``, so the
    game cannot see it (measured ε̂ ≈ 0.06 at N = 100 000), and σ is not from a Rényi conversion.
    """
    name = label or schedule.variant.value
    out = [Case(name, schedule)]
    if controls and schedule.variant is Variant.GRADIENT_CLIPPING:
        out.append(Case(f"{name}/under-noised", under_noised(schedule), control="sigma from eps_R = eps"))
    elif (controls and schedule.variant is Variant.MODEL_CLIPPING
          and schedule.mode is Mode.NOISE_AFTER_PROJECTION):
        out.append(Case(f"{name}/reused-noise", schedule, noise_mode="reuse_first_draw_UNSAFE",
                        control="one noise draw reused at every step"))
    return tuple(out)


def quick_cases() -> tuple[Case, ...]:
    """The ``--quick`` suite at (ε, δ) = (1, 1e-5): small settings where a defect shows in a CPU second.

    Gradient clipping ``C0 = C1 = 1, γ = 0.1, T = 10`` (exact σ); model clipping ``C0 = C2 = 1,
    σ = 0.5`` (T from the recursion, 40); output perturbation ``C0 = 1``. Few steps and a large γC1/C0
    keep the drift visible; ``2·C2/σ = 4`` leaves a reused draw a visible one-step shift.
    """
    gc = plan(1.0, 1e-5, 1.0, 1.0, gamma=0.1, T=10)
    mc = plan(1.0, 1e-5, 1.0, variant="model_clipping", C2=1.0, sigma=0.5)
    op = plan(1.0, 1e-5, 1.0, variant="output_perturbation")
    return (*cases_for(gc, label="gc"), *cases_for(mc, label="mc"), *cases_for(op, label="op"))


def run_cases(cases: tuple[Case, ...], *, n_runs: int, confidence: float, seed: int, **game_options) -> AuditReport:
    """Play every case with its own seed derived from ``seed``; collect an :class:`AuditReport`."""
    results = []
    for i, case in enumerate(cases):
        try:
            result = play(case.schedule, n_runs=n_runs, confidence=confidence, seed=derive_seed(seed, i),
                          noise_mode=case.noise_mode, label=case.label, **game_options)
        except InvalidParameterError as exc:
            # only the real backend refuses a lying control (at certificate issuance); anything else is an error
            if not (case.is_control and game_options.get("runner") == "backend" and exc.name == "schedule"):
                raise
            results.append(CaseResult(case, None, refusal=str(exc)))
            continue
        results.append(CaseResult(case, result))
    return AuditReport(tuple(results), seed)
