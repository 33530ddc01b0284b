"""Strict parsing of certificate files: parse first, then verify.

Python's ``json`` module accepts ``NaN``, ``Infinity``, duplicate keys (the last one silently wins)
and ``1e400`` (which becomes ``inf``). A certificate is evidence, so each of these is refused here
with a :class:`~certun.errors.CertificateFormatError` that names the problem; so are integers beyond
±(2**53 − 1), which RFC 8785 cannot canonicalise. :func:`load_certificate` then checks the format,
the version and the schema. Source: docs/certificates.md; RFC 8785 §3.2.2.3 (I-JSON numbers).
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping
from typing import Any

from certun.certificates._schema import CERTIFICATE_FORMAT, SUPPORTED_FORMAT_VERSIONS, schema_errors
from certun.errors import CertificateFormatError

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "MAX_SAFE_INTEGER",
    "format_problem",
    "json_value_problems",
    "load_certificate",
    "read_bytes",
    "strict_loads",
]

#: Largest integer magnitude RFC 8785 / I-JSON represents exactly.
MAX_SAFE_INTEGER = 2**53 - 1
#: Largest certificate (or receipt) file read: a real certificate is a few kB, plus 20 bytes per step
#: of a per-step schedule; bounding the input bounds the cost of verifying it (docs/certificates.md#threat-model).
MAX_CERTIFICATE_BYTES = 1024 * 1024

_DIGITS_NONZERO = frozenset("123456789")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CertificateFormatError(f"duplicate key {key!r} in a JSON object (which one counts is ambiguous)")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise CertificateFormatError(f"{name} is not JSON: non-finite numbers are refused")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CertificateFormatError(f"number {text} overflows a 64-bit float (non-finite numbers are refused)")
    if value == 0.0 and _DIGITS_NONZERO & set(text.lower().split("e", 1)[0]):
        raise CertificateFormatError(f"number {text} underflows to 0 in a 64-bit float (write 0 if 0 is meant)")
    return value


def _is_lone_surrogate_free(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate_problem(value: Any, path: str = "<json>") -> str | None:
    """Where a string or key holds a lone UTF-16 surrogate (not encodable as UTF-8, so not hashable
    as RFC 8785 and not printable), or ``None``."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if not _is_lone_surrogate_free(item):
                return f"{where}: a string holds a lone UTF-16 surrogate (not valid Unicode text)"
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not _is_lone_surrogate_free(key):
                    return f"{where}: a key holds a lone UTF-16 surrogate (not valid Unicode text)"
                stack.append((child, f"{where}.{key!a}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def _safe_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:  # more digits than Python converts
        raise CertificateFormatError(f"integer with {len(text)} digits is out of range") from exc
    if abs(value) > MAX_SAFE_INTEGER:
        raise CertificateFormatError(f"integer {text} is beyond ±(2**53 - 1), not representable in RFC 8785 JSON")
    return value


def strict_loads(data: bytes | str) -> Any:
    """Parse JSON text strictly (UTF-8; no NaN/Infinity, duplicate keys, overflowing or unsafe numbers).

    Raises:
        CertificateFormatError: with the reason and, for syntax errors, the line and column.
    """
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CertificateFormatError(f"not UTF-8 text: {exc}") from exc
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                           parse_float=_finite_float, parse_int=_safe_int)
    except json.JSONDecodeError as exc:
        raise CertificateFormatError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise CertificateFormatError("JSON nested too deeply") from exc
    problem = _surrogate_problem(value)
    if problem:
        raise CertificateFormatError(problem)
    return value


def json_value_problems(value: Any, path: str = "<certificate>") -> list[str]:
    """Why an in-memory value is not strict JSON (the checks of :func:`strict_loads`), or ``[]``."""
    problems: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{path}: key {key!r} is not a string")
            elif not _is_lone_surrogate_free(key):
                problems.append(f"{path}: key {key!a} holds a lone UTF-16 surrogate (not valid Unicode text)")
            else:
                problems.extend(json_value_problems(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problems.extend(json_value_problems(item, f"{path}[{i}]"))
    elif isinstance(value, str):
        if not _is_lone_surrogate_free(value):
            problems.append(f"{path}: a string holds a lone UTF-16 surrogate (not valid Unicode text)")
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            problems.append(f"{path}: integer {value} is beyond ±(2**53 - 1)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            problems.append(f"{path}: {value!r} is not a finite number")
    else:
        problems.append(f"{path}: {type(value).__name__} is not a JSON type")
    return problems


def format_problem(document: Any) -> str | None:
    """Why ``document`` is not a certun certificate of a version this certun reads, or ``None``."""
    if not isinstance(document, Mapping):
        return f"a certificate is a JSON object, got {type(document).__name__}"
    fmt = document.get("format")
    if fmt != CERTIFICATE_FORMAT:
        return f"format is {fmt!r}, expected {CERTIFICATE_FORMAT!r}"
    version = document.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in SUPPORTED_FORMAT_VERSIONS:
        return (f"unknown format_version {version!r}; this certun reads format_version "
                f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}")
    return None


def read_bytes(source: bytes | str | os.PathLike, *, what: str = "certificate") -> bytes:
    """The bytes of a certificate (or receipt: ``what``) given as bytes or as a path (a ``str`` is a path).

    Only a regular file of at most :data:`MAX_CERTIFICATE_BYTES` is read: a FIFO or a device would
    block or never end, and a larger file is no certificate certun writes.
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        name = os.fspath(source)
        try:
            # O_NONBLOCK: opening a FIFO swapped in after a check must not block; fstat then decides
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise CertificateFormatError(f"{what} {name!r} is not a regular file")
                if info.st_size > MAX_CERTIFICATE_BYTES:
                    raise CertificateFormatError(f"{what} {name!r} has {info.st_size} bytes, more than the "
                                                 f"{MAX_CERTIFICATE_BYTES} a {what} may have")
                data = handle.read(MAX_CERTIFICATE_BYTES + 1)
        except OSError as exc:
            raise CertificateFormatError(f"cannot read {what} {name!r}: {exc.strerror}") from exc
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise CertificateFormatError(f"{what} has {len(data)} bytes, more than the {MAX_CERTIFICATE_BYTES} "
                                     f"a {what} may have")
    return data


def load_certificate(path_or_bytes: bytes | str | os.PathLike) -> dict[str, Any]:
    """Read a certificate strictly: JSON, format and version, schema. No verification.

    Args:
        path_or_bytes: the file's path (``str`` or path-like) or its bytes.

    Returns:
        The certificate as a dict.

    Raises:
        CertificateFormatError: unreadable, not strict JSON, not a certificate, unknown
            ``format_version``, or a schema violation (all violations are listed).
    """
    document = strict_loads(read_bytes(path_or_bytes))
    problem = format_problem(document)
    if problem:
        raise CertificateFormatError(problem)
    errors = schema_errors(document, document["format_version"])
    if errors:
        raise CertificateFormatError(
            f"certificate violates the format_version {document['format_version']} schema: " + "; ".join(errors))
    return document
