"""``certun plan``: calibrate σ or T from the command line and show exact against closed form."""

from __future__ import annotations

import argparse
import json
import math

from certun.accountant import (
    DEFAULT_GAMMA,
    MAX_DELTA,
    MAX_EPS,
    MAX_SCALE,
    MAX_STEPS,
    MIN_DELTA,
    MIN_SCALE,
    Method,
    Mode,
    Variant,
    forecast,
    plan,
)
from certun.errors import CertunError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plan`` subcommand."""
    scale = f"[{MIN_SCALE:g}, {MAX_SCALE:g}]"
    p = sub.add_parser(
        "plan",
        help="derive the noise sigma and the number of noisy steps T for an (eps, delta) target",
        description="Plan a certified unlearning run (docs/theory.md#gradient-clipping, #model-clipping, "
        "#output-perturbation). Without --T or --sigma, T is chosen by the paper's rule (with lam = 0: "
        f"T = C0/(gamma*C1), so the default gamma {DEFAULT_GAMMA:g} can mean thousands of steps) and sigma "
        "is calibrated exactly. Options that do not apply to the variant are refused. Exit codes: 0 planned, "
        "2 bad or infeasible input.",
    )
    p.add_argument("--eps", type=float, required=True, help=f"target epsilon, in (0, {MAX_EPS:g}]")
    p.add_argument("--delta", type=float, required=True, help=f"target delta, in [{MIN_DELTA:g}, {MAX_DELTA:g}]")
    p.add_argument("--C0", type=float, help=f"radius of the starting ball, in {scale} (every variant but retrain)")
    p.add_argument("--C1", type=float, help=f"gradient clipping norm, in {scale} (gradient_clipping; "
                   "model_clipping with --mode clip_noise_before_projection)")
    p.add_argument("--C2", type=float, help=f"model clipping radius, in {scale} (model_clipping)")
    p.add_argument("--lam", type=float, help="regularisation lambda >= 0 with gamma*lam < 1 (default 0; "
                   "noisy-step variants only)")
    p.add_argument("--gamma", type=float, help=f"step size of the noisy steps, in {scale} (default "
                   f"{DEFAULT_GAMMA:g}; noisy-step variants only)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--T", type=int, help=f"number of noisy steps, an integer in [1, {MAX_STEPS}]: "
                       "calibrate sigma for it")
    group.add_argument("--sigma", type=float, help=f"noise per step, in {scale}: calibrate T for it")
    p.add_argument("--sigma0", type=float, help=f"model_clipping: noise after the initial projection, in {scale}")
    p.add_argument("--max-T", type=int, dest="max_T", help=f"compute budget: the largest T allowed, an integer "
                   f"in [1, {MAX_STEPS}] (noisy-step variants only)")
    p.add_argument("--variant", default=Variant.GRADIENT_CLIPPING.value, choices=[v.value for v in Variant],
                   help="unlearning algorithm (default gradient_clipping)")
    p.add_argument("--mode", choices=[m.value for m in Mode],
                   help="model_clipping step form (default noise_after_projection)")
    p.add_argument("--method", default=Method.EXACT.value, choices=[m.value for m in Method],
                   help="exact calibration (default) or the paper's closed form, for comparison")
    p.add_argument("--d", type=int, help="number of unlearned parameters (an integer >= 1): also forecast whether "
                   "the noise erases the model (docs/theory.md#utility-limit), from public numbers only")
    p.add_argument("--json", action="store_true", help="print schedule.to_dict() as JSON")
    p.set_defaults(func=run)


#: Options passed to plan only when given, so that plan refuses those the variant does not use.
_OPTIONAL = ("lam", "gamma", "T", "sigma", "C2", "mode", "sigma0", "max_T")


def run(args: argparse.Namespace) -> int:
    """Plan, then print a table (or JSON)."""
    kwargs = {name: getattr(args, name) for name in _OPTIONAL if getattr(args, name) is not None}
    kwargs.update(variant=args.variant, method=args.method)
    lam = kwargs.pop("lam", 0.0)
    s = plan(args.eps, args.delta, args.C0, args.C1, lam, **kwargs)
    if args.json:
        print(json.dumps(s.to_dict(), indent=2, allow_nan=False))
        return 0
    rows = [("variant", s.variant.value)]
    if s.mode is not None:
        rows.append(("mode", s.mode.value))
    rows.append(("method", s.method.value))
    rows += [(k, f"{v:g}") for k, v in (("C0", s.C0), ("C1", s.C1), ("C2", s.C2)) if v is not None]
    if s.T:
        rows += [("lam", f"{s.lam:g}"), ("gamma", f"{s.gamma:g}")]
    rows.append(("T (noisy steps)", str(s.T)))
    if s.sigma is not None:
        rows.append(("sigma", f"{s.sigma:.10g}"))
    if s.sigma0 is not None:
        rows.append(("sigma0" if s.T else "sigma (output noise)", f"{s.sigma0:.10g}"))
    a = s.achieved
    rows.append(("target (eps, delta)", f"({s.target.eps:g}, {s.target.delta:g})"))
    rows.append(("achieved eps", f"{a.eps:.10g}"))
    rows.append(("achieved delta", f"{a.delta:.6g}" if a.delta > 0 or a.log_delta is None
                 else f"exp({a.log_delta:.6g})"))
    if a.eps_renyi is not None:
        rows.append(("Renyi coefficient eps_R", f"{a.eps_renyi:.6g} (alpha = {a.alpha:.4g})"))
    other = _other_method(args, s)
    if other is not None:
        rows.append(other)
    for note in s.notes:
        rows.append(("note", note))
    if args.d is not None:
        f = forecast(s, args.d)
        rows.append(("forecast", "retraining adds no noise: the model keeps what retraining learns" if f is None
                     else f.text))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _other_method(args: argparse.Namespace, s) -> tuple[str, str] | None:
    """The closed-form σ beside the exact one (or vice versa), with their ratio."""
    if s.variant not in (Variant.GRADIENT_CLIPPING, Variant.OUTPUT_PERTURBATION) or args.sigma is not None:
        return None
    if s.variant is Variant.OUTPUT_PERTURBATION and s.target.eps >= 1.0:
        return None  # the classic formula holds only for eps < 1; the note says so and quotes its value
    other = Method.CLOSED_FORM if s.method is Method.EXACT else Method.EXACT
    try:
        if s.variant is Variant.OUTPUT_PERTURBATION:
            o = plan(args.eps, args.delta, args.C0, variant=s.variant, method=other)
            mine, theirs = s.sigma0, o.sigma0
        else:
            o = plan(args.eps, args.delta, s.C0, s.C1, s.lam, gamma=s.gamma, T=s.T, method=other)
            mine, theirs = s.sigma, o.sigma
    except CertunError as exc:
        return (f"sigma ({other.value})", f"not available: {exc}")
    exact, closed = (mine, theirs) if s.method is Method.EXACT else (theirs, mine)
    ratio = closed / exact if exact and math.isfinite(closed) else math.nan
    return (f"sigma ({other.value})", f"{theirs:.10g}  (closed_form / exact = {ratio:.4f})")
