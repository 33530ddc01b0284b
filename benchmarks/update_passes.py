"""What the fused noisy update costs, pass by pass, against the float32 SGD update it replaces.

The fused step (``certun.backends.torch._fused``) runs each variant's update as a few passes of
elementwise torch operations over blocks of the float64 master. This script times, at one ``d`` and with
the step_cost.py MLP's parameter sizes by default, in interleaved rounds (so a machine whose speed drifts
hits every row alike):

* each elementwise operation the updates are made of, alone, over the same blocks;
* the three fused updates (batch gradient as float32 pieces, as autograd leaves it);
* the float32 update of ``torch.optim.SGD`` (``p -= lr·g`` per parameter), which is all a plain SGD step
  spends on its parameters.

Medians of the process's CPU time over the rounds, one torch thread::

    OMP_NUM_THREADS=1 python benchmarks/update_passes.py --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from certun.backends.torch._fused import FusedStep

#: step_cost.py's MLP (784 -> 3072 -> 2560 -> 10): weight and bias sizes, d = 10 304 010.
MLP_SIZES = (784 * 3072, 3072, 3072 * 2560, 2560, 2560 * 10, 10)


def rows(sizes: tuple[int, ...], seed: int = 0) -> dict[str, Callable[[], object]]:
    """Row label -> one timed call, on random data of the given parameter sizes."""
    gen = torch.Generator().manual_seed(seed)
    d = sum(sizes)
    pieces = [torch.randn(n, generator=gen) for n in sizes]
    x = torch.randn(d, dtype=torch.float64, generator=gen)
    z = torch.randn(d, dtype=torch.float64, generator=gen)
    params = x.to(torch.float32)
    step = FusedStep(sizes, torch.device("cpu"))
    blocks = [(b.start, b.stop, b.pieces) for b in step.blocks]
    work = torch.empty(step.block, dtype=torch.float64)
    grads = [p.clone() for p in pieces]
    weights = [torch.zeros(n) for n in sizes]

    def each(op: Callable[[int, int, tuple], object]) -> Callable[[], None]:
        def over_blocks() -> None:
            for lo, hi, ps in blocks:
                op(lo, hi, ps)
        return over_blocks

    def sgd() -> None:  # torch.optim.SGD's update on a CPU (no foreach there by default): p -= lr * g
        for w, g in zip(weights, grads, strict=True):
            w.add_(g, alpha=-1e-30)

    def widen(lo: int, hi: int, ps: tuple) -> torch.Tensor:
        for i, a, b, at in ps:
            work[at:at + b - a].copy_(pieces[i][a:b])
        return work[: hi - lo]

    kw = dict(gamma=1e-3, lam=0.0, sigma=1e-3)
    return {
        "widen the gradient (float32 -> float64)": each(widen),
        "norm of a block (vector_norm)": each(lambda lo, hi, ps: torch.linalg.vector_norm(work[: hi - lo])),
        "scale the gradient (mul_)": each(lambda lo, hi, ps: work[: hi - lo].mul_(0.5)),
        "x += alpha * gradient (add_)": each(lambda lo, hi, ps: x[lo:hi].add_(work[: hi - lo], alpha=-1e-30)),
        "x += sigma * z (add_)": each(lambda lo, hi, ps: x[lo:hi].add_(z[lo:hi], alpha=1e-30)),
        "history sum of squares (dot)": each(lambda lo, hi, ps: torch.dot(x[lo:hi], x[lo:hi])),
        "round into the parameters (copy_)": each(lambda lo, hi, ps: params[lo:hi].copy_(x[lo:hi])),
        "fused: gradient clipping": lambda: step.gc(x, pieces, z, params, C1=1e-3, **kw),
        "fused: model clipping, noise after projection": lambda: step.mc_after(x, pieces, z, params, C2=1.0, **kw),
        "fused: model clipping, clip-noise-before-projection":
            lambda: step.mc_before(x, pieces, z, params, C1=1e-3, C2=1.0, **kw),
        "SGD's float32 update (add_ per parameter)": sgd,
    }


def measure(table: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median CPU seconds of each row over ``rounds`` interleaved rounds (after one warm-up call each)."""
    for call in table.values():
        call()
    times: dict[str, list[float]] = {label: [] for label in table}
    for _ in range(rounds):
        for label, call in table.items():
            t0 = time.process_time()
            call()
            times[label].append(time.process_time() - t0)
    return {label: statistics.median(t) for label, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (>= 1)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the MLP's parameter sizes by this (0 < scale <= 1; a smoke run uses 0.01)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    torch.set_num_threads(1)
    sizes = tuple(max(1, round(n * args.scale)) for n in MLP_SIZES)
    med = measure(rows(sizes), args.rounds)
    print(f"d={sum(sizes)} torch={torch.__version__} rounds={args.rounds} (one thread, CPU time, median)")
    print(f"{'row':56} {'ms':>9}")
    for label, seconds in med.items():
        print(f"{label:56} {seconds * 1e3:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
