"""The owner's SISA manifest: what a checkpoint folder records about its training, sealed with an HMAC.

The manifest (``manifest.json``, mode 0o600) records the training settings, a keyed commitment to the
seed, the root of each shard's initialisation, a keyed digest of the data the checkpoints now
represent, the number of deletions served, and each checkpoint's ``model_digest`` root. Its ``tag`` is
HMAC-SHA256 over the canonical JSON of everything else under a key derived from the assignment salt,
so without the salt nobody can edit, swap or forge it; each checkpoint's root is then checked when the
file is read. Nothing in it names a record: the data digest is keyed by the salt too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from certun.backends._sisa_checkpoints import (
    MANIFEST,
    SisaCheckpointError,
    atomic_write,
    checkpoint_name,
    read_private,
)
from certun.certificates.provenance import strict_loads
from certun.errors import CertificateFormatError

__all__ = ["MANIFEST_FORMAT", "MAX_MANIFEST_BYTES", "data_record", "describes", "manifest_root", "read_manifest",
           "read_sealed", "row_digests", "seal", "seed_commitment", "write_manifest"]

MANIFEST_FORMAT = "certun.sisa.checkpoints.v2"
_HMAC = "hmac-sha256:"
#: Largest manifest read (about 300 000 checkpoints): a bigger file is refused before it is parsed.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


def _subkey(salt: bytes, purpose: str) -> bytes:
    """A key for one purpose derived from the assignment salt (never the salt itself)."""
    return hmac.new(salt, b"certun.sisa.key.v1\x00" + purpose.encode(), hashlib.sha256).digest()


def seed_commitment(salt: bytes, seed: int) -> str:
    """Binds the manifest to the seed without revealing it (keyed by the secret salt)."""
    data = b"certun.sisa.seed-commitment.v1\x00" + str(seed).encode()
    return _HMAC + hmac.new(salt, data, hashlib.sha256).hexdigest()


def _rows(t: Any) -> np.ndarray:
    """The bytes of each row of a tensor (little-endian host order), one row per line."""
    tensor = torch.as_tensor(t).detach().cpu().contiguous()
    flat = tensor.reshape(len(tensor), -1)
    return flat.view(torch.uint8).numpy() if flat.element_size() and flat.shape[1] else np.zeros((len(flat), 0),
                                                                                                 np.uint8)


def row_digests(x: Any, y: Any, encoded_ids: Sequence[bytes]) -> list[bytes]:
    """SHA-256 of each record (identifier, features, label), so a deletion only drops digests."""
    xs, ys = _rows(x), _rows(y)
    out = []
    for i, enc in enumerate(encoded_ids):
        h = hashlib.sha256(len(enc).to_bytes(8, "little") + enc)
        h.update(xs[i].tobytes())
        h.update(ys[i].tobytes())
        out.append(h.digest())
    return out


def data_record(salt: bytes, x: Any, y: Any, digests: Sequence[bytes]) -> dict[str, Any]:
    """``{"records": n, "digest": ...}``: a keyed digest of the data, independent of the row order."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    layout = json.dumps([str(x.dtype), list(x.shape[1:]), str(y.dtype), list(y.shape[1:])]).encode()
    h = hmac.new(_subkey(salt, "data"), layout, hashlib.sha256)
    for digest in sorted(digests):
        h.update(digest)
    return {"records": len(digests), "digest": _HMAC + h.hexdigest()}


def _tag(body: Mapping[str, Any], salt: bytes) -> str:
    text = json.dumps({k: v for k, v in body.items() if k != "tag"}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)
    return _HMAC + hmac.new(_subkey(salt, "manifest"), text.encode(), hashlib.sha256).hexdigest()


def seal(body: Mapping[str, Any], salt: bytes) -> dict[str, Any]:
    """``body`` with its integrity ``tag``."""
    return {**body, "tag": _tag(body, salt)}


def _entries(roots: list[list[str]]) -> list[dict[str, Any]]:
    return [{"shard": s, "stage": r, "file": checkpoint_name(s, r), "root": root}
            for s, shard_roots in enumerate(roots) for r, root in enumerate(shard_roots)]


def describes(manifest: Mapping[str, Any], header: Mapping[str, Any], roots: list[list[str]]) -> bool:
    """Whether ``manifest`` records exactly ``header`` and the checkpoints ``roots`` (nobody wrote it since)."""
    return all(manifest.get(k) == v for k, v in header.items()) and manifest.get("checkpoints") == _entries(roots)


def write_manifest(directory: Path, header: Mapping[str, Any], roots: list[list[str]], *, salt: bytes) -> None:
    """Write the sealed manifest atomically (mode 0o600): ``header`` plus one entry per checkpoint."""
    body = seal({"format": MANIFEST_FORMAT, **header, "checkpoints": _entries(roots)}, salt)
    atomic_write(directory / MANIFEST, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed manifest, strictly (no duplicate keys, no NaN), not yet authenticated.

    Raises:
        SisaCheckpointError: missing or malformed manifest, or not a regular file of at most
            ``MAX_MANIFEST_BYTES``.
    """
    path = directory / MANIFEST
    data = read_private(path, MAX_MANIFEST_BYTES)  # a FIFO, device, link or huge file is refused unread
    try:
        body = strict_loads(data)
    except (OSError, ValueError, RecursionError, CertificateFormatError) as exc:
        raise SisaCheckpointError(f"SISA manifest {path} cannot be read: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != MANIFEST_FORMAT or not isinstance(
            body.get("checkpoints"), list):
        raise SisaCheckpointError(f"SISA manifest {path} is not a {MANIFEST_FORMAT} manifest")
    return body


def read_sealed(directory: Path, salt: bytes) -> dict[str, Any]:
    """The manifest, refused unless its tag verifies under ``salt`` (checked before anything in it is used).

    Raises:
        SisaCheckpointError: missing, malformed, or its integrity tag fails (wrong salt, edited, forged).
    """
    body = read_manifest(directory)
    tag = body.get("tag")
    if not isinstance(tag, str) or not hmac.compare_digest(tag.encode(), _tag(body, salt).encode()):
        raise SisaCheckpointError(
            f"SISA manifest {directory / MANIFEST} fails its integrity tag under this salt: the salt is "
            "wrong, or the manifest was edited or forged; nothing was loaded or retrained")
    return body


def manifest_root(manifest: Mapping[str, Any], shard: int, stage: int) -> str | None:
    """Root the manifest records for ``(shard, stage)``, or ``None`` when it lists none."""
    for entry in manifest["checkpoints"]:
        if (isinstance(entry, dict) and entry.get("shard") == shard and entry.get("stage") == stage
                and entry.get("file") == checkpoint_name(shard, stage)):
            root = entry.get("root")
            return root if isinstance(root, str) else None
    return None
