"""Salted commitments: to the noise key (or legacy seed), and to the trained model a first request starts from.

The certificate binds the run to one seed and one starting model without revealing either.

Anyone holding the seed, the retain data and the released model could regenerate the Gaussian noise
and subtract it, undoing the unlearning; so the seed never enters a certificate. The run's owner
keeps the *opening* (seed and salt) private and can later show it to a trusted auditor, who checks
it against the public commitment and can then replay the committed run. Source: docs/certificates.md ("What verification
cannot prove").

Scheme ``certun.key-commitment.sha256.v1`` (what the backends issue): a commitment to the run's
secret noise key material (bytes: a fresh key from the OS, or the secret of a user seed), from which
the run key is derived with the run's inputs (docs/theory.md#floating-point-and-randomness)::

    commitment = SHA-256( "certun.key-commitment.v1\\0" || salt || u64le(len(secret)) || secret ),  salt: 32 bytes

Scheme ``certun.seed-commitment.sha256.v1`` (certificates issued before keys were bytes; still
opened and accepted by the schema)::

    commitment = SHA-256( "certun.seed-commitment.v1\\0" || salt || ascii(decimal(seed)) ),  salt: 32 random bytes

The model the *first* deletion request starts from, ``A(D)``, was trained on the forget set. A plain
digest of it would let anyone who can retrain (public recipe and seed, known retain data) test
whether a candidate record was in D by comparing hashes, and tiny tensors could be brute-forced; so
the certificate holds only a salted commitment to its digest root, and the opening (root and salt)
goes back to the run's owner. Scheme ``certun.model-commitment.sha256.v1``::

    commitment = SHA-256( "certun.model-commitment.v1\\0" || salt || ascii("sha256:<hex root>") ),  salt: 32 bytes

The root (:func:`certun.certificates.model_digest`) binds every tensor's name, dtype, shape and bytes.
Source: docs/certificates.md (``artifacts.model_before``).
"""

from __future__ import annotations

import hashlib
import hmac
import operator
import re
import secrets
from collections.abc import Mapping
from typing import Any

from certun.errors import InvalidParameterError

__all__ = [
    "COMMITMENT_SCHEME",
    "KEY_COMMITMENT_SCHEME",
    "MODEL_COMMITMENT_SCHEME",
    "key_commitment",
    "model_commitment",
    "open_model_commitment",
    "open_seed_commitment",
    "seed_commitment",
]

#: Name of the commitment scheme, recorded in the certificate's ``randomness`` section.
COMMITMENT_SCHEME = "certun.seed-commitment.sha256.v1"

#: Name of the commitment to the run's secret key bytes, recorded in ``randomness.seed_commitment``.
KEY_COMMITMENT_SCHEME = "certun.key-commitment.sha256.v1"

#: Name of the model commitment scheme, recorded in ``artifacts.model_before`` of a first request.
MODEL_COMMITMENT_SCHEME = "certun.model-commitment.sha256.v1"

_TAG = b"certun.seed-commitment.v1\x00"
_KEY_TAG = b"certun.key-commitment.v1\x00"
_MODEL_TAG = b"certun.model-commitment.v1\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ROOT = re.compile(r"sha256:[0-9a-f]{64}")


def _salt(salt: bytes | bytearray | None) -> bytes:
    """``salt`` checked to be 32 bytes, or 32 fresh random bytes when it is ``None``."""
    if salt is None:
        return secrets.token_bytes(32)
    if not isinstance(salt, (bytes, bytearray)) or len(salt) != 32:
        raise InvalidParameterError("salt", salt, "32 bytes")
    return bytes(salt)


def _commit(seed: int, salt: bytes) -> str:
    return "sha256:" + hashlib.sha256(_TAG + salt + str(seed).encode("ascii")).hexdigest()


