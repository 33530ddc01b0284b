"""The torch backend's hooks for a run spread over a ``torch.distributed`` process group.

The run is the single-process run (:class:`~certun.backends.torch._run.TorchRun`, on the same
skeleton) with collectives where the data or the master vector is split:

* every rank reads its own retain batches; the step's draw is keyed by the GLOBAL batch (the ranks'
  batches gathered and concatenated in rank order), so a seed gives the same model for every world size;
* the gradient: each rank's clipped per-sample SUM (or its batch gradient times its batch size) is
  all-reduced once in float64 and divided by the global batch size; the step then clips, projects and
  adds noise on the whole vector exactly as one process does (``"replicated"``, the DDP layout: every
  rank adds the identical draw);
* :class:`ShardedRun` (``"sharded-master"``): each rank keeps a contiguous shard of the float64 master,
  adds coordinates ``[offset, offset + count)`` of the step's draw (positional noise) and takes every
  norm over the whole vector; the model's parameters are gathered from the shards for the forward;
* after the run every rank shows the digest of its released model: replicas that differ (a rank that
  drew its own noise) stop every rank, and no certificate is written;
* ``checkpoint_dir``: each rank checkpoints its own state in its own subfolder, and the ranks resume only
  together, from one step of one run (:mod:`certun.backends._rank_checkpoints`).

docs/distributed.md; docs/theory.md#distributed-runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from certun.backends import _rank_checkpoints as rank_checkpoints
from certun.backends import _skeleton as skeleton
from certun.backends._options import RunOptions
from certun.backends._resume import Resume
from certun.backends.run_key import RunKey
from certun.backends.torch import _sharded_steps as sharded
from certun.backends.torch._data import to_device
from certun.backends.torch._dist_comm import Comm, reduce_buffer
from certun.backends.torch._dist_setup import check_count, shared_key, union_identifiers
from certun.backends.torch._grad import batch_size
from certun.backends.torch._run import TorchRun
from certun.certificates import provenance
from certun.errors import InvalidParameterError, UnlearningRunError

__all__ = ["DistributedRun", "ShardedRun", "global_batch"]

#: How the step keys are formed from the ranks' batches (``execution.distributed.step_batches``).
STEP_BATCHES = "global-batch.rank-order.v1"


def global_batch(raws: list[Any]) -> Any:
    """The ranks' raw batches as one: ``[inputs, targets]`` concatenated in rank order where every rank's
    batch is a pair of tensors (then the key equals a single process's on the global batch), else the list."""
    pairs = all(isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, torch.Tensor) and v.dim() > 0
                                                                     for v in r) for r in raws)
    if not pairs or len(raws) == 1:
        return raws[0] if len(raws) == 1 else list(raws)
    return [torch.cat([r[0] for r in raws]), torch.cat([r[1] for r in raws])]


