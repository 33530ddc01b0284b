"""Salted Merkle trees over record identifiers, with a private inclusion receipt per record.

A certificate commits to the retain and forget sets without naming any record: it holds only the
root of an RFC 9162 (Certificate Transparency v2, same tree as RFC 6962) SHA-256 Merkle tree whose
leaves are salted record identifiers. Each data subject gets a *receipt* (their identifier, their
leaf's salt and the audit path) and can check, with nothing but the certificate, that their record
is in the certified forget set. The salt keeps sibling hashes in an audit path from revealing other
identifiers by dictionary search. Source: RFC 9162 §2.1 (tree hash, inclusion proofs, verification
algorithm §2.1.3.2); docs/certificates.md ("Data sets and receipts").

Leaf and node hashes are domain-separated as in RFC 9162::

    leaf_hash(data)   = SHA-256(0x00 || data)
    node_hash(l, r)   = SHA-256(0x01 || l || r)
    data (salted)     = salt || encoded_id                     (salt: 32 bytes)
    salt              = HMAC-SHA256(salt_key, "certun.merkle.salt.v1\\0" || encoded_id)
    encoded_id        = "i:" || decimal   for an integer id,   "s:" || UTF-8   for a string id

Scheme ``rfc9162-sha256-salted.v2`` (the default) orders the leaves by their salted leaf hash, so the
root depends on the *set* of identifiers and the salt key, not on the order a data loader produced
them in, and a receipt's ``leaf_index`` reveals nothing about how many other identifiers sort before
its own. Scheme ``.v1`` ordered leaves by ``encoded_id``, which leaked that rank; it stays buildable
(``scheme=TREE_SCHEME_V1``) and verifiable, since an inclusion proof does not depend on the order.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import operator
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certun.errors import CertificateFormatError, InvalidParameterError

__all__ = [
    "TREE_SCHEME",
    "TREE_SCHEMES",
    "TREE_SCHEME_V1",
    "MerkleReceipt",
    "MerkleTree",
    "encode_id",
    "inclusion_path",
    "leaf_hash",
    "merkle_tree",
    "node_hash",
    "tree_root",
    "verify_inclusion",
    "verify_receipt",
]

#: Name of the tree scheme certun writes, recorded next to every root in a certificate: leaves
#: ordered by salted leaf hash.
TREE_SCHEME = "rfc9162-sha256-salted.v2"
#: The first scheme: leaves ordered by encoded identifier (a receipt's leaf index leaks its rank).
TREE_SCHEME_V1 = "rfc9162-sha256-salted.v1"
#: Every scheme certun reads.
TREE_SCHEMES = (TREE_SCHEME_V1, TREE_SCHEME)

_SALT_TAG = b"certun.merkle.salt.v1\x00"
_HASH_SIZE = 32
_HEX64 = re.compile(r"[0-9a-f]{64}")


# ------------------------------------------------------------------------------ RFC 9162 primitives
def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _levels(leaf_hashes: Sequence[bytes]) -> list[list[bytes]]:
    """All levels of the tree, leaves first. An unpaired last node moves up unchanged, which gives
    the same tree as RFC 9162's split at the largest power of two smaller than n."""
    levels = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


def tree_root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of a list of leaf hashes; the empty tree hashes to ``SHA-256("")``."""
    if not leaf_hashes:
        return hashlib.sha256(b"").digest()
    return _levels(leaf_hashes)[-1][0]


def _path_from_levels(levels: list[list[bytes]], index: int) -> list[bytes]:
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index >>= 1
    return path


def inclusion_path(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` (RFC 9162 §2.1.3.1), bottom to top."""
    if not 0 <= index < len(leaf_hashes):
        raise InvalidParameterError("index", index, f"in [0, {len(leaf_hashes)})")
    return _path_from_levels(_levels(leaf_hashes), index)


