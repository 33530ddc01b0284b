"""``certun demo``: the main job end to end on real data (train, unlearn with a certificate, retrain, verify).

Parses the options into a :class:`certun.demo.DemoConfig` (refused before any data is read) and runs
:func:`certun.demo.run_demo`; exit 0 only if the certificate verifies. See docs/tutorial.md.
"""

from __future__ import annotations

import argparse
from typing import Any

from certun.accountant import MAX_DELTA, MAX_EPS, MAX_SCALE, MIN_DELTA, MIN_SCALE
from certun.demo import CENTERS, CLIPS, OUTPUTS, ROUTES, VARIANTS, DemoConfig, run_demo
from certun.errors import InvalidParameterError

__all__ = ["register"]

def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo",
        help="train a model on Fashion-MNIST, unlearn 10%% of its training data with a certificate, verify it",
        description="The main job end to end: train, plan at (eps, delta), unlearn with the torch backend, "
        "retrain from scratch for comparison, write unlearned.pt, certificate.json, report.md and report.png, "
        "verify the certificate and print a summary. See docs/tutorial.md.",
    )
    p.add_argument("--route", choices=ROUTES, default="noisy",
                   help="noisy (default: the paper's noisy fine-tuning, certified (eps, delta)); retrain-public "
                   "(exact retraining on the retain data from weights pretrained on the public split); sisa "
                   "(a SISA ensemble that retrains only the shards holding the forget set); the exact routes "
                   "achieve (0, 0) and refuse the noisy route's options (--variant, --clip, --C0, --T, "
                   "--noise-seed)")
    p.add_argument("--variant", choices=VARIANTS,
                   help="unlearning algorithm (default gradient_clipping; noisy route only)")
    p.add_argument("--eps", type=float, default=1.0, help=f"target epsilon, in (0, {MAX_EPS:g}] (default 1)")
    p.add_argument("--delta", type=float, default=1e-5,
                   help=f"target delta, in [{MIN_DELTA:g}, {MAX_DELTA:g}] (default 1e-5)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--forget-fraction", type=float, default=0.1, dest="forget_fraction",
                       help="share of the training set to forget, in (0, 1), chosen at random (default 0.1)")
    group.add_argument("--forget-class", type=int, dest="forget_class",
                       help="forget every training record of class K (a label >= 0)")
    p.add_argument("--out", default="certun-demo",
                   help="output folder (default ./certun-demo), created if missing; an existing folder is reused "
                   "and only the files the demo writes (" + ", ".join(OUTPUTS) + ") are replaced; an existing "
                   "file or an unwritable path is refused before any work")
    p.add_argument("--quick", action="store_true", help="tiny subset and budget: a smoke test in seconds")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of splits, initialisation and data order, an integer >= 0 (default 0)")
    p.add_argument("--noise-seed", type=int, dest="noise_seed",
                   help="noise seed in [0, 2**63) (default: drawn from the OS; giving one makes the run "
                   "reproducible, demo only)")
    p.add_argument("--data", choices=("auto", "fashion-mnist", "digits"), default="auto",
                   help="auto: Fashion-MNIST if installed, else scikit-learn's digits")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default auto: CUDA when available)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="small MLP (default) or CNN with GroupNorm")
    p.add_argument("--center", choices=CENTERS,
                   help="centre of the balls: zero (default, the paper's), init (the original's initialisation), "
                   "public (weights pretrained on a public split disjoint from D)")
    p.add_argument("--clip", choices=CLIPS,
                   help="gradient clipping granularity (default per_sample; noisy route only)")
    p.add_argument("--C0", type=float, help=f"override the starting-ball radius, in [{MIN_SCALE:g}, {MAX_SCALE:g}] "
                   "(default: see docs/tutorial.md)")
    p.add_argument("--T", type=int, help="override the number of noisy steps, an integer >= 1 (default 200; "
                   "--quick 20)")
    p.add_argument("--finetune-epochs", type=int, dest="finetune_epochs",
                   help="noiseless fine-tuning epochs, an integer >= 1, also the retraining budget (default 3; "
                   "--quick 1)")
    p.add_argument("--shards", type=int, help="SISA shards S, an integer >= 1 (default 5; --route sisa only)")
    p.add_argument("--slices", type=int, help="SISA slices R per shard, an integer >= 1 (default 5; --route sisa only)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads, an integer >= 1 (default 1: these small models gain little from more, "
                   "and a busy "
                   "machine loses a lot to oversubscribed OpenMP threads)")
    p.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bars")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    """Build the configuration from the arguments, run the demo, exit 0 only if the certificate verifies."""
    _refuse_options_of_other_routes(args)
    center = args.center or ("public" if args.route == "retrain-public" else "zero")
    options: dict[str, Any] = dict(variant=args.variant or "gradient_clipping", eps=args.eps, delta=args.delta,
                                   forget_fraction=args.forget_fraction, forget_class=args.forget_class,
                                   data=args.data, model=args.model, center=center,
                                   clip=args.clip or "per_sample", seed=args.seed, noise_seed=args.noise_seed,
                                   device=args.device, C0=args.C0, T=args.T, route=args.route)
    for name in ("finetune_epochs", "shards", "slices"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    config = DemoConfig.quick_defaults(**options) if args.quick else DemoConfig(**options)
    if isinstance(args.threads, bool) or args.threads < 1:
        raise InvalidParameterError("threads", args.threads, "an integer >= 1")
    import torch

    torch.set_num_threads(args.threads)  # the CLI process's own setting; run_demo itself leaves it alone
    result = run_demo(config, args.out, progress=args.progress,
                      echo=lambda line: print(line, flush=True))
    return 0 if result.verification.ok else 1


#: Options given on the command line that a route does not read; DemoConfig refuses the rest.
_NOT_READ = {"noisy": ("shards", "slices"), "retrain-public": ("variant", "clip", "shards", "slices"),
             "sisa": ("variant", "clip", "center", "finetune_epochs")}


def _refuse_options_of_other_routes(args: argparse.Namespace) -> None:
    """An option the route does not read is refused (even at its default value), never silently dropped."""
    for name in _NOT_READ[args.route]:
        value = getattr(args, name)
        if value is not None:
            raise InvalidParameterError(name, value, f"omitted with --route {args.route}",
                                        hint="this route does not read it; see certun demo --help")
    if args.route == "retrain-public" and args.center not in (None, "public"):
        raise InvalidParameterError("center", args.center, "omitted (or public) with --route retrain-public",
                                    hint="this route always starts from the public weights")
