"""Read ``.safetensors`` model files with numpy alone (no extra package), for ``verify --model``.

The format: an 8-byte little-endian header length N, N bytes of JSON (``name -> {dtype, shape,
data_offsets}``, plus an optional ``__metadata__``), then the raw little-endian tensor bytes. The
header is parsed strictly (no duplicate keys, no NaN) and every offset is checked against the file.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np

from certun.certificates._parse import strict_loads
from certun.certificates._verification_report import printable
from certun.errors import CertificateFormatError

__all__ = ["parse_safetensors", "read_safetensors"]

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
                       "I8": "i1", "U8": "u1", "BOOL": "?"}
#: Most dimensions a tensor may have (bounds the size computation).
_MAX_DIMS = 64
#: Largest safetensors JSON header read (the format's own limit is 100 MB).
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``name -> array`` of a ``.safetensors`` file; every offset and size is checked before use.

    Raises:
        CertificateFormatError: a malformed header, offsets outside the file, a byte range that does
            not match the shape, or a dtype certun does not hash (bfloat16, float8: save as ``.pt``).
    """
    path = Path(path)
    return parse_safetensors(path.read_bytes(), str(path))


def parse_safetensors(data: bytes, name: str) -> dict[str, np.ndarray]:
    """``name -> array`` of the bytes of a ``.safetensors`` file called ``name`` (see :func:`read_safetensors`)."""
    if len(data) < 8:
        raise CertificateFormatError(f"{printable(name)} is too short to be a safetensors file")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_SAFETENSORS_HEADER, len(data) - 8):
        raise CertificateFormatError(f"{printable(name)}: safetensors header of {size} bytes does not fit")
    header = strict_loads(data[8:8 + size])
    if not isinstance(header, dict):
        raise CertificateFormatError(f"{printable(name)}: safetensors header is not a JSON object")
    buffer = memoryview(data)[8 + size:]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        label = printable(repr(name))
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CertificateFormatError(f"safetensors entry {label} is malformed")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _SAFETENSORS_DTYPES:
            raise CertificateFormatError(f"safetensors tensor {label} has dtype {printable(repr(dtype))}, which "
                                         "certun does not hash (save bfloat16/float8 models as .pt)")
        if not (isinstance(shape, list) and len(shape) <= _MAX_DIMS
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= len(buffer) for d in shape)):
            raise CertificateFormatError(f"safetensors tensor {label} has a malformed shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= len(buffer)):
            raise CertificateFormatError(f"safetensors tensor {label} has data offsets outside the file")
        np_dtype = np.dtype(_SAFETENSORS_DTYPES[dtype])
        if offsets[1] - offsets[0] != math.prod(shape) * np_dtype.itemsize:
            raise CertificateFormatError(f"safetensors tensor {label}: its byte range does not match its shape")
        out[name] = np.frombuffer(buffer[offsets[0]:offsets[1]], dtype=np_dtype).reshape(shape)
    return out
