"""The ``distributed="fsdp"`` layout: unlearn a module already wrapped by FSDP2's ``fully_shard``, shard by shard.

Each rank keeps the float64 master of its OWN shards only (``DTensor.to_local()``), in the flat order of
a single process (:mod:`certun.backends.torch._fsdp_layout`); the whole parameter vector is never
gathered on one rank:

* noise: each rank draws the positional noise of exactly its global coordinates, so the shards' noise
  together is the single-process draw, bit for bit;
* gradient: FSDP2's backward reduce-scatters it to the shards. Each rank back-propagates its per-sample
  loss SUM times the world size (FSDP2 divides by it), and the result is divided by the global batch
  size: the gradient of the global-batch mean loss. Batch clipping and every projection use the whole
  vector's norm (float64 squared norms all-reduced); per-sample clipping is refused, since a sample's
  gradient norm would need every shard's piece of it before the clip;
* the certificate's model digests read the whole tensors one parameter at a time (an all-gather each).

Everything else (rank 0's secret, global-batch step keys, identifier union, all-or-nothing failure)
is the distributed run's. docs/distributed.md ("FSDP2 modules"); docs/theory.md#distributed-runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from certun.backends import _skeleton as skeleton
from certun.backends.torch import _sharded_steps as sharded
from certun.backends.torch._dist_run import ShardedRun
from certun.backends.torch._fsdp_layout import Gathered, check_cover, check_reduction, local_pieces, ranges
from certun.backends.torch._grad import batch_size, per_sample_loss
from certun.backends.torch._run import TorchRun
from certun.errors import InvalidParameterError, UnlearningRunError

__all__ = ["FsdpRun"]

_LAYOUT = "distributed='fsdp'"


class FsdpRun(ShardedRun):
    """The FSDP2 layout: each rank updates its own ``fully_shard`` shards from a float64 master of them."""

    sharding = "fsdp2"
    noise_layout = "positional-shards"
    gradient_layout = "sum-reduce-scattered-over-global-batch"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.clipping in ("per_sample", "ghost"):
            raise InvalidParameterError(
                "clip", self.opts.clip, f"'batch' with {_LAYOUT} (per-sample clipping needs each sample's "
                "gradient norm over every shard before the clip; FSDP2 only reduce-scatters the batch's sum)",
                hint="pass clip='batch', or run distributed='sharded' on the unsharded module")
        if not self.inplace:
            raise InvalidParameterError("inplace", self.inplace, f"True with {_LAYOUT} (a fully_shard module "
                                        "cannot be copied: certun updates its shards in place)")
        for name, value in (("params", self.params_arg), ("center", self.center_arg)):
            if value is not None:
                raise InvalidParameterError(name, "<given>", f"None with {_LAYOUT} (every parameter is unlearned, "
                                            "around the origin)")

    # ------------------------------------------------------------------ before the run
    def prepare(self) -> skeleton.Prepared:
        """The single-process model checks, then this rank's shard layout; one rank's refusal stops every rank."""
        _reshard(self.source)  # a forward left unsharded (reshard_after_forward=False): back to the shards
        prepared = super().prepare()
        error = None
        try:
            if self.parts.frozen:
                raise InvalidParameterError("frozen", sorted(self.parts.frozen)[:5], f"no frozen parameters with "
                                            f"{_LAYOUT}: every parameter of the module is unlearned")
            check_reduction(self.source, self.comm.world)
            self.pieces = local_pieces(self.parts.names, self.parts.params, self.comm.world)
            self.ranges = ranges(self.pieces)
            prepared = dataclasses.replace(prepared, before=Gathered(dict(zip(self.parts.names, self.parts.params,
                                                                               strict=True))))
        except Exception as exc:
            error = exc
        self.comm.agree(error, "the FSDP2 layout checks")
        check_cover(self.comm.gather(self.ranges, "comparing the shards' coordinates"),
                    sum(p.numel() for p in self.parts.params))
        return prepared

    # ------------------------------------------------------------------ the noisy phase
    def start(self) -> torch.Tensor:
        self.model.train()
        self.c64 = None
        return self._local().to(torch.float64, copy=True)

    def _local(self) -> torch.Tensor:
        """This rank's shards, concatenated in the flat order (the parameters' dtype)."""
        return torch.cat([p.local.detach().reshape(-1) for p in self.pieces])

    def _load(self, v: torch.Tensor) -> None:
        """Write ``v`` (this rank's coordinates) into the shards, rounded to their dtype."""
        offset = 0
        with torch.no_grad():
            for p in self.pieces:
                p.local.copy_(v[offset:offset + p.count].view_as(p.local))
                offset += p.count

    def normal(self, generator: Any, index: int, d: int) -> torch.Tensor:
        parts = [generator.normal_torch(index, count, offset=start, workers=self.draw_workers(count))
                 for start, count in self.ranges]
        z = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        return z.to(device=self.device, dtype=torch.float64)

    def as_noise(self, z: Any, d: int) -> torch.Tensor:
        full = TorchRun.as_noise(self, z, d)
        return torch.cat([full[s:s + c] for s, c in self.ranges] or [full[:0]])

    @contextlib.contextmanager
    def noisy_steps(self) -> Iterator[None]:
        self.clip_implementation = "minibatch-mean gradient (FSDP2 reduce-scatter)" if self.clipping else None
        try:
            yield
        finally:
            for p in self.parts.params:
                p.grad = None

    def gradient(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The global mean loss, and this rank's coordinates of the global-batch mean gradient (float64)."""
        local, error, size, loss = None, None, 0, torch.zeros((), dtype=torch.float64)
        try:
            for p in self.parts.params:
                p.grad = None
            inputs, targets = batch
            size = batch_size(targets)
            losses = per_sample_loss(self.loss_fn, self.model(inputs), targets)
            loss = losses.detach().sum().to(torch.float64)
            (losses.sum() * self.comm.world).backward()  # FSDP2 divides the reduce-scattered sum by W
            local = torch.cat([p.grad.to_local().reshape(-1) for p in self.parts.params]).to(torch.float64)
        except Exception as exc:  # this rank's forward/backward failed: every rank stops at this step
            error = exc
        self.comm.agree(error, "the gradient")
        total = self.comm.sum(torch.stack([loss.reshape(()), torch.tensor(float(size), dtype=torch.float64)]),
                              "all-reducing the loss and batch size")
        if float(total[1]) == 0:
            raise UnlearningRunError("distributed run: every rank's retain batch is empty at this step")
        return total[0] / total[1], local.div_(total[1])

    def noisy_step(self, x: torch.Tensor, t: int, batch: Any,
                   draw: Callable[[], Any]) -> tuple[torch.Tensor, tuple[Any, Any, Any]]:
        self._load(x)  # the forward sees the master rounded to the parameters' dtype
        loss, g = self.gradient(batch)
        self.update(x, g, t, None, draw)
        with torch.no_grad():
            return x, (loss.detach().to(torch.float64), *self._norms(g, x))

    # ------------------------------------------------------------------ after the noisy phase
    def release(self, x: torch.Tensor | None, *, project: bool) -> None:
        with torch.no_grad():
            if x is not None:
                self._load(x)  # the single rounding to the parameters' dtype
            v = self._local()
            if project:
                sharded.project_ball(v, self.s.C0, None, self._norm)
                self._load(v)
            if not math.isfinite(float(self._norm(v))):  # the same verdict on every rank
                raise UnlearningRunError("the unlearned parameters are not finite after the noisy phase; no "
                                         "certificate was issued")
        _reshard(self.model)  # no gathered (pre-release) copy of the parameters stays behind

    def finish(self) -> skeleton.Finished:
        """The single-process final checks; the released tensors are read one parameter at a time."""
        error = done = None
        try:
            done = TorchRun.finish(self)
            after = Gathered(dict(zip(self.parts.names, self.parts.params, strict=True)))
            done = skeleton.Finished(model=done.model, after=after, extra=done.extra,
                                     record={**done.record, "distributed": self.describe()})
        except Exception as exc:
            error = exc
        self.comm.agree(error, "the final checks")
        return done

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gradient": self.gradient_layout}


def _reshard(model: torch.nn.Module) -> None:
    """Free every FSDP2 unit's gathered parameters, so that the registered parameters are the shards."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
