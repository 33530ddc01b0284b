"""Worker for the cross-process SISA reload test: train in one process, reload and serve in another.

Run as ``python tests/sisa_reload_worker.py train|serve FOLDER LEDGER``; imported by the test for the
same data, factory and forget sets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from certun.backends import _sisa_checkpoints as ckpt
from certun.backends.sisa import Sisa, SisaConfig, assign

SALT = bytes(range(32))
SEED = 11
CONFIG = SisaConfig(shards=3, slices=3, batch_size=16)
EPS, DELTA = 1.0, 1e-6


def data(n: int = 180, d: int = 6) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] > 1).long()).clamp(max=2)
    return x, y, [f"user-{i}" for i in range(n)]


def factory() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def forget_sets() -> list[list[str]]:
    """Three requests: late slices (restart from a checkpoint) and one first-slice record (fresh start)."""
    _, _, ids = data()
    shard, slice_ = assign(ids, shards=CONFIG.shards, slices=CONFIG.slices, salt=SALT)
    at = {(int(s), int(r)): [] for s in range(3) for r in range(3)}
    for i, key in enumerate(zip(shard.tolist(), slice_.tolist(), strict=True)):
        at[key].append(ids[i])
    return [[at[(0, 2)][0], at[(1, 1)][0]], [at[(2, 2)][0], at[(1, 0)][0]], [at[(0, 1)][0]]]


def without(forgotten: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The training data less ``forgotten`` (what the owner re-supplies after those deletions)."""
    x, y, ids = data()
    keep = [i for i, r in enumerate(ids) if r not in set(forgotten)]
    return x[keep], y[keep], [ids[i] for i in keep]


def trained(folder: Path | None, forget: list[str] | None = None) -> Sisa:
    """An ensemble fitted on :func:`data` (checkpointed in ``folder``), then asked to forget ``forget``."""
    sisa = Sisa(factory, CONFIG, salt=SALT, seed=SEED, checkpoint_dir=folder)
    sisa.fit(*data())
    if forget:
        sisa.unlearn(forget)
    return sisa


def _train(folder: Path, ledger: Path) -> None:
    sisa = Sisa(factory, CONFIG, salt=SALT, seed=SEED, checkpoint_dir=folder)
    sisa.fit(*data())
    first = forget_sets()[0]
    sisa.certify(sisa.unlearn(first), first, eps=EPS, delta=DELTA, certificate_path=ledger / "000.json")


def _serve(folder: Path, ledger: Path) -> None:
    f1, f2, f3 = forget_sets()
    sisa = Sisa.load(folder, factory, CONFIG, *without(f1), salt=SALT, seed=SEED)
    previous = ledger / "000.json"
    for n, forget in enumerate((f2, f3), start=1):
        path = ledger / f"{n:03d}.json"
        sisa.certify(sisa.unlearn(forget), forget, eps=EPS, delta=DELTA, previous=previous, certificate_path=path)
        previous = path
    (ledger / "ensemble.safetensors").write_bytes(ckpt.safetensors_bytes(sisa.ensemble.state_dict()))


if __name__ == "__main__":
    command, folder, ledger = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    {"train": _train, "serve": _serve}[command](folder, ledger)
