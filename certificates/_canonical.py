"""Canonical bytes (RFC 8785, JSON Canonicalization Scheme) and the certificate's content digest.

Every hash and signature over JSON in certun is taken over RFC 8785 bytes produced by the
``rfc8785`` package, so two parsers that agree on the JSON *values* agree on the bytes, whatever the
file's whitespace, key order or number spelling. Note that RFC 8785 writes ``1.0`` and ``1`` the
same way: where an integer is required, the schema check (not the digest) tells them apart.
Source: RFC 8785; docs/certificates.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import rfc8785

from certun.errors import CertificateFormatError

__all__ = ["UNDIGESTED_KEYS", "canonical_bytes", "content_digest", "sha256_hex"]

#: Top-level keys the content digest does not cover: the digest itself and the signature over it.
UNDIGESTED_KEYS = frozenset({"content_digest", "proof"})


def canonical_bytes(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value.

    Raises:
        CertificateFormatError: the value is not canonicalisable (NaN, infinity, an integer beyond
            ±(2**53 - 1), a non-string key, a non-JSON type).
    """
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as exc:
        raise CertificateFormatError(f"not canonicalisable as RFC 8785 JSON: {exc}") from exc
    except (TypeError, ValueError) as exc:  # a non-JSON type or key deep inside
        raise CertificateFormatError(f"not a JSON value: {exc}") from exc


def sha256_hex(data: bytes) -> str:
    """``"sha256:<hex>"`` of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def content_digest(certificate: Mapping[str, Any]) -> str:
    """``"sha256:<hex>"`` over the RFC 8785 bytes of the certificate without ``content_digest`` and
    ``proof``. It identifies a certificate (chains link by it) and detects accidental change; an
    attacker can recompute it, so authenticity needs the signature."""
    if not isinstance(certificate, Mapping):
        raise CertificateFormatError(f"a certificate must be a JSON object, got {type(certificate).__name__}")
    body = {k: v for k, v in certificate.items() if k not in UNDIGESTED_KEYS}
    return sha256_hex(canonical_bytes(body))