def _seed(value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidParameterError("seed", value, "an integer >= 0")
    try:
        seed = operator.index(value)
    except TypeError:
        raise InvalidParameterError("seed", value, "an integer >= 0") from None
    if seed < 0:
        raise InvalidParameterError("seed", seed, "an integer >= 0")
    return seed


def seed_commitment(seed: int, *, salt: bytes | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """Commit to ``seed``: returns ``(public, private)``.

    ``public = {"scheme", "commitment"}`` goes into the certificate (``RunRecord.seed_commitment``);
    ``private = {"scheme", "seed", "salt"}`` is the opening, to be kept secret by the run's owner.

    Args:
        seed: the integer seed of the noise generator (>= 0).
        salt: 32 bytes; fresh random bytes when omitted (give it only to reproduce a commitment).
    """
    seed = _seed(seed)
    salt = _salt(salt)
    public = {"scheme": COMMITMENT_SCHEME, "commitment": _commit(seed, bytes(salt))}
    private = {"scheme": COMMITMENT_SCHEME, "seed": seed, "salt": bytes(salt).hex()}
    return public, private


def _commit_key(secret: bytes, salt: bytes) -> str:
    return "sha256:" + hashlib.sha256(_KEY_TAG + salt + len(secret).to_bytes(8, "little") + secret).hexdigest()


def key_commitment(secret: bytes, *, salt: bytes | None = None,
                   **opening: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Commit to the run's secret key bytes: returns ``(public, private)``.

    ``public = {"scheme", "commitment"}`` goes into the certificate (``RunRecord.seed_commitment``);
    ``private = {"scheme", "secret", "salt", **opening}`` (hex strings) is the opening, kept secret by the
    run's owner; ``opening`` adds private context (e.g. ``origin``, the user's integer seed).

    Args:
        secret: the key material, at least 16 bytes.
        salt: 32 bytes; fresh random bytes when omitted (give it only to reproduce a commitment).
    """
    if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
        raise InvalidParameterError("secret", f"<{type(secret).__name__}>", "at least 16 bytes of key material")
    salt = _salt(salt)
    public = {"scheme": KEY_COMMITMENT_SCHEME, "commitment": _commit_key(bytes(secret), bytes(salt))}
    private = {"scheme": KEY_COMMITMENT_SCHEME, "secret": bytes(secret).hex(), "salt": bytes(salt).hex(), **opening}
    return public, private


def _open_key_commitment(public: Mapping[str, Any], private: Mapping[str, Any]) -> bool:
    salt, secret, commitment = private.get("salt"), private.get("secret"), public.get("commitment")
    if not (isinstance(salt, str) and _HEX64.fullmatch(salt)) or not isinstance(commitment, str):
        return False
    try:
        raw = bytes.fromhex(secret) if isinstance(secret, str) else None
    except ValueError:
        return False
    if raw is None or len(raw) < 16:
        return False
    return hmac.compare_digest(_commit_key(raw, bytes.fromhex(salt)), commitment)


def open_seed_commitment(public: Mapping[str, Any], private: Mapping[str, Any]) -> bool:
    """True iff the opening ``private`` matches the commitment ``public`` (key or legacy seed scheme)."""
    if public.get("scheme") == KEY_COMMITMENT_SCHEME and private.get("scheme") == KEY_COMMITMENT_SCHEME:
        return _open_key_commitment(public, private)
    if public.get("scheme") != COMMITMENT_SCHEME or private.get("scheme") != COMMITMENT_SCHEME:
        return False
    salt = private.get("salt")
    if not (isinstance(salt, str) and _HEX64.fullmatch(salt)):
        return False
    try:
        seed = _seed(private.get("seed"))
    except InvalidParameterError:
        return False
    commitment = public.get("commitment")
    if not isinstance(commitment, str):
        return False
    return hmac.compare_digest(_commit(seed, bytes.fromhex(salt)), commitment)


def _commit_model(root: str, salt: bytes) -> str:
    return "sha256:" + hashlib.sha256(_MODEL_TAG + salt + root.encode("ascii")).hexdigest()


def model_commitment(digest: Any, *, salt: bytes | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Commit to a model digest: returns ``(public, private)``.

    ``public = {"scheme", "commitment"}`` goes into the certificate (``RunRecord.model_before_commitment``);
    ``private = {"scheme", "root", "salt"}`` is the opening, kept by the run's owner for a trusted
    auditor (who checks the model before against ``root`` with :func:`certun.certificates.model_digest`).

    Args:
        digest: a :class:`~certun.certificates.ModelDigest` or its root ``"sha256:<hex>"``.
        salt: 32 bytes; fresh random bytes when omitted (give it only to reproduce a commitment).
    """
    root = getattr(digest, "root", digest)
    if not (isinstance(root, str) and _ROOT.fullmatch(root)):
        raise InvalidParameterError("digest", root, "a ModelDigest or a root 'sha256:' followed by 64 hex digits")
    salt = _salt(salt)
    public = {"scheme": MODEL_COMMITMENT_SCHEME, "commitment": _commit_model(root, bytes(salt))}
    private = {"scheme": MODEL_COMMITMENT_SCHEME, "root": root, "salt": bytes(salt).hex()}
    return public, private


def open_model_commitment(public: Mapping[str, Any], private: Mapping[str, Any]) -> bool:
    """True iff the opening ``private`` (root and salt) matches the model commitment ``public``."""
    if public.get("scheme") != MODEL_COMMITMENT_SCHEME or private.get("scheme") != MODEL_COMMITMENT_SCHEME:
        return False
    salt, root, commitment = private.get("salt"), private.get("root"), public.get("commitment")
    if not (isinstance(salt, str) and _HEX64.fullmatch(salt)):
        return False
    if not (isinstance(root, str) and _ROOT.fullmatch(root)) or not isinstance(commitment, str):
        return False
    return hmac.compare_digest(_commit_model(root, bytes.fromhex(salt)), commitment)
