"""Throughput of distributed noisy unlearning, per world size, layout and clipping mode, against DDP SGD.

For each world size W the script spawns W processes (one torch thread each) in one process group
(``gloo`` on CPU by default) and, in those same processes, times on a fixed GLOBAL batch (split in
rank order, so each rank reads ``batch / W`` rows):

- a distributed plain SGD step: ``DistributedDataParallel`` (forward, backward with the all-reduce of
  the gradients, ``torch.optim.SGD`` update), the baseline a DDP user already pays;
- one draw of the step's Gaussians by the run's keyed sampler: ``d`` of them in the replicated layout,
  this rank's slice (about ``d / W``) in the sharded one; the *floor* of a layout is the SGD step plus
  that draw (benchmarks/step_cost.py's floor, distributed);
- ``certun.unlearn(..., distributed=layout)`` for ``--steps`` noisy steps, per clipping mode;
- for the ``fsdp`` layout, on the model wrapped by FSDP2's ``fully_shard`` (each Linear and Conv2d its
  own unit, then the root): a plain FSDP2 SGD step (forward, backward with its reduce-scatter,
  ``torch.optim.SGD`` on the shards), the layout's own baseline; its floor is that step plus the draw
  of this rank's FSDP2 coordinates; and the noisy steps with ``inplace=True`` for batch and model
  clipping (per-sample clipping is refused on shards by design, so it has no ``fsdp`` row).

Throughput is wall time (synchronised on CUDA): ranks wait on each other, and that wait is part of
the cost. Each step is also timed in this process's CPU time, which a shared machine's other load
touches much less (a rank blocked on a peer sleeps); on CPU it shows the work a step does, the wall
time what it takes on that machine. Each rank takes the medians over steps (the first step dropped),
and the slowest rank's medians are reported. Models are step_cost.py's MLP (two hidden layers of
1024 on CPU, its 10.3M-parameter widths with ``--full``) and CNN.

    OMP_NUM_THREADS=1 python benchmarks/scale.py                 # CPU, gloo, W = 1, 2, 3
    OMP_NUM_THREADS=1 python benchmarks/scale.py --quick         # seconds-long smoke run
    python benchmarks/scale.py --device cuda --backend nccl --worlds 1 --full --batch 128

Prints a markdown table (and writes JSON with ``--json PATH``); docs/benchmarks.md records results.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # step_cost.py's models live beside this script
    sys.path.insert(0, str(_HERE))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402, N812 (the conventional name)
from step_cost import cnn, mlp  # noqa: E402
from torch import nn  # noqa: E402

import certun  # noqa: E402
from certun.backends import UnsafeNoiseWarning  # noqa: E402

CLIPS = ("per_sample", "batch", "model")  # "model": model clipping (noise after projection), batch clipping
LAYOUTS = ("replicated", "sharded", "fsdp")

# ------------------------------------------------------------------ what one rank times


Times = list[tuple[float, float]]  # (wall, process CPU) seconds of each step


def _now(device: torch.device) -> tuple[float, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def _spans(stamps: list[tuple[float, float]]) -> Times:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(stamps)]


MLP_WIDTHS = {"quick": (256, 256), "cpu": (1024, 1024), "full": (3072, 2560)}  # "full": step_cost.py's 10.3M


def build(name: str, size: str) -> tuple[nn.Module, tuple[int, ...]]:
    """step_cost.py's model at ``size`` (quick, cpu or full) and its input shape, seeded alike on every rank."""
    torch.manual_seed(0)
    if name == "mlp":
        return mlp(MLP_WIDTHS[size]), (1, 28, 28)
    return cnn(8 if size == "quick" else 32), (1, 28, 28)


def schedule(clip: str, T: int) -> certun.Schedule:
    """step_cost.py's schedules: gradient clipping, or model clipping with noise after the projection."""
    if clip == "model":
        return certun.plan(1.0, 1e-5, C0=10.0, C2=10.0, gamma=1e-3, T=T, variant="model_clipping")
    return certun.plan(1.0, 1e-5, C0=10.0, C1=1.0, gamma=1e-3, T=T)


