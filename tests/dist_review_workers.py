"""Spawned ranks for the review tests of distributed resume (gloo, CPU): a failure on ONE rank, and rank files
swapped between ranks.

A job is a dict like :mod:`dist_resume_workers`' (``name``, ``layout``, ``ckpt``, ``raise_at``) plus
``fail_rank``/``fail_at`` (that rank's retain data raises ``OSError`` on the batch of that step: a read error
on one node, not a certun refusal), ``every`` (``{rank: checkpoint_every}`` where not 2) and
``before="swap"`` (rank 0 swaps the checkpoint files of ranks 0 and 1), ``full_rank``/``full_at`` (from the
callback of that step on, that rank can write no file over 100 bytes: a full disk on one node) and
``ckpt_ranks`` (the ranks given ``checkpoint_dir``; all by default), ``blob_rank`` (that rank fails with
``MemoryError`` turning its master into the checkpoint's bytes).
Each rank saves what it got to ``out/<job>.rank<r>.pt``.
"""

from __future__ import annotations

import pathlib
import resource
import signal
import traceback
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from dist_resume_workers import model, rank_file, schedule
from dist_workers import flat, shard, spawn

import certun


class FailingData:
    """This rank's batches; once ``armed``, the next batch read raises ``OSError`` (a disk or network error)."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches, self.armed = batches, False

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            if self.armed:
                raise OSError("input/output error reading the retain shard")
            yield batch


def run_job(job: dict[str, Any], rank: int, world: int, out: pathlib.Path) -> None:
    if job.get("before") == "swap" and rank == 0:
        a, b = rank_file(out, job, 0, world), rank_file(out, job, 1, world)
        tmp = a.with_name("swapping")
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
    torch.distributed.barrier()
    data = FailingData(shard(rank, world))
    from certun.backends import _resume

    to_bytes = _resume._bytes
    if rank == job.get("blob_rank"):
        def no_memory(a: Any) -> bytes:
            raise MemoryError("no memory for the checkpoint's copy of the master")
        _resume._bytes = no_memory

    def callback(t: int, x: torch.Tensor) -> None:
        if t + 1 == job.get("fail_at") and rank == job.get("fail_rank"):
            data.armed = True
        if t == job.get("full_at") and rank == job.get("full_rank"):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with OSError instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        if t == job.get("raise_at"):
            raise RuntimeError(f"crash at step {t}")

    opts: dict[str, Any] = dict(loss_fn=F.cross_entropy, seed=7, progress=False, distributed=job["layout"],
                                device="cpu", clip="per_sample", callback=callback,
                                certificate_path=out / f"{job['name']}.json")
    if job.get("ckpt") and rank in job.get("ckpt_ranks", range(world)):
        opts.update(checkpoint_dir=out / job["ckpt"], checkpoint_every=job.get("every", {}).get(rank, 2))
    result: dict[str, Any] = {"error": None, "flat": None}
    try:
        r = certun.unlearn(model(), data, schedule(), **opts)
        result.update(flat=flat(r.model), resumed_from=r.resumed_from)
    except Exception as exc:
        result.update(error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
    finally:
        _resume._bytes = to_bytes
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit[1], limit[1]))
    if job.get("ckpt"):
        result["left"] = rank_file(out, job, rank, world).exists()
    torch.save(result, out / f"{job['name']}.rank{rank}.pt")


def launch(world: int, tmp: pathlib.Path, jobs: list[dict[str, Any]], timeout: float = 120) -> list[int | None]:
    """Spawned ranks on this module's jobs (:func:`run_job`); each launch in ``tmp`` has its own rendezvous."""
    return spawn(run_job, world, tmp, jobs, timeout)
