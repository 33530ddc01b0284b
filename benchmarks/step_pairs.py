"""The batch- and model-clipped noisy steps against their floor, step by step (paired).

``step_cost.py --interleaved`` times a whole row, then its floor; on a shared machine whose speed drifts
by tens of percent within seconds, the two can still land in different moments. Here every noisy step
of the torch backend is paired with one floor step timed just before it in the same process: a plain
SGD step (zero_grad, forward, backward, update) on a copy of the model and one draw of ``d`` Gaussians
by the run's keyed sampler, made as the run makes its draws (``step_cost.floor_draw``: into a reused
host buffer, then to the device). Each pair gives a ratio; the table reports the median over all pairs of
``--runs`` runs and its quartiles. The first pair of each run (warm-up) is dropped. CPU time of this
process, one thread (step_cost.py's clock).

    OMP_NUM_THREADS=1 python benchmarks/step_pairs.py --models mlp,cnn --steps 40 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_cost as sc

import certun
from certun.backends import UnsafeNoiseWarning, get_backend


@contextlib.contextmanager
def floor_before_each_step(model: nn.Module, X: torch.Tensor, y: torch.Tensor, d: int,
                           device: torch.device) -> Iterator[list[tuple[float, float]]]:
    """Within: each noisy step of the torch backend is preceded by one timed floor step; yields the
    ``(noisy step, floor step)`` times, one pair per step."""
    from certun.backends.torch._run import TorchRun

    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    draw, clock, saved = sc.floor_draw(d, device), sc._clock(device), TorchRun.progress
    pairs: list[tuple[float, float]] = []

    def progress(self: TorchRun, steps: range, desc: str) -> Iterator[int]:
        for t in saved(self, steps, desc):
            sc._sync(device)
            a = clock()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(X), y).backward()
            opt.step()
            draw(t)
            sc._sync(device)
            b = clock()
            yield t
            sc._sync(device)
            pairs.append((clock() - b, b - a))

    TorchRun.progress = progress
    try:
        yield pairs
    finally:
        TorchRun.progress = saved


def paired_ratios(name: str, steps: int, runs: int, batch: int, device: torch.device,
                  quick: bool = False) -> list[dict]:
    """One row per batch-clipped configuration of model ``name``: the median ratio over its pairs, with quartiles."""
    build, make_x = sc.builders(quick)[name]
    base, d, X, y = sc._setup(build, make_x, batch, device)
    rows = []
    for label, clip, make in sc.configurations(steps):
        if clip != "batch":
            continue
        ratios, floors = [], []
        for i in range(runs + 1):  # the first run warms up and is not counted
            with warnings.catch_warnings(), floor_before_each_step(sc.build_copy(base), X, y, d, device) as pairs:
                warnings.simplefilter("ignore", UnsafeNoiseWarning)
                get_backend("torch").unlearn(sc.build_copy(base), [(X, y)], make(), loss_fn=F.cross_entropy,
                                             clip="batch", seed=0, device=device, progress=False,
                                             postprocess="none", inplace=True)
            if i:
                ratios += [step / floor for step, floor in pairs[1:]]
                floors += [floor for _, floor in pairs[1:]]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        row = dict(model=name, d=d, variant=label, clip="batch", pairs=len(ratios),
                   floor_ms=statistics.median(floors) * 1e3, ratio_floor=statistics.median(ratios),
                   ratio_floor_q1=q[0], ratio_floor_q3=q[2])
        print(f"{name:12} {d:>10} {label:44} {row['pairs']:>6} {row['floor_ms']:>10.3f} {row['ratio_floor']:>8.3f} "
              f"{q[0]:>6.3f}-{q[2]:.3f}")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated subset of cnn,mlp,resnet18,transformer")
    parser.add_argument("--steps", type=int, default=40, help="noisy steps per run (>= 3)")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration, after one warm-up run (>= 1)")
    parser.add_argument("--batch", type=int, default=32, help="batch size")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="step_cost.py's small models (a smoke run)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error(f"--steps must be at least 3 (the first pair of a run is dropped), got {args.steps}")
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    device = torch.device(args.device)
    models = sc.builders(args.quick)
    if device.type == "cpu":
        torch.set_num_threads(1)
    print(f"device={device} torch={torch.__version__} certun={certun.__version__} batch={args.batch} "
          f"steps={args.steps} runs={args.runs}")
    print(f"{'model':12} {'d':>10} {'variant (batch clipping)':44} {'pairs':>6} {'floor ms':>10} {'x floor':>8} "
          f"{'q1-q3':>13}")
    rows = []
    for name in args.models.split(","):
        if name not in models:
            parser.error(f"unknown model {name!r}; choose from {', '.join(models)}")
        rows += paired_ratios(name, args.steps, args.runs, args.batch, device, args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=str(device), torch=torch.__version__, batch=args.batch,
                                                   steps=args.steps, runs=args.runs, rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