def time_ddp_sgd(model: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int, device: torch.device) -> Times:
    """Each DDP step: zero_grad, forward, backward (gradients all-reduced), SGD update."""
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model.to(device).train(), device_ids=ids)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    stamps = [_now(device)]
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(X), y).backward()
        opt.step()
        stamps.append(_now(device))
    del ddp, opt
    gc.collect()  # the DDP reducer must go while the process group lives
    return _spans(stamps)


def shard(model: nn.Module) -> nn.Module:
    """FSDP2: each Linear and Conv2d its own ``fully_shard`` unit, then the root (examples/distributed_digits.py)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            fully_shard(layer)
    return fully_shard(model)


def fsdp_ranges(model: nn.Module) -> list[tuple[int, int]]:
    """``(start, count)`` of this rank's FSDP2 coordinates in the flat order of one process (dim-0 chunks)."""
    rank, world, out, offset = dist.get_rank(), dist.get_world_size(), [], 0
    for p in model.parameters():
        rows = p.shape[0]
        chunk, rowlen = -(-rows // world), p.numel() // rows
        lo, hi = min(rows, rank * chunk), min(rows, (rank + 1) * chunk)
        if hi > lo:
            out.append((offset + lo * rowlen, (hi - lo) * rowlen))
        offset += p.numel()
    return out


def time_fsdp_sgd(model: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int, device: torch.device) -> Times:
    """Each FSDP2 step: zero_grad, forward (all-gathers), backward (reduce-scatter), SGD on the shards."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    stamps = [_now(device)]
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(X), y).backward()
        opt.step()
        stamps.append(_now(device))
    return _spans(stamps)


def time_draw(ranges: list[tuple[int, int]], steps: int, device: torch.device) -> Times:
    """Each draw of the keyed float64 normals at ``ranges`` (``(offset, count)`` pairs), as the run draws them."""
    from certun.backends.noise import NoiseGenerator, fresh_key

    gen, out = NoiseGenerator(fresh_key()), []
    for t in range(steps):
        t0 = _now(device)
        for offset, count in ranges:
            gen.normal_torch(t, count, offset=offset, device=device)
        out += _spans([t0, _now(device)])
    return out


def time_noisy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, clip: str, layout: str, steps: int,
               device: torch.device) -> Times:
    """Each noisy step of ``certun.unlearn(distributed=layout)`` (stamped by its callback)."""
    stamps = [_now(device)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)  # a fixed seed: fine for timing
        certun.unlearn(model, [(X, y)], schedule(clip, steps), loss_fn=F.cross_entropy,
                       clip="batch" if clip == "model" else clip, seed=0, device=device, progress=False,
                       postprocess="none", inplace=True, callback=lambda t, x: stamps.append(_now(device)),
                       distributed=layout)
    return _spans(stamps)


def _median(times: Times, device: torch.device) -> tuple[float, float]:
    """The slowest rank's medians (wall, CPU) over the steps after the first: the slowest rank sets the pace."""
    kept = times[1:] if len(times) > 1 else times
    t = torch.tensor([statistics.median(w for w, _ in kept), statistics.median(c for _, c in kept)],
                     dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0]), float(t[1])


Med = tuple[float, float]  # (wall, CPU) seconds


def _row(common: dict[str, Any], batch: int, med: Med, sgd: Med, floor: Med | None, base: Med | None = None,
         **extra: Any) -> dict[str, Any]:
    """One table row: ``med`` against DDP SGD (``sgd``), the layout's floor and its own plain SGD step (``base``)."""
    row = dict(common, **extra, ms=med[0] * 1e3, cpu_ms=med[1] * 1e3, examples_per_s=batch / med[0],
               ratio_sgd=med[0] / sgd[0])
    if floor is not None:
        row.update(ratio_floor=med[0] / floor[0], ratio_floor_cpu=med[1] / floor[1])
    if base is not None:
        row.update(ratio_base=med[0] / base[0], ratio_base_cpu=med[1] / base[1])
    return row


def _noisy(name: str, cfg: dict[str, Any], X: torch.Tensor, y: torch.Tensor, layout: str, clip: str,
           device: torch.device) -> Med:
    """The slowest rank's medians of the noisy steps (a fresh model; wrapped by ``fully_shard`` for fsdp)."""
    model = build(name, cfg["size"])[0]
    if layout == "fsdp":
        model = shard(model.to(device))
    return _median(time_noisy(model, X, y, clip, layout, cfg["steps"], device), device)


