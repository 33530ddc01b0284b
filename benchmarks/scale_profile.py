"""Where one rank's noisy step spends its time, per layout: the local gradient, each collective, the draw, the
step-key hash, and the rest (the float64 vector work and Python around it).

Spawns W ranks (one torch thread each, ``gloo`` on CPU) like benchmarks/scale.py, on the same models and
global batch, and runs ``certun.unlearn(..., distributed=layout)`` with these timed in wall AND process
CPU time, per step:

- ``gradient``: the rank's forward and backward (the single-process gradient on its local batch; for
  ``fsdp`` the whole FSDP2 forward/backward, its own all-gathers and reduce-scatter included, and the
  shards' gradients cast to float64);
- ``collective: <what>``: every certun collective, by what it carries (the ranks' batches gathered
  to key the draw, the gradient all-reduce, the norms, the master's shards, the agreements);
- ``draw``: the keyed Gaussians (``NoiseGenerator.normal_torch``); ``step key``: the hash of the
  global batch that keys the draw;
- ``rest``: the step's time minus all of the above: clipping, the update, the projections, the
  statistics' norms, the master's copies into the model.

Each rank's medians over the steps after the first are printed, every rank, every layout. A
collective's wall time includes waiting for the slowest peer; its CPU time is the work of sending.

    OMP_NUM_THREADS=1 python benchmarks/scale_profile.py                    # W = 2, MLP, batch clipping
    OMP_NUM_THREADS=1 python benchmarks/scale_profile.py --worlds 1,2 --model cnn --clip model
    OMP_NUM_THREADS=1 python benchmarks/scale_profile.py --size quick --steps 3 --batch 8   # smoke run
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812 (the conventional name)
from scale import LAYOUTS, _choices, _worlds, build, schedule, shard  # noqa: E402

import certun  # noqa: E402
from certun.backends import UnsafeNoiseWarning  # noqa: E402
from certun.backends import _skeleton as skeleton  # noqa: E402
from certun.backends.noise import NoiseGenerator  # noqa: E402
from certun.backends.torch import _dist_comm  # noqa: E402
from certun.backends.torch._fsdp_run import FsdpRun  # noqa: E402
from certun.backends.torch._run import TorchRun  # noqa: E402


class Clock:
    """Wall and CPU seconds per category, accumulated; ``cut()`` closes one step."""

    def __init__(self) -> None:
        self.acc: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        self.steps: list[dict[str, tuple[float, float]]] = []
        self.mark = (time.perf_counter(), time.process_time())
        self.inner: list[list[float]] = []  # per open timed call: the (wall, CPU) of the timed calls inside it

    def wrap(self, owner: Any, name: str, label: Any) -> None:
        """Time every call of ``owner.name`` under ``label`` (a string, or a function of the call's arguments),
        less the timed calls inside it (a collective inside the FSDP2 gradient counts as a collective)."""
        wrapped = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            w, c = time.perf_counter(), time.process_time()
            self.inner.append([0.0, 0.0])
            try:
                return wrapped(*args, **kwargs)
            finally:
                key = label if isinstance(label, str) else label(*args, **kwargs)
                dw, dc = time.perf_counter() - w, time.process_time() - c
                nested = self.inner.pop()
                self.acc[key][0] += dw - nested[0]
                self.acc[key][1] += dc - nested[1]
                if self.inner:
                    self.inner[-1][0] += dw
                    self.inner[-1][1] += dc

        setattr(owner, name, timed)

    def cut(self) -> None:
        now = (time.perf_counter(), time.process_time())
        step = {k: (v[0], v[1]) for k, v in self.acc.items()}
        total = (now[0] - self.mark[0], now[1] - self.mark[1])
        step["rest"] = (total[0] - sum(v[0] for v in step.values()), total[1] - sum(v[1] for v in step.values()))
        step["step"] = total
        self.steps.append(step)
        self.acc.clear()
        self.mark = (time.perf_counter(), time.process_time())

    def medians(self) -> dict[str, tuple[float, float]]:
        kept = self.steps[1:] if len(self.steps) > 1 else self.steps
        keys = dict.fromkeys(k for s in kept for k in s)
        return {k: (statistics.median(s.get(k, (0.0, 0.0))[0] for s in kept) * 1e3,
                    statistics.median(s.get(k, (0.0, 0.0))[1] for s in kept) * 1e3) for k in keys}


def rank_main(rank: int, world: int, init: str, out: str, cfg: dict[str, Any]) -> None:
    """One spawned rank: every layout's profiled run, its medians written to ``out``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    clock = Clock()
    clock.wrap(TorchRun, "gradient", "gradient")  # the local forward/backward of replicated and sharded
    clock.wrap(FsdpRun, "gradient", "gradient")  # FSDP2's forward/backward with its own collectives
    clock.wrap(_dist_comm.Comm, "_call", lambda self, what, fn: f"collective: {what}")
    clock.wrap(NoiseGenerator, "normal_torch", "draw")
    clock.wrap(skeleton, "chain_batch", "step key")
    gen = torch.Generator().manual_seed(1)
    _, shape = build(cfg["model"], cfg["size"])
    X, y = torch.randn(cfg["batch"], *shape, generator=gen), torch.randint(0, 10, (cfg["batch"],), generator=gen)
    X, y = torch.tensor_split(X, world)[rank], torch.tensor_split(y, world)[rank]
    result = {}
    for layout in cfg["layouts"]:
        model = build(cfg["model"], cfg["size"])[0]
        if layout == "fsdp":
            model = shard(model)
        clock.steps.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnsafeNoiseWarning)
            certun.unlearn(model, [(X, y)], schedule(cfg["clip"], cfg["steps"]), loss_fn=F.cross_entropy,
                           clip="batch", seed=0, progress=False, postprocess="none", inplace=True,
                           callback=lambda t, x: clock.cut(), distributed=layout, device="cpu")
        result[layout] = clock.medians()
        clock.acc.clear()
    dist.destroy_process_group()
    Path(out, f"profile-{world}-{rank}.json").write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # gloo can abort in the interpreter's teardown (benchmarks/scale.py)


