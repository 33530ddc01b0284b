"""Digests of model parameters that depend on the tensor values only, never on a file format.

``torch.save`` bytes are not stable for identical weights (pickle framing, storage sharing, zip
metadata), so a certificate hashes *tensors*: each tensor's name, dtype, shape and little-endian
C-order bytes, every field length-prefixed, and a root over the per-tensor digests sorted by name.
The per-tensor digests let a verifier name the first tensor that differs and confirm that frozen
parameters are bit-identical. Source: docs/certificates.md ("Model digests").

Encoding, version 1 (``u64`` is an unsigned 64-bit little-endian integer, ``lp(b)`` is ``u64(len(b)) || b``)::

    tensor_digest = SHA-256( "certun.tensor.v1\\0" || lp(utf8(name)) || lp(ascii(dtype))
                             || u64(ndim) || u64(dim_0) || ... || lp(data) )
    root          = SHA-256( "certun.model.v1\\0" || u64(n)
                             || for each name in sorted order: lp(utf8(name)) || tensor_digest_bytes )
"""

from __future__ import annotations

import hashlib
import re
import struct
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from certun.certificates._record import ModelDigest
from certun.errors import InvalidParameterError

__all__ = ["DIGEST_ALGORITHM", "model_digest", "root_digest", "tensor_digest", "to_numpy"]

#: Name of the digest scheme, recorded next to every model digest in a certificate.
DIGEST_ALGORITHM = "certun.tensor-sha256.v1"

_TENSOR_TAG = b"certun.tensor.v1\x00"
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_MODEL_TAG = b"certun.model.v1\x00"


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _lp(data: bytes) -> bytes:
    return _u64(len(data)) + data


def to_numpy(name: str, value: Any) -> tuple[np.ndarray, str]:
    """``(array, dtype name)`` for a numpy array or a torch tensor (duck-typed, torch never imported).

    The array is little-endian and C-contiguous. ``bfloat16`` torch tensors, which numpy cannot hold,
    are reinterpreted bit for bit as ``int16`` and keep the dtype name ``"bfloat16"``.
    """
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        tensor = value.detach().cpu()
        torch_dtype = str(getattr(tensor, "dtype", ""))
        if torch_dtype == "torch.bfloat16":
            torch = sys.modules["torch"]  # present: we hold one of its tensors
            return _little_endian(tensor.contiguous().view(torch.int16).numpy()), "bfloat16"
        value = tensor.numpy()
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        raise InvalidParameterError(name, type(value).__name__, "a numpy array or a torch tensor")
    if value.dtype.kind not in "biufc":
        raise InvalidParameterError(f"{name}.dtype", str(value.dtype), "a boolean, integer, float or complex dtype")
    return _little_endian(value), value.dtype.name


def _little_endian(array: np.ndarray) -> np.ndarray:
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def _tensor_digest_bytes(name: str, value: Any) -> tuple[bytes, tuple[int, ...], str]:
    if not isinstance(name, str) or not name:
        raise InvalidParameterError("tensor name", name, "a non-empty string")
    array, dtype = to_numpy(name, value)
    h = hashlib.sha256(_TENSOR_TAG)
    h.update(_lp(name.encode("utf-8")))
    h.update(_lp(dtype.encode("ascii")))
    h.update(_u64(array.ndim))
    for dim in array.shape:
        h.update(_u64(dim))
    h.update(_lp(array.tobytes(order="C")))
    return h.digest(), tuple(int(d) for d in array.shape), dtype


def tensor_digest(name: str, array: Any) -> str:
    """``"sha256:<hex>"`` digest of one named tensor (numpy array or torch tensor).

    Equal values with equal name, dtype and shape give equal digests whatever their memory layout or
    byte order; a different dtype (float32 vs float64) gives a different digest.
    """
    return "sha256:" + _tensor_digest_bytes(name, array)[0].hex()


def model_digest(named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> ModelDigest:
    """Digest of a set of named tensors: a root over all of them plus one digest per tensor.

    Args:
        named_tensors: a mapping ``name -> array`` (a ``state_dict``) or an iterable of
            ``(name, tensor)`` pairs (``model.named_parameters()``). Names must be unique.

    Returns:
        A :class:`ModelDigest` whose ``tensors``, ``shapes`` and ``dtypes`` are keyed by name.
    """
    items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
    digests: dict[str, bytes] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for name, value in items:
        if name in digests:
            raise InvalidParameterError("tensor name", name, "unique within one model digest")
        digests[name], shapes[name], dtypes[name] = _tensor_digest_bytes(name, value)
    tensors = {name: "sha256:" + digests[name].hex() for name in sorted(digests)}
    return ModelDigest(
        root=root_digest(tensors),
        tensors=tensors,
        shapes={name: shapes[name] for name in sorted(shapes)},
        dtypes={name: dtypes[name] for name in sorted(dtypes)},
    )


def root_digest(tensors: Mapping[str, str]) -> str:
    """The model root over per-tensor digests (``name -> "sha256:<hex>"``), as :func:`model_digest`.

    A verifier uses it to check that a certificate's root agrees with its per-tensor digests.
    """
    root = hashlib.sha256(_MODEL_TAG)
    root.update(_u64(len(tensors)))
    for name in sorted(tensors):
        value = tensors[name]
        if not (isinstance(value, str) and _SHA256_RE.fullmatch(value)):
            raise InvalidParameterError(f"digest of {name!r}", value, "'sha256:' followed by 64 hex digits")
        root.update(_lp(name.encode("utf-8")))
        root.update(bytes.fromhex(value[7:]))
    return "sha256:" + root.hexdigest()
