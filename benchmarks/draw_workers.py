"""Wall time of one keyed draw of ``d`` standard normals, split over 1..N worker threads.

The torch backend draws with ``torch.get_num_threads()`` workers (docs/backends.md, "The hot path").
The stream is positional, so every row gives the same bits (checked here); only the wall time changes.
Medians over ``--repeats`` draws, taken in turns::

    python benchmarks/draw_workers.py --d 10304010 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from certun.backends.noise import NoiseGenerator, fresh_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=10_304_010, help="coordinates per draw (>= 1)")
    parser.add_argument("--repeats", type=int, default=5, help="draws per row (>= 1)")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1, help="largest worker count (>= 1)")
    args = parser.parse_args(argv)
    for name in ("d", "repeats", "max_workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    gen, out = NoiseGenerator(fresh_key()), np.empty(args.d)
    counts = sorted({1, *range(2, args.max_workers + 1)})
    reference = gen.normal(0, args.d, workers=1)
    times: dict[int, list[float]] = {k: [] for k in counts}
    for _ in range(args.repeats):
        for k in counts:
            t0 = time.perf_counter()
            gen.normal(0, args.d, workers=k, out=out)
            times[k].append(time.perf_counter() - t0)
            if not np.array_equal(out, reference):
                raise SystemExit(f"the draw with {k} workers differs from the one-worker draw")
    print(f"d={args.d} cpus={os.cpu_count()} repeats={args.repeats} (wall time, median; same bits in every row)")
    print(f"{'workers':>8} {'ms':>10} {'speed-up':>9}")
    for k in counts:
        med = statistics.median(times[k])
        print(f"{k:>8} {med * 1e3:>10.1f} {statistics.median(times[1]) / med:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