def _expected_path_length(index: int, size: int) -> int:
    length, fn, sn = 0, index, size - 1
    while sn > 0:
        if fn & 1 or fn < sn:
            length += 1
        fn >>= 1
        sn >>= 1
    return length


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``path`` prove that ``leaf`` (a leaf hash) is leaf ``index`` of the
    tree of ``size`` leaves whose root is ``root``?

    The proof's length and each element's size are checked before any hashing.
    """
    if isinstance(index, bool) or isinstance(size, bool) or not 0 <= index < size:
        return False
    if len(path) != _expected_path_length(index, size):
        return False
    if any(len(p) != _HASH_SIZE for p in path) or len(leaf) != _HASH_SIZE or len(root) != _HASH_SIZE:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)


# ---------------------------------------------------------------------------- salted identifier trees
def encode_id(record_id: int | str) -> bytes:
    """Type-tagged bytes of an identifier: ``b"i:42"`` for the integer 42, ``b"s:42"`` for ``"42"``.

    Integers include numpy and 0-d torch integers (anything with ``__index__``); booleans are refused.
    """
    if isinstance(record_id, str):
        return b"s:" + record_id.encode("utf-8")
    if isinstance(record_id, bool):
        raise InvalidParameterError("record id", record_id, "an integer or a string")
    try:
        return b"i:" + str(operator.index(record_id)).encode("ascii")
    except TypeError:
        raise InvalidParameterError("record id", record_id, "an integer or a string") from None


def _plain_id(record_id: Any) -> int | str:
    return record_id if isinstance(record_id, str) else operator.index(record_id)


def _salt(salt_key: bytes, encoded: bytes) -> bytes:
    return hmac.new(salt_key, _SALT_TAG + encoded, hashlib.sha256).digest()


@dataclass(frozen=True, kw_only=True)
class MerkleReceipt:
    """A data subject's private proof that their record is a leaf of a certified tree.

    Keep it private: the salt is what stops others from testing guesses against the audit path.
    ``root`` is informational; :func:`verify_receipt` checks against the root in the certificate.
    """

    record_id: int | str
    salt: str
    leaf_index: int
    tree_size: int
    audit_path: tuple[str, ...]
    root: str
    scheme: str = TREE_SCHEME

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_dict`` reads it back)."""
        return {
            "scheme": self.scheme,
            "record_id": self.record_id,
            "salt": self.salt,
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "audit_path": list(self.audit_path),
            "root": self.root,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MerkleReceipt:
        """Read a receipt dict, refusing unknown schemes, unknown keys and malformed values."""
        if not isinstance(data, Mapping):
            raise CertificateFormatError(f"a receipt must be a JSON object, got {type(data).__name__}")
        expected = {"scheme", "record_id", "salt", "leaf_index", "tree_size", "audit_path", "root"}
        if set(data) != expected:
            raise CertificateFormatError(
                f"receipt keys {sorted(data)} differ from the expected {sorted(expected)}")
        if data["scheme"] not in TREE_SCHEMES:
            raise CertificateFormatError(f"unknown receipt scheme {data['scheme']!r}; expected one of {TREE_SCHEMES}")
        rid = data["record_id"]
        if isinstance(rid, bool) or not isinstance(rid, (int, str)):
            raise CertificateFormatError(f"receipt record_id must be an integer or a string, got {rid!r}")
        for key in ("leaf_index", "tree_size"):
            if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] < 0:
                raise CertificateFormatError(f"receipt {key} must be an integer >= 0, got {data[key]!r}")
        path = data["audit_path"]
        hexes = [data["salt"], data["root"], *(path if isinstance(path, list) else [None])]
        if not isinstance(path, list) or not all(isinstance(h, str) and _HEX64.fullmatch(h) for h in hexes):
            raise CertificateFormatError("receipt salt, root and audit_path entries must be 64 lowercase hex digits")
        return cls(record_id=rid, salt=data["salt"], leaf_index=data["leaf_index"],
                   tree_size=data["tree_size"], audit_path=tuple(path), root=data["root"], scheme=data["scheme"])


def verify_receipt(receipt: MerkleReceipt | Mapping[str, Any], *, root: str,
                   record_id: int | str | None = None) -> bool:
    """True iff ``receipt`` proves its record is a leaf of the tree with hex ``root``.

    Args:
        receipt: a :class:`MerkleReceipt` or its dict.
        root: the root to check against, taken from the certificate (not from the receipt).
        record_id: if given, the receipt must also be for this identifier.
    """
    if not isinstance(receipt, MerkleReceipt):
        receipt = MerkleReceipt.from_dict(receipt)
    if record_id is not None and encode_id(record_id) != encode_id(receipt.record_id):
        return False
    if not (isinstance(root, str) and _HEX64.fullmatch(root)):
        return False
    data = bytes.fromhex(receipt.salt) + encode_id(receipt.record_id)
    path = [bytes.fromhex(p) for p in receipt.audit_path]
    return verify_inclusion(leaf_hash(data), receipt.leaf_index, receipt.tree_size, path, bytes.fromhex(root))


