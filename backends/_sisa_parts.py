"""The parts of SISA that hold no training state: keyed assignment, configuration, the ensemble module and
the report of one deletion (:mod:`certun.backends.sisa` builds on them; docs/theory.md#exact-routes)."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from certun._validation import integer
from certun.errors import InvalidParameterError

if TYPE_CHECKING:
    from certun.certificates import ModelDigest

__all__ = ["SisaConfig", "SisaEnsemble", "SisaUnlearning", "assign", "ensemble_digest"]

_ASSIGN_TAG = b"certun.sisa.assign.v1\x00"


def shard_ids_root(ids: Iterable[Any]) -> str:
    """An order-free digest of a shard's identifiers (owner-private: unsalted, so never published)."""
    h = hashlib.sha256(b"certun.sisa.shard-ids.v1\x00")
    for encoded in sorted(_encode(i) for i in ids):
        h.update(len(encoded).to_bytes(8, "little") + encoded)
    return h.hexdigest()


def _encode(record_id: Any) -> bytes:
    from certun.certificates.provenance import encode_id

    return encode_id(record_id)


def assign(ids: Iterable[Any], *, shards: int, slices: int, salt: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Shard and slice of each identifier: ``HMAC-SHA256(salt, tag || id)`` read as two 64-bit integers.

    The assignment of an identifier depends only on the identifier and the salt, so deleting other
    records never moves it (a deletion touches exactly the shards that held the deleted records).
    """
    _check_int("shards", shards, 1)
    _check_int("slices", slices, 1)
    _check_salt(salt)
    shard, slice_ = [], []
    for record_id in ids:
        digest = hmac.new(salt, _ASSIGN_TAG + _encode(record_id), hashlib.sha256).digest()
        shard.append(int.from_bytes(digest[:8], "little") % shards)
        slice_.append(int.from_bytes(digest[8:16], "little") % slices)
    return np.asarray(shard, dtype=np.int64), np.asarray(slice_, dtype=np.int64)


def _check_salt(salt: Any) -> bytes:
    """The assignment key: bytes, at least 16 of them (its value is never echoed: it is secret)."""
    if not isinstance(salt, bytes) or len(salt) < 16:
        raise InvalidParameterError("salt", f"<{type(salt).__name__}>", "at least 16 random bytes")
    return salt


def _check_data(x: Any, y: Any, ids: Any) -> list[Any]:
    """``ids`` as a list once ``x``, ``y`` (tensors) and ``ids`` (distinct) hold one entry per record."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor) or t.dim() < 1:
            raise InvalidParameterError(name, f"<{type(t).__name__}>", "a torch.Tensor with one row per record")
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise InvalidParameterError("ids", f"<{type(ids).__name__}>", "a list or tuple of record identifiers")
    ids = list(ids)
    if len(ids) != len(x) or len(y) != len(x):
        raise InvalidParameterError("ids", f"<{len(ids)} ids for {len(x)} rows, {len(y)} labels>",
                                    "one identifier and one label per row of x")
    try:
        distinct = len(set(ids)) == len(ids)
    except TypeError:
        raise InvalidParameterError("ids", "<unhashable identifiers>", "integers or strings") from None
    if not distinct:
        raise InvalidParameterError("ids", "<duplicates>", "distinct record identifiers")
    return ids


def _check_layout(config: SisaConfig, records: int) -> None:
    """At most one shard-slice per record: an empty shard is an untrained model in the ensemble."""
    if config.shards * config.slices > records:
        raise InvalidParameterError("config", f"<shards={config.shards}, slices={config.slices}>",
                                    f"shards x slices <= {records}, the number of records trained on")


def _check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` this machine has (a typo or a missing GPU fails before any work)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidParameterError("device", device, "cpu, cuda, cuda:N or a torch.device") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index is not None and dev.index >= torch.cuda.device_count())):
        raise InvalidParameterError("device", str(device), f"a device of this machine ({torch.cuda.device_count()} "
                                    "CUDA devices)")
    return dev


def _check_int(name: str, value: Any, lower: int) -> int:
    """``value`` as a Python int ``>= lower`` (certun's one integer check)."""
    return integer(name, value, f"an integer >= {lower}", low=lower)


@dataclass(frozen=True, kw_only=True)
class SisaConfig:
    """How SISA trains: ``shards`` (S), ``slices`` (R), and the plain SGD of each stage."""

    shards: int
    slices: int
    epochs_per_stage: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 128
    cumulative: bool = True

    def __post_init__(self) -> None:
        for name in ("shards", "slices", "epochs_per_stage", "batch_size"):
            # stored as plain ints: the configuration is recorded in the checkpoint manifest as JSON
            object.__setattr__(self, name, _check_int(name, getattr(self, name), 1))
        for name in ("lr", "momentum"):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < 0 or (name == "lr" and value == 0) or (name == "momentum" and value >= 1):
                raise InvalidParameterError(name, value, "a finite number, lr > 0 and 0 <= momentum < 1")
        if not isinstance(self.cumulative, bool):
            raise InvalidParameterError("cumulative", self.cumulative, "True or False")


class SisaEnsemble(nn.Module):
    """The shard models as one module: the mean of their softmax outputs (class probabilities)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.shards = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = [torch.softmax(m(x), dim=-1) for m in self.shards]
        return torch.stack(probs).mean(dim=0)


@dataclass(frozen=True)
class SisaUnlearning:
    """What serving one deletion request did: shards retrained and untouched, stages rerun, work spent."""

    forgotten: int
    retrained_shards: tuple[int, ...]
    untouched_shards: tuple[int, ...]
    restart_stage: Mapping[int, int]
    restarted_from: Mapping[int, str | None]
    gradient_evaluations: int
    full_retraining_evaluations: int
    #: identifiers of each shard before and after the deletion (owner-private: they feed the salted
    #: per-shard Merkle roots of the certificate, never the certificate itself).
    shard_ids_before: Mapping[int, tuple[Any, ...]] = field(default_factory=dict, repr=False)
    shard_ids_after: Mapping[int, tuple[Any, ...]] = field(default_factory=dict, repr=False)
    #: digest of the ensemble's state before the deletion (``shards.{s}.…`` names).
    model_before: ModelDigest | None = field(default=None, repr=False)

    @property
    def retain_roots_before(self) -> dict[int, str]:
        """Unsalted root of each shard's identifiers before the deletion (owner-private; derived, never stored)."""
        return {s: shard_ids_root(ids) for s, ids in self.shard_ids_before.items()}

    @property
    def retain_roots_after(self) -> dict[int, str]:
        """Unsalted root of each shard's identifiers after the deletion (owner-private; derived, never stored)."""
        return {s: shard_ids_root(ids) for s, ids in self.shard_ids_after.items()}

    @property
    def cost_ratio(self) -> float:
        """Gradient evaluations spent against a full SISA retraining (0 when nothing was touched)."""
        return self.gradient_evaluations / max(self.full_retraining_evaluations, 1)


def ensemble_digest(ensemble: nn.Module) -> ModelDigest:
    """:class:`certun.certificates.ModelDigest` of the ensemble's state dict (``shards.{s}.…`` names)."""
    from certun.certificates.provenance import model_digest

    return model_digest({k: v.detach().cpu() for k, v in ensemble.state_dict().items()})


def _state_root(state: Mapping[str, torch.Tensor]) -> str:
    from certun.certificates.provenance import model_digest

    return model_digest({k: v.detach().cpu() for k, v in state.items()}).root
