"""SISA stage checkpoints on disk: ``.safetensors`` files plus an owner-private ``manifest.json``.

Each checkpoint is written in the safetensors layout (8-byte little-endian header length, a JSON
header ``name -> {dtype, shape, data_offsets}``, raw little-endian bytes) by hand, so no new
dependency is needed; the files also read back with certun's ``verify --model`` safetensors reader
(tested). Reading here is strict (every offset checked) and any malformation is one typed error.
Files are written atomically (temporary file, fsync, rename) with mode ``0o600``: a checkpoint saw
training data. The manifest (:mod:`certun.backends._sisa_manifest`) records each checkpoint's
``certun.certificates.model_digest`` root, so a tampered or swapped file is refused before any work.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from certun.certificates.provenance import parse_safetensors
from certun.errors import CertificateFormatError, InvalidParameterError, UnlearningRunError

__all__ = ["MANIFEST", "SisaCheckpointError", "atomic_write", "checkpoint_name", "folder_lock", "load_checkpoint",
           "read_private", "remove_checkpoint", "state_root", "write_checkpoint"]

MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"shard-(\d+)-stage-(\d+)\.safetensors")
#: temporary files of :func:`atomic_write` that a killed process left behind
_TMP_RE = re.compile(r"\.(shard-\d+-stage-\d+\.safetensors|manifest\.json)\..+\.tmp")

_TORCH_TO_SAFETENSORS = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.int64: "I64",
                         torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                         torch.bool: "BOOL"}


class SisaCheckpointError(UnlearningRunError):
    """A SISA checkpoint on disk is missing, unreadable, or does not match its manifest digest.

    Raised before any record is marked deleted or any shard retrained, so the ensemble is unchanged.
    """


@contextlib.contextmanager
def folder_lock(directory: Path | None, *, shared: bool = False) -> Iterator[None]:
    """Hold an advisory lock on ``directory`` (``flock`` on the folder itself) while its files change.

    Exclusive while training or serving a deletion, ``shared`` while loading; refused at once, never
    waited for, when another process holds a conflicting lock, or when group or others may write to
    the folder (they could delete checkpoints or restore old ones). No-op without ``directory`` or where
    ``fcntl`` is missing (Windows: there one folder must not be served by two processes at once).

    Raises:
        SisaCheckpointError: another process holds the folder, or it is writable by group or others.
    """
    if directory is None or fcntl is None:
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise SisaCheckpointError(f"SISA checkpoint folder {directory} cannot be opened: {exc}") from exc
    try:
        if os.fstat(fd).st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise SisaCheckpointError(f"SISA checkpoint folder {directory} is writable by group or others, who "
                                      "could delete checkpoints or put back old ones; chmod it to 0o700")
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SisaCheckpointError(f"SISA checkpoint folder {directory} is in use by another process (training "
                                      "or serving a deletion); nothing was done, try again when it is done") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def checkpoint_name(shard: int, stage: int) -> str:
    """File name of the checkpoint after ``stage`` of ``shard``."""
    return f"shard-{shard}-stage-{stage}.safetensors"


def state_root(state: Mapping[str, Any]) -> str:
    """``model_digest`` root of a state dict (torch tensors or numpy arrays digest alike)."""
    from certun.certificates.provenance import model_digest

    return model_digest({k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                         for k, v in state.items()}).root


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a private temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_private(path: Path, limit: int | None = None) -> bytes:
    """The bytes of ``path``, a regular file of the folder: never through a symbolic link, nor from a
    FIFO or a device (reading those could hang or never end), nor more than ``limit`` bytes.

    Raises:
        SisaCheckpointError: missing, not a regular file, or larger than ``limit``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if os.path.islink(path):
        raise SisaCheckpointError(f"SISA file {path} is a symbolic link, not a regular file; nothing was loaded")
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise SisaCheckpointError(f"SISA file {path} cannot be opened as a regular file: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SisaCheckpointError(f"SISA file {path} is not a regular file; nothing was loaded")
        if limit is not None and info.st_size > limit:
            raise SisaCheckpointError(f"SISA file {path} has {info.st_size} bytes, more than the {limit} bytes "
                                      "read; nothing was loaded")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:
        raise SisaCheckpointError(f"SISA file {path} has more than the {limit} bytes read; nothing was loaded")
    return data


def safetensors_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """The safetensors encoding of a state dict (tensors in name order, little-endian, no padding gaps)."""
    header: dict[str, Any] = {}
    chunks: list[bytes] = []
    offset = 0
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        dtype = _TORCH_TO_SAFETENSORS.get(tensor.dtype)
        if dtype is None:
            raise InvalidParameterError(f"state_dict[{name!r}].dtype", str(tensor.dtype),
                                        "one of " + ", ".join(sorted(str(d) for d in _TORCH_TO_SAFETENSORS)))
        array = tensor.numpy()
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    text += b" " * (-len(text) % 8)  # align the data to 8 bytes, as the reference writer does
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def write_checkpoint(directory: Path, shard: int, stage: int, state: Mapping[str, torch.Tensor]) -> str:
    """Write the checkpoint atomically (mode 0o600) and return its ``model_digest`` root."""
    atomic_write(directory / checkpoint_name(shard, stage), safetensors_bytes(state))
    return state_root(state)


def remove_checkpoint(directory: Path, shard: int, stage: int) -> None:
    """Delete a stale checkpoint file (absent is fine)."""
    with contextlib.suppress(FileNotFoundError):
        (directory / checkpoint_name(shard, stage)).unlink()


def load_checkpoint(directory: Path, shard: int, stage: int, expected_root: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint with certun's strict reader and refuse it unless its root is ``expected_root``.

    Raises:
        SisaCheckpointError: the file is missing or malformed, or its digest differs (tampered or swapped).
    """
    path = directory / checkpoint_name(shard, stage)
    try:
        arrays = parse_safetensors(read_private(path), str(path))  # the verifier's own strict reader
    except (OSError, ValueError, RecursionError, CertificateFormatError) as exc:
        raise SisaCheckpointError(f"SISA checkpoint {path} cannot be read: {exc}") from exc
    root = state_root(arrays)
    if root != expected_root:
        raise SisaCheckpointError(f"SISA checkpoint {path} has digest {root}, but the manifest records "
                                  f"{expected_root}: the file was modified or swapped; nothing was retrained")
    return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}  # writable copies


def stale_files(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory`` (by name), e.g. left by an earlier ``fit``, and the temporary
    files of a write that was killed (they may hold weights trained on records deleted since)."""
    return [p for p in directory.iterdir() if _NAME_RE.fullmatch(p.name) or _TMP_RE.fullmatch(p.name)]