class MerkleTree:
    """A salted Merkle tree over record identifiers; build it with :func:`merkle_tree`.

    Attributes:
        root: hex root hash (goes into the certificate).
        size: number of leaves.
        salt_key: the secret that derives every leaf's salt; keep it private to re-issue receipts.
    """

    def __init__(self, ids: Sequence[int | str], salt_key: bytes, scheme: str = TREE_SCHEME) -> None:
        if scheme not in TREE_SCHEMES:
            raise InvalidParameterError("scheme", scheme, f"one of {TREE_SCHEMES}")
        encoded = [encode_id(i) for i in ids]
        by_id = sorted(range(len(encoded)), key=encoded.__getitem__)
        for a, b in itertools.pairwise(by_id):
            if encoded[a] == encoded[b]:
                raise InvalidParameterError("ids", ids[a], "unique identifiers (this one appears twice)")
        salts = [_salt(salt_key, enc) for enc in encoded]
        hashes = [leaf_hash(s + e) for s, e in zip(salts, encoded, strict=True)]
        order = by_id if scheme == TREE_SCHEME_V1 else sorted(range(len(encoded)), key=hashes.__getitem__)
        self.salt_key = salt_key
        self.scheme = scheme
        self._ids = [_plain_id(ids[k]) for k in order]
        self._encoded = [encoded[k] for k in order]
        self._position = {enc: pos for pos, enc in enumerate(self._encoded)}
        self._sorted_position = [0] * len(order)  # input index -> leaf position
        for position, k in enumerate(order):
            self._sorted_position[k] = position
        self._salts = [salts[k] for k in order]
        leaves = [hashes[k] for k in order]
        self._levels = _levels(leaves) if leaves else [[]]
        self.size = len(leaves)
        self.root = tree_root(leaves).hex()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"MerkleTree(size={self.size}, root={self.root!r})"

    def receipt(self, i: int) -> MerkleReceipt:
        """The receipt of ``ids[i]`` (``i`` indexes the identifiers as they were given)."""
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.size:
            raise InvalidParameterError("i", i, f"an index in [0, {self.size})")
        return self._receipt_at(self._sorted_position[i])

    def receipt_for(self, record_id: int | str) -> MerkleReceipt:
        """The receipt of the record with this identifier."""
        position = self._position.get(encode_id(record_id))
        if position is None:
            raise InvalidParameterError("record_id", record_id, "an identifier that is in this tree")
        return self._receipt_at(position)

    def receipts(self) -> Iterable[MerkleReceipt]:
        """Every receipt, in leaf order."""
        return (self._receipt_at(p) for p in range(self.size))

    def _receipt_at(self, position: int) -> MerkleReceipt:
        path = _path_from_levels(self._levels, position)
        return MerkleReceipt(
            record_id=self._ids[position],
            salt=self._salts[position].hex(),
            leaf_index=position,
            tree_size=self.size,
            audit_path=tuple(p.hex() for p in path),
            root=self.root,
            scheme=self.scheme,
        )


def merkle_tree(ids: Iterable[int | str], *, salt_key: bytes | None = None,
                scheme: str = TREE_SCHEME) -> MerkleTree:
    """Build the salted Merkle tree of a set of record identifiers.

    Args:
        ids: unique integers or strings (dataset indices when the user gives no identifiers; see
            docs/certificates.md for that caveat).
        salt_key: secret of at least 16 bytes from which every leaf's salt is derived; a fresh
            random 32-byte key when omitted. Reusing a key reproduces the same root and receipts.
        scheme: :data:`TREE_SCHEME` (leaves ordered by salted hash); :data:`TREE_SCHEME_V1` only to
            reproduce an older certificate's tree.

    Returns:
        A :class:`MerkleTree` with ``.root`` (hex), ``.size`` and ``.receipt(i)``.
    """
    if salt_key is None:
        salt_key = secrets.token_bytes(32)
    if not isinstance(salt_key, (bytes, bytearray)) or len(salt_key) < 16:
        raise InvalidParameterError("salt_key", type(salt_key).__name__ if not isinstance(
            salt_key, (bytes, bytearray)) else f"<{len(salt_key)} bytes>", "bytes, at least 16 of them")
    return MerkleTree(list(ids), bytes(salt_key), scheme)
