"""The routes of docs/choosing.md measured end to end: each deletion served, certified and verified.

On docs/results.md's setup (Fashion-MNIST, 10,000 train / 2,000 validation / 5,000 test, MLP 784–128–10,
plain SGD, batch 64, lr 0.03, 20 epochs), for each seed and forget set (a random 10 % of train, and one
record), every route serves the same request from the same trained model and ends in a certificate that
``certun.verify`` checks against the released model:

* gradient clipping, model clipping, output perturbation at (ε, δ) = (1, 1e-5), T = 1, C0 = 4 × the
  fresh-init norm (docs/results.md's ε = 1 choices), then fine-tuning with retraining's budget;
* retrain from scratch, and retrain from public weights (pretrained on 10,000 records outside
  train / validation / test), both ``variant="retrain"``, same budget;
* SISA (5 shards × 5 slices, cumulative stages, the same SGD and epochs per stage), trained once per seed.

    OMP_NUM_THREADS=1 python benchmarks/routes.py --seeds 0 1 2       # the docs/choosing.md table
    python benchmarks/routes.py --quick                                # digits, 2 epochs: seconds

It prints a markdown table per forget set (``--json`` also writes every run) and exits 1 if any
certificate failed to verify. CPU seconds are process time on ``--threads`` torch threads (default 1):
indicative only; per-sample gradient evaluations are the comparable measure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # the repro_* helpers live beside this script
    sys.path.insert(0, str(_HERE))

import torch  # noqa: E402
from repro_experiments import Bench, Settings, quick_settings  # noqa: E402
from repro_train import accuracy  # noqa: E402
from routes_run import (  # noqa: E402
    DELTA,
    EPS,
    NOISY,
    RouteResult,
    fit_sisa,
    make_case,
    noisy_route,
    public_model,
    retrain_route,
    sisa_route,
)

__all__ = ["SCENARIOS", "main", "markdown", "run"]

SCENARIOS = {"random10": "random 10 % of train", "one": "one random record"}
ROUTE_ORDER = (*NOISY.values(), "retrain from scratch", "retrain from public weights", "SISA")


def _settings(quick: bool) -> tuple[Settings, tuple[int, int]]:
    """docs/results.md's Fashion-MNIST MLP setup (lr 0.03, its validation choice) and SISA's (S, R)."""
    if quick:
        return replace(quick_settings("digits"), n_public=300), (2, 2)
    return Settings(lr_grid=(0.03,), n_public=10_000), (5, 5)


def run(settings: Settings, seeds: list[int], scenarios: list[str], sisa_grid: tuple[int, int],
        log=print) -> dict:
    """Every route on every seed and forget set; a JSON-ready dict of the runs and the training-time facts."""
    bench = Bench(settings)
    results: list[RouteResult] = []
    training: list[dict] = []
    for seed in seeds:
        start = time.process_time()
        original = bench.original(seed)
        public = public_model(bench, seed)
        sisa, sisa_cpu = fit_sisa(bench, seed, *sisa_grid)
        training.append({"seed": seed, "original_acc": accuracy(original, bench.splits.test),
                         "public_acc": accuracy(public, bench.splits.test), "sisa_acc": accuracy(sisa.ensemble,
                                                                                               bench.splits.test),
                         "sisa_grads": sisa.gradient_evaluations, "sisa_cpu_s": sisa_cpu,
                         "single_grads": settings.epochs * len(bench.splits.train)})
        log(f"seed {seed}: trained the original, the public model and SISA in {time.process_time() - start:.0f} "
            "CPU s")
        for scenario in scenarios:
            case = make_case(bench, seed, scenario)
            runs = [noisy_route(case, m) for m in NOISY]
            runs += [retrain_route(case, bench.fresh(10_000 + seed), public=False),
                     retrain_route(case, public, public=True), sisa_route(case, sisa)]
            results.extend(runs)
            log(f"seed {seed}, {scenario}: " + "; ".join(f"{r.route} {r.acc_final:.3f}"
                                                         f"{'' if r.verified else ' NOT VERIFIED'}" for r in runs))
    return {"settings": settings.to_dict(), "seeds": seeds, "scenarios": scenarios, "sisa": list(sisa_grid),
            "n": {"train": len(bench.splits.train), "test": len(bench.splits.test),
                  "public": len(bench.splits.public)},
            "d": bench.d, "lr": bench.lr, "training": training, "runs": [asdict(r) for r in results]}


def _mean(values: list[float], fmt: str = ".3f") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def _to_98(run: dict, retrain: dict) -> float | None:
    """Epoch-equivalents at which ``run`` first reaches 98 % of the retraining's final accuracy (docs/results.md:
    the mean of its last three epochs), or None."""
    final = statistics.mean(retrain["curve_acc"][-3:])
    for grads, acc in zip(run["curve_grads"], run["curve_acc"], strict=True):
        if acc >= 0.98 * final:
            return grads / run["n_retain"]
    return None


def _needs(route: str, results: dict) -> str:
    """What the route needs at training time, with what that cost (means over seeds)."""
    tr = results["training"]
    if route == "retrain from public weights":
        acc = _mean([t["public_acc"] for t in tr])
        return f"public weights ({results['n']['public']} public records; test acc. {acc})"
    if route == "SISA":
        S, R = results["sisa"]
        ratio = _mean([t["sisa_grads"] / t["single_grads"] for t in tr], ".2f")
        return (f"S × R = {S} × {R} models and checkpoints, training {ratio} × one training's grads; ensemble test "
                f"acc. {_mean([t['sisa_acc'] for t in tr])} before any deletion")
    return "nothing"


def _row(route: str, runs: list[dict], retrains: dict[int, dict], results: dict) -> str:
    eps, delta = runs[0]["eps"], runs[0]["delta"]
    guarantee = "(0, 0), exact" if eps == 0 and delta == 0 else f"({eps:.3g}, {delta:.2g})"
    verified = sum(r["verified"] for r in runs)
    to_98 = [_to_98(r, retrains[r["seed"]]) for r in runs if r["curve_acc"]]
    reached = [v for v in to_98 if v is not None]
    reach = _mean(reached, ".2f") + (f" ({len(reached)}/{len(to_98)})" if len(reached) < len(to_98) else "")
    grads = _mean([r["grads"] for r in runs], ".0f")
    epochs = _mean([r["grads"] / r["n_retain"] for r in runs], ".2f")
    start = [r["acc_start"] for r in runs if r["acc_start"] is not None]
    return (f"| {route} | {guarantee}; {verified}/{len(runs)} verify | {_needs(route, results)} | {grads} ({epochs}) | "
            f"{_mean([r['cpu_s'] for r in runs], '.2f')} | {reach if to_98 else '-'} | "
            f"{_mean(start) if route in NOISY.values() else '-'} | {_mean([r['acc_final'] for r in runs])} |")


def markdown(results: dict) -> str:
    """One table per forget set: guarantee, training-time needs, compute per request, accuracy after."""
    lines = []
    for scenario in results["scenarios"]:
        runs = [r for r in results["runs"] if r["scenario"] == scenario]
        retrains = {r["seed"]: r for r in runs if r["route"] == "retrain from scratch"}
        n_retain = _mean([r["n_retain"] for r in retrains.values()], ".0f")
        lines += [f"Forget set: {SCENARIOS[scenario]} (|retain| = {n_retain}; seeds {results['seeds']}; "
                  f"mean ± sd over seeds)", "",
                  "| route | guarantee (ε, δ); certificates | needs at training time | per-sample grads to serve "
                  "(epoch-eq.) | CPU s | epoch-eq. to 98 % of retrain final | test acc. after noisy phase | "
                  "test acc. final |", "|---|---|---|---|---|---|---|---|"]
        lines += [_row(route, [r for r in runs if r["route"] == route], retrains, results)
                  for route in ROUTE_ORDER if any(r["route"] == route for r in runs)]
        lines.append("")
    original = _mean([t["original_acc"] for t in results["training"]])
    lines.append(f"Original model (trained on all {results['n']['train']} training records): test acc. {original}; "
                 f"d = {results['d']}, lr {results['lr']:g}, target (ε, δ) = ({EPS:g}, {DELTA:g}).")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits, 300 train records, 2 epochs, S × R = 2 × 2")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds (default 0)")
    p.add_argument("--forget", nargs="+", choices=tuple(SCENARIOS), default=list(SCENARIOS),
                   help="forget sets (default both)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--json", type=Path, default=None, help="also write every run to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run, print the tables; 0 when every certificate verified, 1 otherwise."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    settings, grid = _settings(args.quick)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Opacus' secure-RNG warning does not concern these runs: the noise comes from the backend's own generator
        warnings.filterwarnings("ignore", message=".*[Ss]ecure.*RNG.*")
        results = run(settings, args.seeds, args.forget, grid, log=lambda m: print(m, file=sys.stderr, flush=True))
    results["command"] = "python benchmarks/routes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["wall_s"] = time.perf_counter() - started
    print(markdown(results))
    print(f"\n{results['command']}: {results['wall_s']:.0f} s wall, {args.threads} torch thread(s)")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, allow_nan=False))
    failed = [r for r in results["runs"] if not r["verified"]]
    for r in failed:
        print(f"certificate did NOT verify: {r['route']}, seed {r['seed']}, {r['scenario']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
