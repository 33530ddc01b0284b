"""Ed25519 signatures as W3C Data Integrity proofs, cryptosuite ``eddsa-jcs-2022``.

A signed certificate carries a ``proof`` object. Signing and verifying follow the W3C "Data
Integrity EdDSA Cryptosuites v1.0" recommendation, §3.3 (eddsa-jcs-2022)::

    proofConfig = proof options (type, cryptosuite, created, verificationMethod, proofPurpose)
                  [+ "@context" copied from the document, when it has one]
    hashData    = SHA-256(JCS(proofConfig)) || SHA-256(JCS(document without "proof"))
    proofValue  = "z" + base58btc(Ed25519-sign(hashData))

Canonical bytes come only from ``rfc8785`` and signatures only from ``cryptography``. The W3C test
vector (tests/assets/w3c_eddsa_jcs_2022/) is reproduced bit for bit by the tests.

The verification method is a ``did:key`` that *embeds* the public key. A valid signature under an
embedded key proves the certificate is unchanged since someone signed it, not who that someone was:
authenticity needs the verifier to pin a key it trusts (``trusted_keys`` / ``--trusted-key``).
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from certun.certificates._canonical import canonical_bytes
from certun.certificates._multibase import (
    ED25519_PRIV_PREFIX,
    ED25519_PUB_PREFIX,
    multibase_decode,
    multibase_encode,
)
from certun.errors import CertificateFormatError, InvalidParameterError

__all__ = [
    "CRYPTOSUITE",
    "PROOF_TYPE",
    "ProofCheck",
    "generate_signing_key",
    "load_public_key",
    "load_public_key_file",
    "load_signing_key",
    "public_key_multibase",
    "sign_document",
    "signing_key_multibase",
    "verification_method_for",
    "verify_document",
]

CRYPTOSUITE = "eddsa-jcs-2022"
PROOF_TYPE = "DataIntegrityProof"

KeySource = Ed25519PrivateKey | bytes | str | os.PathLike


# ------------------------------------------------------------------------------------------- keys
def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key (save it with :func:`signing_key_multibase`, keep it secret)."""
    return Ed25519PrivateKey.generate()


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signing_key_multibase(key: Ed25519PrivateKey) -> str:
    """The private key as multibase multicodec text (``z3u2...``), the W3C Multikey form."""
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    return multibase_encode(ED25519_PRIV_PREFIX + raw)


def public_key_multibase(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as multibase multicodec text (``z6Mk...``)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidParameterError("key", type(key).__name__, "an Ed25519 private or public key")
    return multibase_encode(ED25519_PUB_PREFIX + _raw_public(key))


def _read_if_path(source: Any) -> Any:
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isfile(source)):
        return Path(source).read_bytes()
    return source


def load_signing_key(source: KeySource) -> Ed25519PrivateKey:
    """An Ed25519 private key from a key object, 32 raw bytes, PEM (PKCS#8) bytes or text, multibase
    text (``z3u2...``), or the path of a file holding PEM or multibase text."""
    if isinstance(source, Ed25519PrivateKey):
        return source
    source = _read_if_path(source)
    if isinstance(source, (bytes, bytearray)) and len(source) == 32:
        return Ed25519PrivateKey.from_private_bytes(bytes(source))
    text = source.decode("utf-8", "replace") if isinstance(source, (bytes, bytearray)) else source
    if not isinstance(text, str):
        raise InvalidParameterError("signing_key", type(source).__name__,
                                    "an Ed25519 private key, 32 raw bytes, PEM, or multibase 'z3u2...' text")
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidParameterError("signing_key", type(key).__name__, "an Ed25519 key")
        return key
    raw = multibase_decode(text)
    if not raw.startswith(ED25519_PRIV_PREFIX) or len(raw) != 34:
        raise InvalidParameterError("signing_key", text[:12] + "...", "an Ed25519 private Multikey ('z3u2...')")
    return Ed25519PrivateKey.from_private_bytes(raw[2:])


