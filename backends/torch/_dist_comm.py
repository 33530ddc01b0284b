"""The collective operations of a distributed run, each one failing as a certun error on every rank.

Every collective goes through :class:`Comm`: a lost peer or a timeout (torch raises ``RuntimeError``)
becomes an :class:`~certun.errors.UnlearningRunError` that says no certificate was issued. A rank whose
own work failed still takes part in the next collective with a failure flag, so every rank stops at
the same point with a clear error instead of waiting for a peer that will never come
(docs/distributed.md, "Failure").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import torch

from certun.errors import CertunError, InvalidParameterError, UnlearningRunError

__all__ = ["Comm", "collective_backend", "digest", "reduce_buffer"]


def _dist() -> Any:
    import torch.distributed as dist

    return dist


class Comm:
    """The default process group as certun uses it: rank, world size, backend, and checked collectives."""

    def __init__(self) -> None:
        dist = _dist()
        if not (dist.is_available() and dist.is_initialized()):
            raise InvalidParameterError("distributed", "<no process group>", "a run inside an initialised "
                                        "torch.distributed process group (torchrun, then "
                                        "torch.distributed.init_process_group)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        get_config = getattr(dist, "get_backend_config", None)
        kind, self.backend = collective_backend(str(get_config() if get_config else dist.get_backend()))
        # gloo reduces CPU tensors; nccl only device tensors
        self.device = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except CertunError:
            raise
        except RuntimeError as exc:  # DistBackendError, timeouts and closed connections all derive from it
            lost = UnlearningRunError(f"distributed run: a peer rank failed or was lost during {what} ({exc}); "
                                      "no certificate was issued")
            lost.peer_lost = True  # type: ignore[attr-defined]  # a crash elsewhere: checkpoints are kept
            raise lost from exc

    def gather(self, obj: Any, what: str) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (each tagged with ``what``: see :meth:`_in_step`)."""
        out: list[Any] = [None] * self.world
        self._call(what, lambda: _dist().all_gather_object(out, (what, obj)))
        self._in_step(what, [row[0] for row in out])
        return [row[1] for row in out]

    def broadcast(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` on every rank (sent inside the process group, tagged with ``what``)."""
        box = [(what, obj) if self.rank == 0 else None]
        self._call(what, lambda: _dist().broadcast_object_list(box, src=0))
        self._in_step(what, [box[0][0]])
        return box[0][1]

    def _in_step(self, what: str, tags: list[str]) -> None:
        """Refuse a collective whose peers are at another one: a rank that failed or returned outside any
        agreement would otherwise pair its next collective with this one, and one rank's data would be read
        as another thing (an identifier list as an error message, say)."""
        if any(tag != what for tag in tags):
            raise UnlearningRunError(f"distributed run: the ranks are out of step (this rank is at {what}, a peer at "
                                     f"{sorted(set(tags) - {what})}): a rank failed or returned outside an "
                                     "agreement; no certificate was issued")

    def agree(self, error: BaseException | None, what: str) -> None:
        """All ranks learn whether any failed at ``what``; every rank raises if one did (its own error first).

        Where a rank failed by a crash (not a certun error: it keeps its checkpoint for the resume), every rank's
        error is marked ``peer_lost`` so every rank keeps its own: one rank's file alone could never be resumed.
        """
        mine = None if error is None else (_describe(error), isinstance(error, CertunError))
        failed = self.gather(mine, what)
        crashed = any(e is not None and not e[1] for e in failed)
        if error is not None:
            if crashed and isinstance(error, CertunError):
                error.peer_lost = True  # type: ignore[attr-defined]
            raise error
        bad = [(r, e[0]) for r, e in enumerate(failed) if e is not None]
        if bad:
            rank, message = bad[0]
            stop = UnlearningRunError(f"distributed run: rank {rank} failed during {what}: {message}; "
                                      "no certificate was issued")
            stop.peer_lost = crashed  # type: ignore[attr-defined]  # checkpoints kept as the crashed rank keeps its
            raise stop

    def sum(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """``t`` summed over the ranks (float64 in, float64 out, on ``t``'s device)."""
        buf = t.to(self.device, torch.float64, copy=True)
        self._call(what, lambda: _dist().all_reduce(buf))
        return buf.to(t.device)

    def sum_(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """The float64 ``t`` summed over the ranks IN PLACE: no copy where ``t`` already lies on the collectives'
        device (the gradient's d + 2 values every step), one there and back otherwise."""
        if t.device == self.device:
            self._call(what, lambda: _dist().all_reduce(t))
            return t
        return t.copy_(self.sum(t, what))

    def concat(self, shard: torch.Tensor, counts: list[int], what: str) -> torch.Tensor:
        """The ranks' shards (``counts[r]`` values each) concatenated in rank order, on every rank."""
        width = max(counts)
        buf = torch.zeros(width, dtype=shard.dtype, device=self.device)
        buf[:shard.numel()] = shard.to(self.device)
        out = [torch.empty_like(buf) for _ in range(self.world)]
        self._call(what, lambda: _dist().all_gather(out, buf))
        return torch.cat([o[:n] for o, n in zip(out, counts, strict=True)]).to(shard.device)


def reduce_buffer(buf: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """``buf`` again when it holds ``n`` float64 values on ``device``, else a new one: a run reuses one buffer for
    its per-step reductions instead of allocating (and first touching) ``n`` values each step."""
    if buf is None or buf.numel() != n or buf.device != device:
        buf = torch.empty(n, dtype=torch.float64, device=device)
    return buf


def collective_backend(config: str) -> tuple[str, str]:
    """``(device type, backend)`` that carries certun's collectives in a group whose backend torch describes as
    ``config``: ``"gloo"``, ``"nccl"``, or the per-device form ``"cpu:gloo,cuda:nccl"`` (what a group made
    without a backend gets; ``get_backend`` then says ``"undefined"``). CPU tensors when the group can reduce
    them, else CUDA ones; the backend named is the one recorded in the certificate.

    Raises:
        InvalidParameterError: a backend name a certificate cannot record, before any work.
    """
    pairs = dict(part.split(":", 1) if ":" in part else ("", part) for part in config.strip().split(","))
    if "" in pairs:  # a plain name: nccl reduces device tensors only
        kind, name = ("cuda" if pairs[""] == "nccl" else "cpu"), pairs[""]
    else:
        kind = "cpu" if "cpu" in pairs else "cuda" if "cuda" in pairs else ""
        name = pairs.get(kind, "")
    if not (kind and _BACKEND.fullmatch(name) and name != "undefined"):
        raise InvalidParameterError("distributed", f"<process group backend {config!r}>",
                                    "a process group whose backend reduces CPU or CUDA tensors (gloo, nccl, mpi, ...)")
    return kind, name


_BACKEND = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def digest(data: bytes) -> str:
    """A short hex digest, to compare what ranks hold without sending it."""
    return hashlib.sha256(data).hexdigest()
