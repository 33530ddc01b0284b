"""Base58-btc multibase and the multicodec prefixes of Ed25519 keys (the ``z6Mk...`` key format).

W3C Data Integrity writes signatures as multibase base58-btc (``"z"`` + base58) and Ed25519 keys as
multibase multicodec: public keys prefixed ``0xed 0x01`` (``z6Mk...``), private keys ``0x80 0x26``.
Source: W3C Controller Documents (Multikey), the multicodec table, draft-msporny-base58.
"""

from __future__ import annotations

from certun.errors import CertificateFormatError

__all__ = [
    "ED25519_PRIV_PREFIX",
    "ED25519_PUB_PREFIX",
    "b58decode",
    "b58encode",
    "multibase_decode",
    "multibase_encode",
]

ED25519_PUB_PREFIX = b"\xed\x01"
ED25519_PRIV_PREFIX = b"\x80\x26"

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Bitcoin base58 of ``data`` (leading zero bytes become leading ``1``s)."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_ALPHABET[rem])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises :class:`CertificateFormatError` on a non-base58 character."""
    n = 0
    for c in text:
        if c not in _INDEX:
            raise CertificateFormatError(f"{c!r} is not a base58-btc character")
        n = n * 58 + _INDEX[c]
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * zeros + body


def multibase_encode(data: bytes) -> str:
    """``"z"`` + base58-btc."""
    return "z" + b58encode(data)


def multibase_decode(text: object) -> bytes:
    """Decode a base58-btc multibase string (it must start with ``"z"``; anything else is refused)."""
    if not isinstance(text, str) or not text.startswith("z"):
        raise CertificateFormatError(f"expected a base58-btc multibase string starting with 'z', got {text!r}")
    return b58decode(text[1:])