class DistributedRun(TorchRun):
    """The replicated layout: every rank holds the whole float64 master and applies the identical update."""

    sharding = "replicated"
    noise_layout = "identical-replicas"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        opts = self.opts
        if opts.finetune_epochs or opts.buffers == "recompute" or self.s.variant.value == "retrain":
            raise InvalidParameterError(
                "distributed", self.sharding, "a noisy variant without fine-tuning or buffers='recompute' "
                "(both are post-processing: run them afterwards, under your own DDP, on retain data)")
        self.comm = Comm()

    # ------------------------------------------------------------------ shared before the run
    def prepare(self) -> skeleton.Prepared:
        """The model checks of one process; a model refused on one rank stops every rank."""
        error = prepared = None
        try:
            prepared = super().prepare()
        except Exception as exc:
            error = exc
        self.comm.agree(error, "the model checks")
        return prepared

    def identifiers(self, data: Any, retain_ids: Any, forget_ids: Any) -> provenance.Identifiers:
        return union_identifiers(self.comm, data, retain_ids, forget_ids)

    def check_retain_count(self, ids: provenance.Identifiers, data: Any) -> bool:
        return check_count(ids, data)

    def run_key(self, seed: Any, context: bytes) -> RunKey:
        return shared_key(self.comm, seed, context, self.opts.recorded_noise_mode)

    def checkpoints(self, opts: RunOptions, seed: Any, context: bytes, previous: Mapping[str, Any] | None, *,
                    versions: Mapping[str, str], device: str) -> tuple[RunKey, Resume | None]:
        """Each rank's own checkpoint, resumed only when every rank holds one of this run at the same step."""
        return rank_checkpoints.begin(opts, seed, context, previous, rank=self.comm.rank, world=self.comm.world,
                                      layout=self.sharding, gather=self.comm.gather, agree=self.comm.agree,
                                      new_key=self.run_key, versions=versions, device=device)

    # ------------------------------------------------------------------ the noisy phase
    def batches(self, on_pass: Callable[[int], None] | None) -> Iterator[tuple[Any, Any]]:
        inner = super().batches(on_pass)
        while True:
            error = item = None
            try:
                item = next(inner)
            except Exception as exc:  # a bad batch or an exhausted pass on this rank stops every rank
                error = exc
            self.comm.agree(error, "reading a retain batch")
            batch, raw = item
            raws = self.comm.gather(to_device(raw, torch.device("cpu")), "gathering the step's batches")
            yield batch, global_batch(raws)

    def gradient(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The global mean loss and gradient: local sums all-reduced once in float64, over the global batch."""
        d, error = self.flat.d, None
        local = self._sums = reduce_buffer(getattr(self, "_sums", None), d + 2, self.device)
        try:
            loss, g = super().gradient(batch)
            size = batch_size(batch[1])
            torch.mul(g, size, out=local[:d])  # per-sample: the clipped sum; batch: the batch gradient times its size
            local[d], local[d + 1] = loss.to(torch.float64) * size, size
        except Exception as exc:  # this rank's forward/backward failed: every rank stops at this step
            error = exc
        self.comm.agree(error, "the gradient")
        total = self.comm.sum_(local, "all-reducing the gradient")
        torch.div(total[:d], total[d + 1], out=self.g64)
        return total[d] / total[d + 1], self.g64

    def gradient_pieces(self, batch: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The fused step's gradient: the all-reduced global one (never this rank's own pieces)."""
        loss, g = self.gradient(batch)
        return loss, [g]

    # ------------------------------------------------------------------ after the run
    def finish(self) -> skeleton.Finished:
        error = done = root = None
        try:
            done = super().finish()
            root = provenance.model_digest(done.after).root
        except Exception as exc:
            error = exc
        self.comm.agree(error, "the final checks")
        roots = self.comm.gather(root, "comparing the released models")
        differ = [r for r, x in enumerate(roots) if x != roots[0]]
        if differ:
            raise UnlearningRunError(f"distributed run: the released model of ranks {differ} differs from rank 0's "
                                     "(a replica added other noise or ran another update); no certificate was "
                                     "issued")
        record = {**done.record, "distributed": self.describe()}
        return skeleton.Finished(model=done.model, after=done.after, extra=done.extra, record=record)

    def describe(self) -> dict[str, Any]:
        """``execution.distributed`` of the certificate."""
        return {"world_size": self.comm.world, "backend": self.comm.backend, "sharding": self.sharding,
                "noise": self.noise_layout, "noise_origin": "rank-0-broadcast", "step_batches": STEP_BATCHES,
                "gradient": "sum-all-reduced-over-global-batch"}


class ShardedRun(DistributedRun):
    """The sharded layout: each rank keeps and updates coordinates ``[lo, hi)`` of the float64 master."""

    sharding = "sharded-master"
    noise_layout = "positional-shards"

    def start(self) -> torch.Tensor:
        x = super().start()
        d, world, rank = self.flat.d, self.comm.world, self.comm.rank
        bounds = [d * r // world for r in range(world + 1)]
        self.lo, self.hi = bounds[rank], bounds[rank + 1]
        self.counts = [bounds[r + 1] - bounds[r] for r in range(world)]
        if self.c64 is not None:
            self.c64 = self.c64[self.lo:self.hi].clone()
        return x[self.lo:self.hi].clone()

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        squared = torch.linalg.vector_norm(v, dtype=torch.float64).square().reshape(1)
        return self.comm.sum(squared, "all-reducing a norm")[0].sqrt()

    def _norms(self, *vs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The whole vectors' norms of the shards ``vs``, in ONE all-reduce (the step's statistics)."""
        squared = torch.stack([torch.linalg.vector_norm(v, dtype=torch.float64).square() for v in vs])
        return tuple(self.comm.sum(squared, "all-reducing the statistics' norms").sqrt().unbind())

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.concat(x, self.counts, "gathering the master's shards")

    def normal(self, generator: Any, index: int, d: int) -> torch.Tensor:
        z = generator.normal_torch(index, self.hi - self.lo, offset=self.lo, device=self.device,
                                   workers=self.draw_workers(self.hi - self.lo))
        return z.to(device=self.device, dtype=torch.float64)

    def as_noise(self, z: Any, d: int) -> torch.Tensor:
        return super().as_noise(z, d)[self.lo:self.hi]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sharded.project_ball(x, self.s.C0, self.c64, self._norm)

    def output_perturbation(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sharded.output_perturbation(x, C0=self.s.C0, sigma0=self.s.sigma0, center=self.c64,
                                               norm=self._norm, noise=z)

    def noisy_step(self, x: torch.Tensor, t: int, batch: Any,
                   draw: Callable[[], Any]) -> tuple[torch.Tensor, tuple[Any, Any, Any]]:
        c = self.c64
        with torch.no_grad():
            # the forward sees the whole model rounded to its dtype: each shard is rounded before the gather
            self.flat.x.copy_(self._full(x.to(self.flat.x.dtype)))
        loss, g_full = self.gradient(batch)
        g = g_full[self.lo:self.hi].clone()
        self.update(x, g, t, c, draw)
        with torch.no_grad():
            g_norm, dist = self._norms(g, x if c is None else x - c)
            return x, (loss.detach().to(torch.float64), g_norm, dist)

    def update(self, x: torch.Tensor, g: torch.Tensor, t: int, center: torch.Tensor | None,
               draw: Callable[[], Any]) -> None:
        """Step ``t`` on this rank's shard ``x`` of the master with its gradient slice ``g`` and its noise."""
        s = self.s
        gamma, sigma = s.gammas[t], s.sigmas[t]
        with torch.no_grad():
            z = draw()
            if s.variant.value == "gradient_clipping":
                sharded.gc_step(x, g, gamma=gamma, lam=s.lam, C1=s.C1, center=center, norm=self._norm, noise=z,
                                sigma=sigma)
            else:
                sharded.mc_step(x, g, gamma=gamma, lam=s.lam, C2=s.C2, sigma=sigma, mode=skeleton.mc_mode(s),
                                C1=s.C1, center=center, norm=self._norm, noise=z)

    def release(self, x: torch.Tensor | None, *, project: bool) -> None:
        super().release(None if x is None else self._full(x), project=project)
