"""A salted commitment to the noise seed: the certificate binds the run to one seed without revealing it.

Anyone holding the seed, the retain data and the released model could regenerate the Gaussian noise
and subtract it, undoing the unlearning; so the seed never enters a certificate. The run's owner
keeps the *opening* (seed and salt) private and can later show it to a trusted auditor, who checks
it against the public commitment and can then replay the committed run. Source: issue 3
("Randomness"); docs/certificates.md ("What verification cannot prove").

Scheme ``certun.seed-commitment.sha256.v1``::

    commitment = SHA-256( "certun.seed-commitment.v1\\0" || salt || ascii(decimal(seed)) ),  salt: 32 random bytes
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

__all__ = ["COMMITMENT_SCHEME", "open_seed_commitment", "seed_commitment"]

#: Name of the commitment scheme, recorded in the certificate's ``randomness`` section.
COMMITMENT_SCHEME = "certun.seed-commitment.sha256.v1"

_TAG = b"certun.seed-commitment.v1\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")


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
    if salt is None:
        salt = secrets.token_bytes(32)
    if not isinstance(salt, (bytes, bytearray)) or len(salt) != 32:
        raise InvalidParameterError("salt", salt, "32 bytes")
    public = {"scheme": COMMITMENT_SCHEME, "commitment": _commit(seed, bytes(salt))}
    private = {"scheme": COMMITMENT_SCHEME, "seed": seed, "salt": bytes(salt).hex()}
    return public, private


def open_seed_commitment(public: Mapping[str, Any], private: Mapping[str, Any]) -> bool:
    """True iff the opening ``private`` (seed and salt) matches the commitment ``public``."""
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
