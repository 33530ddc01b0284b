"""``certun plan``: calibrate σ or T from the command line and show exact against closed form."""

from __future__ import annotations

import argparse
import json
import math

from certun.accountant import Method, Variant, plan
from certun.accountant.planner import DEFAULT_GAMMA
from certun.errors import CertunError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``plan`` subcommand."""
    p = sub.add_parser(
        "plan",
        help="derive the noise sigma and the number of noisy steps T for an (eps, delta) target",
        description="Plan a certified unlearning run (THEORY.md §2-§4). Without --T or --sigma, T is "
        "chosen by the paper's rule and sigma calibrated exactly.",
    )
    p.add_argument("--eps", type=float, required=True, help="target epsilon (> 0)")
    p.add_argument("--delta", type=float, required=True, help="target delta in (0, 1)")
    p.add_argument("--C0", type=float, help="radius of the starting ball")
    p.add_argument("--C1", type=float, help="gradient clipping norm")
    p.add_argument("--C2", type=float, help="model clipping radius (model_clipping)")
    p.add_argument("--lam", type=float, default=0.0, help="regularisation lambda (default 0)")
    p.add_argument("--gamma", type=float, default=DEFAULT_GAMMA, help=f"step size (default {DEFAULT_GAMMA})")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--T", type=int, help="number of noisy steps: calibrate sigma for it")
    group.add_argument("--sigma", type=float, help="noise per step: calibrate T for it")
    p.add_argument("--sigma0", type=float, help="model clipping: noise after the initial projection")
    p.add_argument("--max-T", type=int, dest="max_T", help="compute budget: largest T allowed")
    p.add_argument("--variant", default=Variant.GRADIENT_CLIPPING.value, choices=[v.value for v in Variant])
    p.add_argument("--mode", help="model clipping mode: noise_after_projection | clip_noise_before_projection")
    p.add_argument("--method", default=Method.EXACT.value, choices=[m.value for m in Method])
    p.add_argument("--json", action="store_true", help="print schedule.to_dict() as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Plan, then print a table (or JSON)."""
    kwargs = dict(gamma=args.gamma, T=args.T, sigma=args.sigma, variant=args.variant, C2=args.C2,
                  mode=args.mode, sigma0=args.sigma0, method=args.method, max_T=args.max_T)
    if args.variant == Variant.OUTPUT_PERTURBATION.value:
        kwargs = dict(variant=args.variant, method=args.method)
    s = plan(args.eps, args.delta, args.C0, args.C1, args.lam, **kwargs)
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
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _other_method(args: argparse.Namespace, s) -> tuple[str, str] | None:
    """The closed-form σ beside the exact one (or vice versa), with their ratio."""
    if s.variant not in (Variant.GRADIENT_CLIPPING, Variant.OUTPUT_PERTURBATION) or args.sigma is not None:
        return None
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
