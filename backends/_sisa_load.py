"""Rebuilding a SISA ensemble from its checkpoint folder, in a new process, to serve further deletions.

What the folder holds (``manifest.json`` sealed by an HMAC under a key derived from the salt, and the
``S × R`` checkpoints): the training settings, a keyed commitment to the seed, each shard's
initialisation root, a keyed digest of the data still held, the number of deletions served and each
checkpoint's ``model_digest`` root. What the owner re-supplies: the salt and seed (secrets, never
stored), the model factory, the configuration and the data still held. Every re-supplied part is
checked against the manifest, and every checkpoint against its root, before any model is trained;
the reloaded ensemble is then the one the training process held, bit for bit
(docs/theory.md#exact-routes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from certun.backends import _sisa_checkpoints as ckpt
from certun.backends import _sisa_manifest as man
from certun.backends._sisa_checkpoints import SisaCheckpointError
from certun.backends._sisa_parts import SisaConfig, _check_int, _check_salt
from certun.errors import InvalidParameterError

if TYPE_CHECKING:
    from os import PathLike

    from certun.backends.sisa import Sisa

__all__ = ["load"]


def load(cls: type[Sisa], checkpoint_dir: str | PathLike[str], model_factory: Callable[[], nn.Module],
         config: SisaConfig, x: torch.Tensor, y: torch.Tensor, ids: Sequence[Any], *, salt: bytes, seed: int,
         device: str | torch.device = "cpu") -> Sisa:
    """The ``Sisa`` whose checkpoints are in ``checkpoint_dir`` (see :meth:`certun.backends.sisa.Sisa.load`).

    Raises:
        SisaCheckpointError: no manifest, a wrong salt or an edited manifest (its tag fails), an
            interrupted training or deletion, or a checkpoint missing, malformed, edited or swapped.
        InvalidParameterError: a bad argument, or a seed, config, data or model factory other than
            the recorded ones.
    """
    if checkpoint_dir is None:
        raise InvalidParameterError("checkpoint_dir", None, "the folder a Sisa(checkpoint_dir=...) trained in")
    sisa = cls(model_factory, config, salt=_check_salt(salt), seed=_check_int("seed", seed, 0), device=device,
               checkpoint_dir=checkpoint_dir)
    directory = sisa.checkpoint_dir
    assert directory is not None
    with ckpt.folder_lock(directory, shared=True):  # no training or deletion changes the files meanwhile
        manifest = man.read_sealed(directory, salt)
        _check_settings(manifest, sisa)
        roots = _complete_roots(manifest, directory, config)
        sisa._set_data(x, y, ids)
        if manifest.get("data") != sisa._data:
            raise InvalidParameterError(
                "data", f"<{len(sisa._ids)} records>",
                f"the {_records(manifest)} records the checkpoints in {directory} were trained on, less every "
                "record deleted since (rows in any order; identifiers, features and labels unchanged)")
        finals = [_verified_states(directory, s, roots[s])[-1] for s in range(config.shards)]
    sisa._init_roots = _init_roots(manifest, sisa)
    sisa.models = []
    for s, state in enumerate(finals):
        model = sisa._fresh_model(s)
        model.load_state_dict(state)
        sisa.models.append(model)
    sisa.checkpoint_roots = [list(r) for r in roots]
    sisa.checkpoints = [[] for _ in range(config.shards)]
    sisa._deletions = manifest["deletions"]
    return sisa


def _check_settings(manifest: Mapping[str, Any], sisa: Sisa) -> None:
    """The seed and every configuration field must be those recorded (the tag has been checked)."""
    if manifest.get("seed_commitment") != sisa._seed_commitment():
        raise InvalidParameterError("seed", "<secret>", "the seed the checkpoints were trained with")
    for name, value in dataclasses.asdict(sisa.config).items():
        if name not in manifest or manifest[name] != value:
            raise InvalidParameterError("config", f"<{name}={value!r}>",
                                        f"the recorded {name}={manifest.get(name)!r}")
    if not isinstance(manifest.get("deletions"), int) or not isinstance(manifest.get("init_roots"), list):
        raise SisaCheckpointError("SISA manifest records no deletion count or initialisations")


def _complete_roots(manifest: Mapping[str, Any], directory: Path, config: SisaConfig) -> list[list[str]]:
    """Every checkpoint's root, refused when one is missing (an interrupted training or deletion)."""
    roots = [[man.manifest_root(manifest, s, r) for r in range(config.slices)] for s in range(config.shards)]
    missing = [ckpt.checkpoint_name(s, r) for s in range(config.shards) for r in range(config.slices)
               if roots[s][r] is None]
    if missing or len(manifest["checkpoints"]) != config.shards * config.slices:
        raise SisaCheckpointError(
            f"SISA manifest in {directory} lacks {', '.join(missing) or 'a consistent checkpoint list'}: the folder "
            "was left by an interrupted training or deletion and cannot be reloaded; train again with fit()")
    return roots  # type: ignore[return-value]


def _verified_states(directory: Path, shard: int, roots: Sequence[str]) -> list[dict[str, torch.Tensor]]:
    """Read every checkpoint of ``shard`` against its root; keeps only the last state in memory."""
    state: dict[str, torch.Tensor] = {}
    for r, root in enumerate(roots):
        state = ckpt.load_checkpoint(directory, shard, r, root)
    return [state]


def _init_roots(manifest: Mapping[str, Any], sisa: Sisa) -> list[str]:
    """Each shard's fresh model must be the recorded initialisation (same factory, same seed)."""
    recorded = manifest["init_roots"]
    roots = [ckpt.state_root(sisa._fresh_model(s).state_dict()) for s in range(sisa.config.shards)]
    for s, root in enumerate(roots):
        if s >= len(recorded) or recorded[s] != root:
            raise InvalidParameterError(
                "model_factory", getattr(sisa.model_factory, "__name__", "<callable>"),
                f"the factory the checkpoints were trained from (shard {s}'s initialisation differs)")
    if len(recorded) != len(roots):
        raise SisaCheckpointError("SISA manifest records another number of initialisations than shards")
    return roots


def _records(manifest: Mapping[str, Any]) -> Any:
    data = manifest.get("data")
    return data.get("records") if isinstance(data, dict) else "?"
