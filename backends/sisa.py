"""SISA: sharded, sliced training so that a deletion retrains only what it touched (an exact route).

Bourtoule et al., "Machine Unlearning" (IEEE S&P 2021). Identifiers go to ``S`` shards and, inside a
shard, to ``R`` slices by a keyed hash of the identifier (never its content, so deleting records
moves nobody). Shard ``s`` is trained in ``R`` stages: stage ``r`` trains on the shard's slices
``0..r`` (``cumulative=True``, as in the paper) or on slice ``r`` alone, starting from the checkpoint
of stage ``r − 1``. Deleting records of shard ``s`` whose earliest slice is ``r`` restarts ``s`` from
the checkpoint of stage ``r − 1``, which never saw them, and trains stages ``r..R−1`` without them.

Every piece of randomness (initialisation, shuffling) is keyed by ``(seed, shard, stage)`` and the
data of a stage is ordered by identifier, so the result is *bit-identical* to SISA training on
``D ∖ D_f`` from the start with the same salt and seed: ε = δ = 0 (docs/theory.md#exact-routes).
The ensemble predicts with the mean of the shard models' softmax outputs.

The salt and the manifest (which identifier is in which shard and slice, checkpoint digests) are the
owner's private records: with the salt, anyone could tell from the set of retrained shards which
shard a deleted identifier lived in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from certun.backends import _sisa_checkpoints as ckpt
from certun.backends import _sisa_manifest as man
from certun.backends._sisa_checkpoints import SisaCheckpointError
from certun.backends._sisa_parts import (
    SisaConfig,
    SisaEnsemble,
    SisaUnlearning,
    _check_data,
    _check_device,
    _check_int,
    _check_layout,
    _check_salt,
    _encode,
    _state_root,
    assign,
    ensemble_digest,
)
from certun.errors import InvalidParameterError

if TYPE_CHECKING:
    from os import PathLike

    from certun.sisa_certificate import SisaCertificate

__all__ = ["Sisa", "SisaCheckpointError", "SisaConfig", "SisaEnsemble", "SisaUnlearning", "assign", "ensemble_digest"]

_SEED_TAG = b"certun.sisa.seed.v1\x00"


class Sisa:
    """Trains a SISA ensemble on ``(x, y, ids)`` and serves deletion requests exactly.

    Args:
        model_factory: builds a freshly initialised model; called once per shard under a keyed
            ``torch.manual_seed`` so initialisation reproduces.
        config: shards, slices and the SGD of each stage.
        salt: the assignment key (≥ 16 bytes, private); fresh from the OS when ``None``.
        seed: the training randomness (initialisation, shuffling); fresh when ``None``.
        device: where to train.
        checkpoint_dir: when given, each stage's checkpoint is written there as
            ``shard-{s}-stage-{r}.safetensors`` (mode 0o600) with an owner-private ``manifest.json`` of
            their ``model_digest`` roots, sealed by an HMAC under a key derived from ``salt``, instead
            of being kept in memory; ``unlearn`` restarts from the file and refuses one whose digest
            differs from the manifest. :meth:`load` rebuilds the ensemble from the folder in a new process.
    """

    def __init__(self, model_factory: Callable[[], nn.Module], config: SisaConfig, *, salt: bytes | None = None,
                 seed: int | None = None, device: str | torch.device = "cpu",
                 checkpoint_dir: str | PathLike[str] | None = None) -> None:
        if not callable(model_factory):
            raise InvalidParameterError("model_factory", type(model_factory).__name__, "a callable building a model")
        if not isinstance(config, SisaConfig):
            raise InvalidParameterError("config", type(config).__name__, "a SisaConfig")
        self.model_factory = model_factory
        self.config = config
        self.salt = secrets.token_bytes(32) if salt is None else _check_salt(salt)
        self.seed = secrets.randbits(63) if seed is None else _check_int("seed", seed, 0)
        self.device = _check_device(device)
        if checkpoint_dir is not None and (not isinstance(checkpoint_dir, (str, os.PathLike))
                                           or not os.fspath(checkpoint_dir)):
            raise InvalidParameterError("checkpoint_dir", checkpoint_dir, "a folder path (not empty) or None")
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        #: checkpoint_roots[s][r]: model_digest root of checkpoint (s, r) as written (disk mode only).
        self.checkpoint_roots: list[list[str]] = []
        self.models: list[nn.Module] = []
        #: checkpoints[s][r]: state dict after stage r of shard s (kept privately by the owner).
        self.checkpoints: list[list[dict[str, torch.Tensor]]] = []
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._ids: list[Any] = []
        self._rows: dict[Any, int] = {}
        self._shard = np.zeros(0, dtype=np.int64)
        self._slice = np.zeros(0, dtype=np.int64)
        self.gradient_evaluations = 0
        self._last_unlearning: SisaUnlearning | None = None
        #: what the manifest records besides the checkpoints (disk mode only)
        self._init_roots: list[str] = []
        self._row_digests: list[bytes] = []
        self._data: dict[str, Any] = {}
        self._deletions = 0
        #: set while a fit or deletion runs: one that did not finish leaves shards that saw deleted records
        self._interrupted = False

    @classmethod
    def load(cls, checkpoint_dir: str | PathLike[str], model_factory: Callable[[], nn.Module], config: SisaConfig,
             x: torch.Tensor, y: torch.Tensor, ids: Sequence[Any], *, salt: bytes, seed: int,
             device: str | torch.device = "cpu") -> Sisa:
        """Rebuild a ``Sisa`` trained with ``checkpoint_dir`` (in any process) to serve further deletions.

        The folder supplies the checkpoints; the owner re-supplies the secrets (``salt``, ``seed``), the
        ``model_factory``, the ``config`` and the data still held (every record deleted so far removed,
        rows in any order). Each is checked against the sealed manifest and refused, before any
        training, when it differs; so is a wrong salt, an edited or swapped manifest or checkpoint, and
        a folder left by an interrupted training or deletion. See :mod:`certun.backends._sisa_load`.
        """
        from certun.backends._sisa_load import load

        return load(cls, checkpoint_dir, model_factory, config, x, y, ids, salt=salt, seed=seed, device=device)

    # ----------------------------------------------------------------------------------- training
    def fit(self, x: torch.Tensor, y: torch.Tensor, ids: Sequence[Any]) -> SisaEnsemble:
        """Train every shard through all its stages on ``(x, y)`` with one identifier per row."""
        _check_layout(self.config, len(_check_data(x, y, ids)))
        self._set_data(x, y, ids)
        self.models, self.checkpoints, self.checkpoint_roots = [], [], []
        self.gradient_evaluations = 0
        self._last_unlearning = None
        self._deletions = 0
        self._interrupted = True
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with ckpt.folder_lock(self.checkpoint_dir):
            if self.checkpoint_dir is not None:
                for path in ckpt.stale_files(self.checkpoint_dir):
                    path.unlink()
                self._init_roots = [ckpt.state_root(self._fresh_model(s).state_dict())
                                    for s in range(self.config.shards)]
            for s in range(self.config.shards):
                model = self._fresh_model(s)
                self.models.append(model)
                self.checkpoints.append([])
                self.checkpoint_roots.append([])
                self.gradient_evaluations += self._train_from(s, 0, model)
        self._interrupted = False
        return self.ensemble

    def _set_data(self, x: torch.Tensor, y: torch.Tensor, ids: Sequence[Any]) -> None:
        """Validate and hold the training data, assign each identifier, digest each record (disk mode)."""
        self._x, self._y, self._ids = x, y, _check_data(x, y, ids)
        self._rows = {i: row for row, i in enumerate(self._ids)}
        self._shard, self._slice = assign(self._ids, shards=self.config.shards, slices=self.config.slices,
                                          salt=self.salt)
        self._alive = np.ones(len(self._ids), dtype=bool)
        if self.checkpoint_dir is not None:
            self._row_digests = man.row_digests(x, y, [_encode(i) for i in self._ids])
            self._data = man.data_record(self.salt, x, y, self._row_digests)

    @property
    def ensemble(self) -> SisaEnsemble:
        """The current shard models as one module (shares their parameters)."""
        return SisaEnsemble(self.models)

    def shard_ids(self, shard: int) -> list[Any]:
        """Identifiers currently held by ``shard`` (owner-private)."""
        return [self._ids[r] for r in np.flatnonzero(self._alive & (self._shard == shard))]

    def _fresh_model(self, shard: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._key("init", shard, 0))
            model = self.model_factory()
        if not isinstance(model, nn.Module):
            raise InvalidParameterError("model_factory", type(model).__name__, "a callable returning an nn.Module")
        return model.to(self.device)

    def _key(self, what: str, shard: int, stage: int) -> int:
        data = f"{what}:{self.seed}:{shard}:{stage}".encode()
        return int.from_bytes(hashlib.sha256(_SEED_TAG + data).digest()[:8], "little") >> 1

    def _stage_rows(self, shard: int, stage: int) -> np.ndarray:
        in_shard = self._alive & (self._shard == shard)
        in_stage = self._slice <= stage if self.config.cumulative else self._slice == stage
        rows = np.flatnonzero(in_shard & in_stage)
        # order by encoded identifier so the stage's data does not depend on row positions
        return rows[np.argsort([_encode(self._ids[r]) for r in rows], kind="stable")] if len(rows) else rows

    def _train_from(self, shard: int, stage: int, model: nn.Module) -> int:
        """Train ``model`` of ``shard`` through stages ``stage..R−1``, checkpointing each; returns sample gradients."""
        from certun.demo.models import fit

        assert self._x is not None and self._y is not None
        c = self.config
        spent = 0
        self._drop_checkpoints({shard: stage})
        for r in range(stage, c.slices):
            rows = self._stage_rows(shard, r)
            if len(rows):
                index = torch.as_tensor(rows)
                dataset = torch.utils.data.TensorDataset(self._x[index], self._y[index])
                generator = torch.Generator()
                generator.manual_seed(self._key("shuffle", shard, r))
                loader = torch.utils.data.DataLoader(dataset, batch_size=c.batch_size, shuffle=True,
                                                     generator=generator)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self._key("train", shard, r))
                    fit(model, loader, epochs=c.epochs_per_stage, lr=c.lr, momentum=c.momentum, device=self.device)
                spent += len(rows) * c.epochs_per_stage
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.checkpoint_dir is None:
                self.checkpoints[shard].append(state)
            else:
                self.checkpoint_roots[shard].append(ckpt.write_checkpoint(self.checkpoint_dir, shard, r, state))
                self._write_manifest()
        return spent

    def _drop_checkpoints(self, restart: Mapping[int, int]) -> None:
        """Forget the checkpoints of every stage about to be retrained (they saw the deleted records).

        On disk the manifest stops listing them before the files go, for every shard at once: a process
        that dies mid-deletion leaves a folder that reloads as interrupted, never one whose untouched
        shards still hold checkpoints trained on a record the manifest records as deleted.
        """
        for shard, stage in restart.items():
            del self.checkpoints[shard][stage:]
        if self.checkpoint_dir is None:
            return
        stale = [(s, r) for s, stage in restart.items() for r in range(stage, len(self.checkpoint_roots[s]))]
        for shard, stage in restart.items():
            del self.checkpoint_roots[shard][stage:]
        self._write_manifest()
        for shard, r in stale:
            ckpt.remove_checkpoint(self.checkpoint_dir, shard, r)

    def _write_manifest(self) -> None:
        """Record the settings, seed commitment, initialisations, data, deletions and checkpoints, sealed."""
        assert self.checkpoint_dir is not None
        man.write_manifest(self.checkpoint_dir, self._header(), self.checkpoint_roots, salt=self.salt)

    def _header(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.config), "seed_commitment": self._seed_commitment(),
                "init_roots": list(self._init_roots), "data": dict(self._data), "deletions": self._deletions}

    def _seed_commitment(self) -> str:
        """Binds the manifest to this salt and seed without revealing either (keyed by the secret salt)."""
        return man.seed_commitment(self.salt, self.seed)

    def _verified_restarts(self, restart: Mapping[int, int]) -> dict[int, dict[str, torch.Tensor]]:
        """Every checkpoint ``restart`` needs, read and verified before anything changes (a refusal changes nothing).

        In checkpoint_dir mode the sealed manifest must still describe this ensemble: same seed, settings,
        data, deletions and checkpoints (so a folder another process served or trained from is refused).
        """
        if self.checkpoint_dir is not None:
            manifest = man.read_sealed(self.checkpoint_dir, self.salt)
            if manifest.get("seed_commitment") != self._seed_commitment():
                raise ckpt.SisaCheckpointError(f"SISA manifest in {self.checkpoint_dir} belongs to another salt or "
                                               "seed; nothing was retrained")
            if not man.describes(manifest, self._header(), self.checkpoint_roots):
                raise ckpt.SisaCheckpointError(
                    f"SISA manifest in {self.checkpoint_dir} records other data, deletions, settings or checkpoints "
                    "than this ensemble holds: another process trained or served a deletion from the folder since "
                    "(or it was modified); reload it with Sisa.load; nothing was retrained")
        return {s: self._restart_state(s, r - 1) for s, r in restart.items() if r > 0}

    def _restart_state(self, shard: int, stage: int) -> dict[str, torch.Tensor]:
        """The verified checkpoint after ``stage`` of ``shard`` (from disk in checkpoint_dir mode)."""
        if self.checkpoint_dir is None:
            return self.checkpoints[shard][stage]
        manifest = man.read_sealed(self.checkpoint_dir, self.salt)
        expected = self.checkpoint_roots[shard][stage]
        if man.manifest_root(manifest, shard, stage) != expected:
            raise ckpt.SisaCheckpointError(
                f"SISA manifest in {self.checkpoint_dir} does not record checkpoint "
                f"{ckpt.checkpoint_name(shard, stage)} with root {expected} (modified); nothing was retrained")
        state = ckpt.load_checkpoint(self.checkpoint_dir, shard, stage, expected)
        return {k: v.to(self.device) for k, v in state.items()}

    # ----------------------------------------------------------------------------------- unlearning
    def unlearn(self, forget_ids: Iterable[Any]) -> SisaUnlearning:
        """Delete ``forget_ids`` exactly: retrain each affected shard from before its earliest affected slice.

        Raises:
            InvalidParameterError: an identifier that is not (or no longer) in the training set, the
                model was never trained, or its last fit or deletion was interrupted.
        """
        if self._x is None:
            raise InvalidParameterError("forget_ids", "<untrained SISA>", "call fit() before unlearn()")
        self._check_complete()
        forget = list(forget_ids)
        rows = []
        for i in forget:
            row = self._rows.get(i)
            if row is None or not self._alive[row]:
                raise InvalidParameterError("forget_ids", i, "identifiers of records still in the training set")
            rows.append(row)
        rows_arr = np.asarray(sorted(set(rows)), dtype=np.int64)
        full = self._full_cost()
        ids_before = {s: tuple(self.shard_ids(s)) for s in range(self.config.shards)}
        model_before = ensemble_digest(self.ensemble)
        restart: dict[int, int] = {}
        for row in rows_arr:
            s, r = int(self._shard[row]), int(self._slice[row])
            restart[s] = min(restart.get(s, r), r)
        with ckpt.folder_lock(self.checkpoint_dir):
            spent, restarted_from = self._retrain(restart, rows_arr)
        ids_after = {s: tuple(self.shard_ids(s)) for s in range(self.config.shards)}
        touched = tuple(sorted(restart))
        self._last_unlearning = SisaUnlearning(
            forgotten=len(rows_arr), retrained_shards=touched,
            untouched_shards=tuple(s for s in range(self.config.shards) if s not in restart),
            restart_stage=dict(restart), restarted_from=restarted_from, gradient_evaluations=spent,
            full_retraining_evaluations=full,
            shard_ids_before=ids_before, shard_ids_after=ids_after,
            model_before=model_before)
        return self._last_unlearning

    def _retrain(self, restart: Mapping[int, int], rows: np.ndarray) -> tuple[int, dict[int, str | None]]:
        """Mark ``rows`` deleted and retrain each shard of ``restart`` from its stage; returns the work and sources."""
        restart_states = self._verified_restarts(restart)
        self._interrupted = True  # until every shard of ``restart`` is retrained
        self._alive[rows] = False
        if self.checkpoint_dir is not None:  # the manifest now describes the data without these records
            self._deletions += 1
            self._data = man.data_record(self.salt, self._x, self._y,
                                         [self._row_digests[r] for r in np.flatnonzero(self._alive)])
        self._drop_checkpoints(restart)
        spent = 0
        restarted_from: dict[int, str | None] = {}
        for s, r in sorted(restart.items()):
            model = self.models[s]
            if r == 0:
                model = self._fresh_model(s)
                self.models[s] = model
                restarted_from[s] = None
            else:
                model.load_state_dict(restart_states[s])
                restarted_from[s] = _state_root(restart_states[s])
            spent += self._train_from(s, r, model)
        self.gradient_evaluations += spent
        if self.checkpoint_dir is not None:
            self._write_manifest()
        self._interrupted = False
        return spent, restarted_from

    def _check_complete(self) -> None:
        """Refuse to serve or certify after a fit or deletion that did not finish (its shards are mixed)."""
        if self._interrupted:
            raise InvalidParameterError(
                "sisa", "<interrupted>", "an ensemble whose last fit() or unlearn() finished",
                hint="a training or deletion stopped midway, so some shards may still depend on deleted "
                "records; train again with fit() on the data still held")

    def retained_ids(self) -> list[Any]:
        """Identifiers of every record still in the training set (owner-private)."""
        return [self._ids[r] for r in np.flatnonzero(self._alive)]

    def certify(self, report: SisaUnlearning, forget_ids: Iterable[Any], *, eps: float, delta: float,
                previous: Mapping[str, Any] | bytes | str | PathLike[str] | None = None,
                certificate_path: str | PathLike[str] | None = None) -> SisaCertificate:
        """Issue the certificate of the deletion ``report`` describes (the latest one served).

        Returns a :class:`certun.sisa_certificate.SisaCertificate`: the certificate, the
        private opening of ``model_before`` when it is committed, and the Merkle trees for receipts.
        See :func:`certun.sisa_certificate.certify`.
        """
        from certun.sisa_certificate import certify

        self._check_complete()
        if report is not self._last_unlearning:
            raise InvalidParameterError("report", "<SisaUnlearning>", "the report of the latest unlearn() call",
                                        hint="the ensemble has moved on since; certify each deletion right after it")
        return certify(self, report, forget_ids, eps=eps, delta=delta, previous=previous,
                       certificate_path=certificate_path)

    def _full_cost(self) -> int:
        """Sample gradients of training every shard from scratch on the current data."""
        return sum(len(self._stage_rows(s, r)) * self.config.epochs_per_stage
                   for s in range(self.config.shards) for r in range(self.config.slices))