def rank_rows(name: str, cfg: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """Every timing of one model on this rank: DDP SGD (and FSDP2 SGD), the floors, then each (layout, clip)."""
    rank, world, steps, batch = dist.get_rank(), dist.get_world_size(), cfg["steps"], cfg["batch"]
    base, shape = build(name, cfg["size"])
    d = sum(p.numel() for p in base.parameters())
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(batch, *shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    X, y = torch.tensor_split(X, world)[rank].to(device), torch.tensor_split(y, world)[rank].to(device)
    common = dict(model=name, d=d, world=world, local_batch=len(y))
    sgd = _median(time_ddp_sgd(base, X, y, steps, device), device)
    rows = [_row(common, batch, sgd, sgd, None, sgd, what="DDP SGD", layout="-", clip="-")]
    lo, hi = rank * d // world, (rank + 1) * d // world
    bases, ranges = {"replicated": sgd, "sharded": sgd}, {"replicated": [(0, d)], "sharded": [(lo, hi - lo)]}
    if "fsdp" in cfg["layouts"]:
        fsdp = shard(build(name, cfg["size"])[0].to(device))
        ranges["fsdp"] = fsdp_ranges(fsdp)
        bases["fsdp"] = _median(time_fsdp_sgd(fsdp, X, y, steps, device), device)
        rows.append(_row(common, batch, bases["fsdp"], sgd, None, bases["fsdp"], what="FSDP2 SGD", layout="fsdp",
                         clip="-"))
        del fsdp
    for layout in cfg["layouts"]:
        draw = _median(time_draw(ranges[layout], steps, device), device)
        floor, own = (bases[layout][0] + draw[0], bases[layout][1] + draw[1]), bases[layout]
        rows.append(_row(common, batch, floor, sgd, floor, own, layout=layout, clip="-",
                         what=f"floor = {'FSDP2' if layout == 'fsdp' else 'DDP'} SGD + draw"))
        for clip in cfg["clips"]:
            if layout == "fsdp" and clip == "per_sample":
                continue  # refused by design: a sample's norm would need every shard of its gradient
            try:
                med = _noisy(name, cfg, X, y, layout, clip, device)
            except (certun.CertunError, RuntimeError, NotImplementedError) as exc:  # every rank fails alike
                rows.append(dict(common, what="noisy step", layout=layout, clip=clip, error=str(exc).splitlines()[0]))
                continue
            rows.append(_row(common, batch, med, sgd, floor, own, what="noisy step", layout=layout, clip=clip))
    return rows


def rank_main(rank: int, world: int, init_file: str, out: str, cfg: dict[str, Any]) -> None:
    """One spawned rank: join the group (file rendezvous), time every model, rank 0 writes the rows."""
    torch.set_num_threads(1)
    device = torch.device(cfg["device"])
    if device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group(cfg["backend"], init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=cfg["timeout"]))
    try:
        rows = [row for name in cfg["models"] for row in rank_rows(name, cfg, device)]
    finally:
        dist.destroy_process_group()
    if rank == 0:
        Path(out, f"rows-{world}.json").write_text(json.dumps(rows))
    # The rows are written: leave without the interpreter's teardown, where a thread left by gloo or a DDP
    # reducer can abort the process at random ("terminate called ...") and fail an otherwise good run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ------------------------------------------------------------------ the driver


def launch(world: int, cfg: dict[str, Any], tmp: Path) -> list[dict[str, Any]]:
    """Spawn ``world`` ranks and return rank 0's rows; a rank that fails or hangs is an error."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    init = tmp / f"rendezvous-{world}"
    procs = [ctx.Process(target=rank_main, args=(r, world, str(init), str(tmp), cfg)) for r in range(world)]
    for p in procs:
        p.start()
    deadline, codes = time.monotonic() + cfg["timeout"] * 20, []
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
        codes.append(p.exitcode)
    if any(code != 0 for code in codes):
        raise RuntimeError(f"world size {world}: ranks exited with codes {codes}")
    return json.loads((tmp / f"rows-{world}.json").read_text())


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table: wall-time columns, then CPU-time ones (ratios to the same world's rows; "own
    SGD" is the layout's plain step: DDP for replicated and sharded, FSDP2 for fsdp)."""
    sgd_cpu = {(r["model"], r["world"]): r["cpu_ms"] for r in rows if r["what"] == "DDP SGD"}
    out = ["| model | d | W | local batch | layout | step | clip | ms / step | examples / s | x DDP SGD | x floor "
           "| CPU ms / step | x DDP SGD (CPU) | x floor (CPU) | x own SGD (CPU) |", "|---" * 15 + "|"]
    for r in rows:
        head = (f"| {r['model']} | {r['d']} | {r['world']} | {r['local_batch']} | {r['layout']} | {r['what']} "
                f"| {r['clip']}")
        if "error" in r:
            out.append(f"{head} | failed: {r['error'][:60]} | | | | | | | |")
            continue
        floor, floor_cpu, own = (f"{r[k]:.2f}" if k in r else "-"
                                 for k in ("ratio_floor", "ratio_floor_cpu", "ratio_base_cpu"))
        out.append(f"{head} | {r['ms']:.2f} | {r['examples_per_s']:.0f} | {r['ratio_sgd']:.2f} | {floor} "
                   f"| {r['cpu_ms']:.2f} | {r['cpu_ms'] / sgd_cpu[r['model'], r['world']]:.2f} | {floor_cpu} "
                   f"| {own} |")
    return "\n".join(out)


def _choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated subset of {','.join(allowed)}")
        return items
    return parse


def _worlds(text: str) -> list[int]:
    try:
        worlds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        worlds = []
    if not worlds or any(w < 1 or w > 64 for w in worlds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated world sizes between 1 and 64")
    return worlds


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line; bad values exit with argparse's message (no traceback)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small models, few steps, tiny batch: a smoke run")
    p.add_argument("--full", action="store_true", help="step_cost.py's full sizes (10.3M-parameter MLP): for a GPU")
    p.add_argument("--worlds", type=_worlds, default=[1, 2, 3], help="world sizes (default 1,2,3)")
    p.add_argument("--models", type=_choices(("mlp", "cnn")), default=["mlp", "cnn"])
    p.add_argument("--layouts", type=_choices(LAYOUTS), default=list(LAYOUTS))
    p.add_argument("--clips", type=_choices(CLIPS), default=list(CLIPS),
                   help="per_sample, batch (gradient clipping), model (model clipping, batch-clipped)")
    p.add_argument("--steps", type=int, default=None, help="steps per timing (default 20; 4 with --quick)")
    p.add_argument("--batch", type=int, default=None, help="GLOBAL batch size (default 96; 12 with --quick)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (rank r uses cuda:r mod the device count)")
    p.add_argument("--backend", default=None, help="process group backend (default gloo on cpu, nccl on cuda)")
    p.add_argument("--timeout", type=float, default=300.0, help="process group timeout, seconds")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    args.steps = args.steps or (4 if args.quick else 20)
    args.batch = args.batch or (12 if args.quick else 96)
    if args.steps < 2 or args.batch < max(args.worlds):
        p.error(f"--steps {args.steps} must be at least 2 and --batch {args.batch} at least the largest world "
                f"size {max(args.worlds)} (every rank reads a row)")
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        p.error(f"--device {args.device!r}: expected cpu, or cuda on a machine with a CUDA device")
    args.backend = args.backend or ("nccl" if args.device == "cuda" else "gloo")
    if args.backend not in ("gloo", "nccl") or (args.backend == "nccl" and args.device != "cuda"):
        p.error(f"--backend {args.backend!r}: expected gloo (cpu or cuda) or nccl (cuda only)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every world size, print the table, optionally write JSON."""
    args = parse(argv)
    size = "quick" if args.quick else "full" if args.full else "cpu"
    cfg = dict(quick=args.quick, size=size, models=args.models, layouts=args.layouts, clips=args.clips,
               steps=args.steps, batch=args.batch, device=args.device, backend=args.backend, timeout=args.timeout)
    print(f"device={args.device} backend={args.backend} torch={torch.__version__} cores={os.cpu_count()} "
          f"global batch={args.batch} steps={args.steps} size={size} host={platform.machine()}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.worlds:
            try:
                rows += launch(world, cfg, Path(tmp))
            except RuntimeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(cfg, worlds=args.worlds, torch=torch.__version__, rows=rows),
                                              indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
