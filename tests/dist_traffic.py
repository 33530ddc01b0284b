"""Spawned ranks for tests/test_distributed_traffic.py: what a distributed step allocates and sends, per rank.

Each rank counts the allocations of at least one rank's share of the float64 vector (torch's profiler,
``profile_memory``) in runs of 2 and 6 steps, single-process and per layout, and records the dtype and
size of every ``all_gather`` of a sharded run, and the size of every ``all_reduce`` of a sharded and an
FSDP2 run; rank r writes ``out/traffic.rank<r>.pt``.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import sys
import warnings
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

import certun

D = 64 * 512 + 512 + 512 * 3 + 3


def _run(T: int, layout: str | None) -> Any:
    torch.manual_seed(0)
    model: nn.Module = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 3))  # float32, d = D
    if layout == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        model = fully_shard(model)
    X, y = torch.randn(8, 64), torch.randint(0, 3, (8,))
    s = certun.plan(1.0, 1e-5, C0=10.0, C1=1.0, gamma=1e-3, T=T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixed seed's warning
        return certun.unlearn(model, [(X, y)], s, loss_fn=F.cross_entropy, clip="batch", seed=0, progress=False,
                              postprocess="none", distributed=layout, device="cpu", inplace=layout == "fsdp")


def _spied(name: str, layout: str, T: int) -> list[tuple[torch.dtype, int]]:
    """``(dtype, numel)`` of every ``torch.distributed.<name>`` call of a ``T``-step run."""
    import torch.distributed as dist

    calls, inner = [], getattr(dist, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        tensor = args[1] if name == "all_gather" else args[0]
        calls.append((tensor.dtype, tensor.numel()))
        return inner(*args, **kwargs)

    setattr(dist, name, spy)
    try:
        _run(T, layout)
    finally:
        setattr(dist, name, inner)
    return calls


def big_allocations(T: int, layout: str | None, nbytes: int) -> int:
    """How many allocations of at least ``nbytes`` a run of ``T`` steps makes."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        _run(T, layout)
    return sum(1 for e in prof.events() if e.cpu_memory_usage >= nbytes)


def main(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    share = 8 * (D // world)  # bytes of one rank's float64 shard (floor)
    result: dict[str, Any] = {"d": D}
    for layout in (None, "replicated", "sharded"):
        result[layout or "single"] = (big_allocations(2, layout, share), big_allocations(6, layout, share))
    result["gathers"] = _spied("all_gather", "sharded", 4)
    for layout in ("sharded", "fsdp"):
        result[f"reduces.{layout}"] = (_spied("all_reduce", layout, 2), _spied("all_reduce", layout, 6))
    torch.save(result, pathlib.Path(out) / f"traffic.rank{rank}.pt")
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # gloo can abort in the interpreter's teardown (docs/distributed.md)
