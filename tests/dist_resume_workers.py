"""Spawned ranks for the distributed resume tests: checkpointed runs killed, crashed and resumed (gloo, CPU).

A job is a dict: ``layout``, ``ckpt`` (a folder name under the output folder, or none), ``exit_at`` (the
rank leaves by ``os._exit`` in the callback of that step: no cleanup, as a pre-emption), ``raise_at``
(the callback raises: a crash that leaves the process alive), ``copy_at`` (rank 1 copies its checkpoint
aside at that step) and ``before`` (``"drop"``: rank 1's checkpoint deleted; ``"restore"``: the copy put
back; ``"tamper"``: a byte of it flipped) and ``seed_rank1`` (rank 1's seed). Each rank saves what it got
to ``out/<job>.rank<r>.pt``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import traceback
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from dist_workers import CLASSES, D_IN, flat, fully_shard, shard, spawn
from torch import nn

import certun

CKPT = "certun-checkpoint.bin"


class CrashError(Exception):
    """The caller's callback failing: not a certun error, so the checkpoint stays."""


def model() -> nn.Module:
    """Dropout between the layers: each rank's auxiliary RNG state is part of what resumes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, 6), nn.Dropout(0.3), nn.Tanh(), nn.Linear(6, CLASSES)).double()


def schedule(T: int = 6) -> certun.Schedule:
    return certun.plan(1.0, 1e-5, C0=1.0, C1=0.5, gamma=0.3, lam=0.1, T=T)


def rank_file(out: pathlib.Path, job: dict[str, Any], rank: int, world: int) -> pathlib.Path:
    return out / job["ckpt"] / f"rank{rank}-of-{world}" / CKPT


def _callback(job: dict[str, Any], rank: int, world: int, out: pathlib.Path) -> Any:
    def callback(t: int, x: torch.Tensor) -> None:
        if t == job.get("copy_at") and rank == 1:
            shutil.copy2(rank_file(out, job, rank, world), out / f"side-{job['ckpt']}")
        if t == job.get("exit_at") and rank in job.get("exit_ranks", range(world)):
            sys.stdout.flush()
            os._exit(3)  # no cleanup, no finally: as a SIGKILL or pre-emption would
        if t == job.get("raise_at"):
            raise CrashError(f"crash at step {t}")
    return callback


def run_job(job: dict[str, Any], rank: int, world: int, out: pathlib.Path) -> None:
    layout = job["layout"]
    if job.get("before") == "drop" and rank == 0:
        rank_file(out, job, 1, world).unlink()
    if job.get("before") == "restore" and rank == 0:
        shutil.copy2(out / f"side-{job['ckpt']}", rank_file(out, job, 1, world))
    if job.get("before") == "tamper" and rank == 0:  # one byte of rank 1's iterate flipped
        path = rank_file(out, job, 1, world)
        data = bytearray(path.read_bytes())
        data[-100] ^= 1
        path.write_bytes(bytes(data))
    torch.distributed.barrier()
    start = fully_shard(model()) if layout == "fsdp" else model()
    opts: dict[str, Any] = dict(loss_fn=F.cross_entropy, seed=job.get("seed", 7), progress=False,
                                distributed=layout, device="cpu",
                                clip="batch" if layout == "fsdp" else "per_sample",
                                callback=_callback(job, rank, world, out),
                                certificate_path=out / f"{job['name']}.json")
    if layout == "fsdp":
        opts["inplace"] = True
    if rank == 1 and "seed_rank1" in job:
        opts["seed"] = job["seed_rank1"]
    if job.get("ckpt"):
        opts.update(checkpoint_dir=out / job["ckpt"], checkpoint_every=job.get("every", 2))
    result: dict[str, Any] = {"error": None, "flat": None}
    try:
        r = certun.unlearn(start, shard(rank, world), schedule(), **opts)
        result.update(flat=flat(r.model), resumed_from=r.resumed_from, issued=r.certificate is not None,
                      state={n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                             for n, p in r.model.named_parameters()}, history=r.history)
    except Exception as exc:
        result.update(error=f"{type(exc).__name__}: {exc}", kind=type(exc).__name__, trace=traceback.format_exc())
    if job.get("ckpt"):
        result["left"] = rank_file(out, job, rank, world).exists()
        result["subfolder"] = rank_file(out, job, rank, world).parent.exists()
    torch.save(result, out / f"{job['name']}.rank{rank}.pt")


def launch(world: int, tmp: pathlib.Path, jobs: list[dict[str, Any]], timeout: float = 120) -> list[int | None]:
    """Spawned ranks on this module's jobs (:func:`run_job`); each launch in ``tmp`` has its own rendezvous."""
    return spawn(run_job, world, tmp, jobs, timeout)