def _public_from_multibase(text: str) -> Ed25519PublicKey:
    if len(text) > MAX_MULTIBASE_CHARS:
        raise CertificateFormatError(f"a public Multikey has about 48 characters, got {len(text)}")
    raw = multibase_decode(text)
    if not raw.startswith(ED25519_PUB_PREFIX) or len(raw) != 34:
        raise CertificateFormatError(f"{text!r} is not an Ed25519 public Multikey (expected 'z6Mk...')")
    return Ed25519PublicKey.from_public_bytes(raw[2:])


#: Largest key file read by :func:`load_public_key_file` (a PEM public key is ~113 bytes).
MAX_KEY_FILE_BYTES = 16 * 1024
#: Longest multibase text decoded as a key or signature (64 bytes are ~88 base58 characters), so
#: base58's quadratic decoding never runs on attacker-sized input.
MAX_MULTIBASE_CHARS = 128


def load_public_key(source: Any) -> str:
    """Normalise a public key to its multibase text ``z6Mk...``.

    Accepts an Ed25519 public (or private) key object, 32 raw bytes, ``z6Mk...`` text, a
    ``did:key:z6Mk...[#z6Mk...]`` string or PEM (SubjectPublicKeyInfo) text. A string is always
    read as a key, never as a file name: a file named like a trusted key could otherwise replace it
    (read key files with :func:`load_public_key_file`).

    Raises:
        CertificateFormatError: the input is none of these.
    """
    if isinstance(source, (Ed25519PrivateKey, Ed25519PublicKey)):
        return public_key_multibase(source)
    if isinstance(source, os.PathLike):
        raise CertificateFormatError(
            f"{os.fspath(source)!r} is a path, not a key: pass key files as trusted_key_files "
            "(--trusted-key-file), keys as trusted_keys (--trusted-key)")
    if isinstance(source, (bytes, bytearray)) and len(source) == 32:
        return public_key_multibase(Ed25519PublicKey.from_public_bytes(bytes(source)))
    text = source.decode("utf-8", "replace") if isinstance(source, (bytes, bytearray)) else source
    if not isinstance(text, str):
        raise CertificateFormatError(f"cannot read a public key from a {type(source).__name__}")
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except ValueError as exc:
            raise CertificateFormatError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise CertificateFormatError(f"the PEM key is {type(key).__name__}, not Ed25519")
        return public_key_multibase(key)
    if text.startswith("did:key:"):
        text = text[len("did:key:"):].split("#", 1)[0]
    return public_key_multibase(_public_from_multibase(text))


