"""Where each rank's FSDP2 shards sit in the single-process flat parameter vector, and the whole tensors on demand.

``torch.distributed.fsdp.fully_shard`` makes every parameter a ``DTensor`` sharded on dim 0 over a 1-D
device mesh: mesh coordinate ``k`` holds rows ``[k·⌈n/W⌉, min(n, (k+1)·⌈n/W⌉))`` (``torch.chunk``; the
last ranks may hold fewer rows, or none). Those rows are ONE contiguous range of the parameter's
flattened (C-order) coordinates, so in the flat order of a single process (parameters in
``named_parameters()`` order, each flattened) this rank's values of parameter ``p`` are coordinates
``[offset_p + row0·rowlen, offset_p + row1·rowlen)``. Positional noise drawn for exactly those
coordinates is this rank's part of the single-process draw (docs/theory.md#distributed-runs).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from certun.errors import UnlearningRunError, UnsupportedModelError

__all__ = ["Gathered", "Piece", "check_cover", "check_reduction", "is_sharded", "local_pieces", "ranges"]


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` (a parameter of a ``fully_shard`` module)."""
    module = sys.modules.get("torch.distributed.tensor")  # not imported yet: no DTensor exists
    return module is not None and isinstance(t, module.DTensor)


@dataclass(frozen=True)
class Piece:
    """This rank's shard of one parameter: its local tensor and the global flat coordinates it holds."""

    name: str
    local: torch.Tensor
    start: int
    count: int


_REMEDY = ("wrap it with torch.distributed.fsdp.fully_shard over every rank (docs/distributed.md), or pass "
           "distributed='sharded' for a plain module")


def _shard_problem(name: str, p: Any, world: int) -> str | None:
    if not is_sharded(p):
        return "a plain tensor, not a DTensor: every unlearned parameter must be sharded by fully_shard"
    from torch.distributed.tensor import Shard

    mesh = p.device_mesh
    if mesh.ndim != 1 or mesh.size() != world:
        return (f"device mesh of shape {tuple(mesh.shape)}; only a 1-D mesh over all {world} ranks is "
                "supported (no HSDP, no tensor parallelism)")
    if tuple(p.placements) != (Shard(0),):
        return f"placements {tuple(p.placements)}; only (Shard(dim=0),) is supported"
    return None


def local_pieces(names: Sequence[str], params: Sequence[Any], world: int) -> list[Piece]:
    """This rank's :class:`Piece` of every parameter, checked against the ``torch.chunk`` layout.

    Raises:
        UnsupportedModelError: a parameter that is not a dim-0 shard over a 1-D mesh of every rank, or whose
            local rows are not the expected contiguous range (every problem listed).
    """
    pieces, problems, offset = [], [], 0
    for name, p in zip(names, params, strict=True):
        problem = _shard_problem(name, p, world)
        if problem is None:
            rows = p.shape[0] if p.dim() else 1
            rowlen = p.numel() // rows if rows else 0
            chunk = -(-rows // world)
            row0 = min(p.device_mesh.get_coordinate()[0] * chunk, rows)
            local = p.to_local()
            expected = min(chunk, rows - row0) * rowlen
            if local.numel() != expected or not local.is_contiguous():
                problem = (f"local shard of {local.numel()} values, expected {expected} contiguous values "
                           f"(rows {row0}..{row0 + min(chunk, rows - row0)})")
            else:
                pieces.append(Piece(name, local, offset + row0 * rowlen, expected))
        if problem is not None:
            problems.append((name, problem, _REMEDY))
        offset += p.numel()
    if problems:
        raise UnsupportedModelError(problems)
    return pieces


def check_reduction(model: torch.nn.Module, world: int) -> None:
    """Refuse FSDP2 units whose gradient reduction is not the default reduce-scatter divided by the world size.

    The run's gradient is that reduce-scatter of ``W`` times each rank's loss sum, over the global batch: a
    custom divide factor would scale it, and no gradient sync would leave the shards without a gradient.

    Raises:
        UnsupportedModelError: every unit with a changed reduction, and the call that undoes it.
    """
    from torch.distributed.fsdp import FSDPModule

    problems = []
    for path, module in model.named_modules():
        if not isinstance(module, FSDPModule):
            continue
        groups = module._get_fsdp_state()._fsdp_param_groups  # FSDP2's per-unit settings live here
        factors = {g.gradient_divide_factor for g in groups} - {None, float(world)}
        if factors:
            problems.append((path or "<root>", f"gradient divide factor {sorted(factors)[0]}, not {world} (the "
                             "world size)", "call set_gradient_divide_factor(world size) or leave it unset"))
        if not all(g.reduce_grads for g in groups):
            problems.append((path or "<root>", "gradient sync turned off (set_requires_gradient_sync(False))",
                             "call set_requires_gradient_sync(True) before unlearning"))
    if problems:
        raise UnsupportedModelError(problems)


def ranges(pieces: Sequence[Piece]) -> list[tuple[int, int]]:
    """The pieces' ``(start, count)`` merged where one ends where the next starts (fewer noise calls)."""
    out: list[list[int]] = []
    for piece in pieces:
        if piece.count == 0:
            continue
        if out and out[-1][0] + out[-1][1] == piece.start:
            out[-1][1] += piece.count
        else:
            out.append([piece.start, piece.count])
    return [(s, c) for s, c in out]


def check_cover(per_rank: Sequence[Sequence[tuple[int, int]]], d: int) -> None:
    """Refuse shards whose coordinates do not cover ``[0, d)`` exactly once over all ranks.

    Each rank adds the noise of the coordinates it believes it holds: two ranks with the same range would
    add the SAME draw to two different shards (correlated noise) and leave another range without any, so the
    released noise would not be one N(0, σ²I_d) draw (docs/theory.md#distributed-runs). Every rank computes
    the same verdict from the gathered ranges.

    Raises:
        UnlearningRunError: the first gap or overlap, with the ranks involved.
    """
    pieces = sorted((start, count, rank) for rank, own in enumerate(per_rank) for start, count in own if count)
    at, last = 0, None
    for start, count, rank in pieces:
        if start != at:
            what = (f"coordinates [{at}, {start}) are held by no rank" if start > at else
                    f"ranks {last} and {rank} both hold coordinate {start}")
            raise UnlearningRunError(f"distributed='fsdp': the shards do not partition the parameter vector ({what}), "
                                     "so the noise would not be one draw over every coordinate; check the device "
                                     "mesh (docs/distributed.md); nothing was run and no certificate was issued")
        at, last = start + count, rank
    if at != d:
        raise UnlearningRunError(f"distributed='fsdp': coordinates [{at}, {d}) are held by no rank, so they would get "
                                 "no noise (docs/distributed.md); nothing was run and no certificate was issued")


class Gathered(Mapping[str, torch.Tensor]):
    """``name -> whole tensor`` (on the CPU), all-gathered when read, ONE parameter at a time.

    Reading an item is a collective: every rank must read the same names in the same order (the run's
    digests do, on every rank). Nothing keeps the tensors, so the whole vector is never held at once.
    """

    def __init__(self, named: Mapping[str, Any]) -> None:
        self._named = dict(named)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._named[name].full_tensor().detach().to("cpu")

    def __iter__(self) -> Iterator[str]:
        return iter(self._named)

    def __len__(self) -> int:
        return len(self._named)