def launch(world: int, cfg: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    """Spawn the ranks; every rank's medians, in rank order."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=rank_main, args=(r, world, str(tmp / f"init-{world}"), str(tmp), cfg))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(1800)
        if p.is_alive():
            p.kill()
            p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"world size {world}: ranks exited with codes {[p.exitcode for p in procs]}")
    return [json.loads((tmp / f"profile-{world}-{r}.json").read_text()) for r in range(world)]


def table(world: int, ranks: list[dict[str, Any]]) -> str:
    """One markdown table per world size: a row per (layout, category), wall and CPU ms per rank."""
    head = " | ".join(f"rank {r} wall | rank {r} CPU" for r in range(world))
    out = [f"| W | layout | part | {head} |", "|---" * (3 + 2 * world) + "|"]
    for layout in ranks[0]:
        keys = sorted(ranks[0][layout], key=lambda k: (k == "step", k == "rest", -ranks[0][layout][k][1]))
        for k in keys:
            cells = " | ".join(f"{r[layout].get(k, (0, 0))[0]:.2f} | {r[layout].get(k, (0, 0))[1]:.2f}"
                               for r in ranks)
            out.append(f"| {world} | {layout} | {k} | {cells} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Profile each world size and print its table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", type=_worlds, default=[2], help="comma-separated world sizes (default 2)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--size", choices=("quick", "cpu", "full"), default="cpu", help="scale.py's model sizes")
    p.add_argument("--clip", choices=("batch", "model"), default="batch", help="gradient or model clipping")
    p.add_argument("--layouts", type=_choices(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=96, help="GLOBAL batch size")
    args = p.parse_args(argv)
    if args.steps < 2 or args.batch < max(args.worlds):
        p.error(f"--steps {args.steps} must be at least 2 and --batch {args.batch} at least the largest world size")
    cfg = dict(model=args.model, size=args.size, clip=args.clip, layouts=args.layouts, steps=args.steps,
               batch=args.batch)
    print(f"model={args.model} size={args.size} clip={args.clip} global batch={args.batch} steps={args.steps} "
          f"torch={torch.__version__} load average={os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.worlds:
            print(table(world, launch(world, cfg, Path(tmp))))
    print(f"load average after={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