def load_public_key_file(path: str | os.PathLike) -> str:
    """The public key (``z6Mk...``) in a file holding ``z6Mk...``, ``did:key:...`` or PEM text.

    Only a regular file of at most :data:`MAX_KEY_FILE_BYTES` is read (a FIFO or device never is).

    Raises:
        CertificateFormatError: unreadable file, or no Ed25519 public key in it.
    """
    import stat

    name = os.fspath(path)
    try:
        info = os.stat(name)
        if not stat.S_ISREG(info.st_mode):
            raise CertificateFormatError(f"trusted key file {name!r} is not a regular file")
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise CertificateFormatError(f"trusted key file {name!r} has {info.st_size} bytes; a key file holds "
                                         f"at most {MAX_KEY_FILE_BYTES}")
        data = Path(name).read_bytes()
    except OSError as exc:
        raise CertificateFormatError(f"cannot read trusted key file {name!r}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CertificateFormatError(f"trusted key file {name!r} is not UTF-8 text") from exc
    return load_public_key(text)


def verification_method_for(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The ``did:key`` verification method of a key: ``did:key:z6Mk...#z6Mk...``."""
    mb = public_key_multibase(key)
    return f"did:key:{mb}#{mb}"


# ---------------------------------------------------------------------------------- sign / verify
def _hash_data(proof_config: Mapping[str, Any], document: Mapping[str, Any]) -> bytes:
    return (hashlib.sha256(canonical_bytes(proof_config)).digest()
            + hashlib.sha256(canonical_bytes(document)).digest())


def sign_document(document: Mapping[str, Any], signing_key: KeySource, *, created: str,
                  verification_method: str | None = None,
                  proof_purpose: str = "assertionMethod") -> dict[str, Any]:
    """A copy of ``document`` with an ``eddsa-jcs-2022`` Data Integrity ``proof`` added.

    Args:
        document: the unsecured document (any ``proof`` in it is replaced).
        signing_key: see :func:`load_signing_key`.
        created: RFC 3339 timestamp of the proof.
        verification_method: defaults to the key's ``did:key``.
        proof_purpose: W3C proof purpose, ``"assertionMethod"`` by default.
    """
    key = load_signing_key(signing_key)
    unsecured = {k: copy.deepcopy(v) for k, v in document.items() if k != "proof"}
    config: dict[str, Any] = {
        "type": PROOF_TYPE,
        "cryptosuite": CRYPTOSUITE,
        "created": created,
        "verificationMethod": verification_method or verification_method_for(key),
        "proofPurpose": proof_purpose,
    }
    if "@context" in unsecured:
        config["@context"] = copy.deepcopy(unsecured["@context"])
    signature = key.sign(_hash_data(config, unsecured))
    return {**unsecured, "proof": {**config, "proofValue": multibase_encode(signature)}}


@dataclass(frozen=True)
class ProofCheck:
    """Outcome of :func:`verify_document`: whether the signature is valid, under which key
    (multibase ``z6Mk...``, when known), and why not."""

    valid: bool
    key: str | None
    detail: str


def verify_document(document: Mapping[str, Any], *, public_key: Any = None) -> ProofCheck:
    """Check the ``eddsa-jcs-2022`` proof of a secured document (W3C vc-di-eddsa §3.3.2).

    The key is ``public_key`` when given (anything :func:`load_public_key` reads), otherwise the
    one embedded in a ``did:key`` verification method. Never raises on a bad proof: the reason is
    in ``detail``.
    """
    proof = document.get("proof")
    if not isinstance(proof, Mapping):
        return ProofCheck(False, None, "the document has no proof object")
    for name, want in (("type", PROOF_TYPE), ("cryptosuite", CRYPTOSUITE)):
        if proof.get(name) != want:
            return ProofCheck(False, None, f"proof {name} is {proof.get(name)!r}, expected {want!r}")
    options = {k: v for k, v in proof.items() if k != "proofValue"}
    vm = proof.get("verificationMethod")
    try:
        if public_key is not None:
            key_mb = load_public_key(public_key)
        elif isinstance(vm, str) and vm.startswith("did:key:"):
            key_mb = load_public_key(vm)
            fragment = vm.split("#", 1)[1] if "#" in vm else key_mb
            if fragment != key_mb:
                return ProofCheck(False, key_mb, f"verificationMethod fragment {fragment!r} is not the key {key_mb!r}")
        else:
            return ProofCheck(False, None, f"cannot resolve verificationMethod {vm!r} (only did:key is embedded)")
        value = proof.get("proofValue")
        if isinstance(value, str) and len(value) > MAX_MULTIBASE_CHARS:
            return ProofCheck(False, key_mb, f"proofValue has {len(value)} characters; an Ed25519 signature has "
                                             "about 88")
        signature = multibase_decode(value)
    except CertificateFormatError as exc:
        return ProofCheck(False, None, f"malformed proof: {exc}")
    unsecured = {k: v for k, v in document.items() if k != "proof"}
    if "@context" in options:
        ctx, doc_ctx = options["@context"], unsecured.get("@context")
        ctx_list = ctx if isinstance(ctx, list) else [ctx]
        doc_list = doc_ctx if isinstance(doc_ctx, list) else [doc_ctx]
        if doc_list[: len(ctx_list)] != ctx_list:
            return ProofCheck(False, key_mb, "the document's @context does not start with the proof's @context")
        unsecured["@context"] = ctx
    try:
        hash_data = _hash_data(options, unsecured)
    except CertificateFormatError as exc:
        return ProofCheck(False, key_mb, f"cannot canonicalise: {exc}")
    if len(signature) != 64:
        return ProofCheck(False, key_mb, f"proofValue decodes to {len(signature)} bytes, expected 64")
    try:
        _public_from_multibase(key_mb).verify(signature, hash_data)
    except InvalidSignature:
        return ProofCheck(False, key_mb, f"the Ed25519 signature does not match the content (key {key_mb})")
    return ProofCheck(True, key_mb, f"valid {CRYPTOSUITE} signature by {key_mb}")
