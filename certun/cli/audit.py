"""``certun audit``: measure a lower bound on the ε the running code achieves, with controls.

Exit codes: 0 when every real case passes and every control is detected; 1 when some real case has
ε̂ > its claimed ε (the claim is refuted at the stated confidence); 3 when nothing was refuted but a
control went undetected or did not run (the audit's power is not shown); 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from certun.accountant import DEFAULT_GAMMA, Schedule, Variant, plan
from certun.audit.game import RUNNERS
from certun.audit.stats import SELECTIONS
from certun.audit.suite import QUICK_N_RUNS, AuditReport
from certun.errors import CertificateFormatError, InvalidParameterError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``audit`` subcommand."""
    p = sub.add_parser(
        "audit",
        help="empirical audit: a statistical lower bound on eps for a schedule, with controls",
        description="Play the worst-case-start game (two starts 2*C0 apart, a canary loss pushing the runs "
        "apart, N runs from each start) on the planned schedule and bound eps from below with "
        "Clopper-Pearson confidence. With --quick: a tiny correct setting per variant and both controls.",
    )
    p.add_argument("--quick", action="store_true", help="the built-in suite: correct cases and both controls")
    p.add_argument("--schedule", type=Path, help="audit this schedule (JSON from `certun plan --json`)")
    p.add_argument("--variant", default=Variant.GRADIENT_CLIPPING.value,
                   choices=[v.value for v in Variant if v is not Variant.RETRAIN])
    p.add_argument("--eps", type=float, default=1.0, help="claimed epsilon (default 1)")
    p.add_argument("--delta", type=float, default=1e-5, help="claimed delta (default 1e-5)")
    p.add_argument("--C0", type=float, default=1.0, help="radius of the starting ball (default 1)")
    p.add_argument("--C1", type=float, help="gradient clipping norm (default 1 for gradient clipping)")
    p.add_argument("--C2", type=float, help="model clipping radius (default 1 for model clipping)")
    p.add_argument("--lam", type=float, default=0.0, help="regularisation lambda (default 0)")
    p.add_argument("--gamma", type=float, default=DEFAULT_GAMMA, help=f"step size (default {DEFAULT_GAMMA})")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--T", type=int, help="number of noisy steps (sigma calibrated for it)")
    group.add_argument("--sigma", type=float, help="noise per step (T calibrated for it)")
    p.add_argument("--sigma0", type=float, help="model clipping: noise after the initial projection")
    p.add_argument("--mode", help="model clipping mode: noise_after_projection | clip_noise_before_projection")
    p.add_argument("--N", type=int, default=QUICK_N_RUNS, dest="n_runs",
                   help=f"independent runs from each start (default {QUICK_N_RUNS})")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of each lower bound (default 0.95)")
    p.add_argument("--seed", type=int, help="seed of the game (default: fresh, printed)")
    p.add_argument("--select", default="bonferroni", choices=SELECTIONS,
                   help="threshold choice: a fixed grid with Bonferroni correction, or a held-out half")
    p.add_argument("--no-controls", action="store_true", help="skip the control case of the variant")
    p.add_argument("--d", type=int, default=1, help="dimension of the chains (default 1, the worst case)")
    p.add_argument("--device", help="torch device for the chains (default cpu)")
    p.add_argument("--runner", default="batched", choices=RUNNERS,
                   help="batched: all chains at once through the backend's step functions (fast); backend: one "
                   "real get_backend('torch').unlearn call per run (slow, end to end; use a small --N)")
    p.add_argument("--canary", action="store_true",
                   help="instead of the game: the black-box one-run canary audit of a tiny train-then-unlearn "
                   "pipeline (loose), with an unlearning-skipped control")
    p.add_argument("--m", type=int, default=64, help="canaries for --canary (default 64; m/4 guesses each way)")
    p.add_argument("--implementation", action="store_true",
                   help="instead of the game: check that this platform behaves as the proof assumes (noise key "
                   "space, sampler tails and moments, the disc test, positional noise, float64 on --device, norms "
                   "after clipping and projection at large d); PASS/FAIL table, exit 1 on any FAIL")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _schedule(args: argparse.Namespace) -> Schedule | None:
    if args.quick:
        return None
    if args.schedule is not None:
        try:
            data = json.loads(args.schedule.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CertificateFormatError(f"cannot read schedule {args.schedule}: {exc}") from exc
        return Schedule.from_dict(data)
    if args.variant == Variant.OUTPUT_PERTURBATION.value:
        return plan(args.eps, args.delta, args.C0, variant=args.variant)
    if args.variant == Variant.MODEL_CLIPPING.value:
        C2 = 1.0 if args.C2 is None else args.C2
        return plan(args.eps, args.delta, args.C0, args.C1, args.lam, gamma=args.gamma, T=args.T, sigma=args.sigma,
                    variant=args.variant, C2=C2, mode=args.mode, sigma0=args.sigma0)
    C1 = 1.0 if args.C1 is None else args.C1
    return plan(args.eps, args.delta, args.C0, C1, args.lam, gamma=args.gamma, T=args.T, sigma=args.sigma)


def run(args: argparse.Namespace) -> int:
    """Play the cases and print one line per case (or JSON); return the report's exit code."""
    from certun.audit import audit

    if args.canary:
        return _run_canary(args)
    if args.implementation:
        return _run_implementation(args)
    report = audit(_schedule(args), controls=not args.no_controls, n_runs=args.n_runs, confidence=args.confidence,
                   seed=args.seed, select=args.select, d=args.d, device=args.device,
                   runner=args.runner)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        print(format_report(report))
    return report.exit_code


def _claim(g) -> str:
    return f"({g.eps:.4g}, {g.delta:.3g})"


def format_report(report: AuditReport) -> str:
    """One line per case: ε̂, its confidence, runs per start, the claimed (ε, δ), the accountant's
    recomputation from the schedule's inputs, and the verdict; then a one-line summary."""
    rows = [("case", "eps_hat", "confidence", "N/start", "claimed (eps, delta)", "recomputed", "verdict")]
    for r in report.results:
        g = r.result
        if g is None:
            claim = r.case.schedule.target
            rows.append((r.case.label, "-", "-", "-", _claim(claim), "-", f"{r.verdict}: {r.refusal}"))
            continue
        rows.append((r.case.label, f"{g.bound.eps_lower:.3f}", f"{g.bound.confidence:.0%}", str(g.n_runs),
                     _claim(g.claimed), _claim(g.recomputed), r.verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if report.refuted:
        summary = "REFUTED: eps_hat exceeds the claimed eps for a real case"
    elif report.powerless and any(r.refusal is not None for r in report.results if r.case.is_control):
        summary = ("INCONCLUSIVE: a control was not run (the backend refused it), so the audit's power is not "
                   "shown; run the controls with --runner batched")
    elif report.powerless:
        summary = "INCONCLUSIVE: a control was not detected; raise --N"
    elif not any(r.case.is_control for r in report.results):
        summary = "ok: every case passed (no control for this variant, so the audit's power is not shown)"
    else:
        summary = "ok: every real case passed and every control was detected"
    lines.append(f"{summary} (seed {report.seed})")
    return "\n".join(lines)


def _run_canary(args: argparse.Namespace) -> int:
    """The one-run canary audit with the real backend, and the same pipeline with unlearning skipped."""
    from certun.audit.canary import canary_audit, tiny_torch_pipeline
    from certun.audit.game import derive_seed, resolve_seed

    schedule = _schedule(args)
    if schedule is None:
        schedule = plan(1.0, 1e-5, 10.0, 1.0, gamma=0.1, T=10)
    seed = resolve_seed(args.seed)
    k = max(1, args.m // 4)
    rows = []
    for i, (label, unlearn) in enumerate((("canary", True), ("canary/unlearning-skipped", False))):
        result = canary_audit(tiny_torch_pipeline(schedule, m=args.m, unlearn=unlearn, device=args.device), args.m,
                              k_in=k, k_out=k, delta=schedule.target.delta, confidence=args.confidence,
                              claimed_eps=schedule.target.eps, seed=derive_seed(seed, i))
        control = not unlearn
        verdict = ("detected" if result.detected else "NOT DETECTED") if control else (
            "FAIL" if result.detected else "pass")
        rows.append((label, control, verdict, result))
    if args.json:
        print(json.dumps({"seed": seed, "cases": [{"label": label, "control": control, "verdict": verdict,
                                                    **r.to_dict()} for label, control, verdict, r in rows]},
                         indent=2, allow_nan=False))
    else:
        for label, _, verdict, r in rows:
            print(f"{label:<26} eps_hat={r.eps_lower:.3f} ({r.confidence:.0%})  {r.correct}/{r.r} guesses right "
                  f"(p={r.tail:.3g} vs Binomial(r, 1/2))  claimed eps={r.claimed_eps:g}  {verdict}")
        print(f"one-run canary audit: loose by design, see docs/audit.md (seed {seed})")
    if any(verdict == "FAIL" for _, _, verdict, _ in rows):
        return 1
    return 3 if any(verdict == "NOT DETECTED" for _, _, verdict, _ in rows) else 0


def _run_implementation(args: argparse.Namespace) -> int:
    """The platform checks of :mod:`certun.audit.implementation` on ``--device`` (default cpu)."""
    from certun.audit.implementation import audit_implementation, format_implementation

    device = _implementation_device(args.device or "cpu")
    report = audit_implementation(device, quick=args.quick)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        print(format_implementation(report))
    return report.exit_code


def _implementation_device(name: str) -> str:
    """``cpu`` or an available CUDA device, else a typed error naming what is valid."""
    import torch

    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidParameterError("device", name, "cpu: CUDA is not available on this machine")
        try:
            torch.empty(0, device=name)
        except (RuntimeError, AssertionError) as exc:
            raise InvalidParameterError("device", name, f"cpu or cuda:0..cuda:{torch.cuda.device_count() - 1}",
                                        str(exc).splitlines()[0]) from None
        return name
    raise InvalidParameterError("device", name, "cpu or cuda[:N]")
