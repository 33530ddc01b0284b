"""eddsa-jcs-2022 signatures: the W3C test vector step by step, key formats, and tampering."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from certun.certificates import canonical_bytes, generate_signing_key, load_public_key, load_signing_key
from certun.certificates._multibase import b58decode, b58encode
from certun.certificates._signing import (
    load_public_key_file,
    public_key_multibase,
    sign_document,
    signing_key_multibase,
    verification_method_for,
    verify_document,
)
from certun.errors import CertificateFormatError

W3C = Path(__file__).parent / "assets" / "w3c_eddsa_jcs_2022"


def _json(name: str):
    return json.loads((W3C / name).read_text())


def _txt(name: str) -> str:
    return (W3C / name).read_text().strip()


KEYS = _json("keyPair.json")
UNSIGNED = _json("unsigned.json")
CONFIG = _json("proofConfigJCS.json")
SIGNED = _json("signedJCS.json")


def test_w3c_key_pair_decodes():
    """The vector's private Multikey yields its public Multikey (multicodec 0x8026 / 0xed01)."""
    key = load_signing_key(KEYS["privateKeyMultibase"])
    assert public_key_multibase(key) == KEYS["publicKeyMultibase"]
    assert signing_key_multibase(key) == KEYS["privateKeyMultibase"]


def test_w3c_canonical_forms_and_hashes():
    """RFC 8785 bytes and SHA-256 hashes of the document and proof config equal the vector's."""
    assert canonical_bytes(UNSIGNED).decode() == _txt("canonDocJCS.txt")
    assert canonical_bytes(CONFIG).decode() == _txt("proofCanonJCS.txt")
    doc_hash = hashlib.sha256(canonical_bytes(UNSIGNED)).hexdigest()
    proof_hash = hashlib.sha256(canonical_bytes(CONFIG)).hexdigest()
    assert doc_hash == _txt("docHashJCS.txt")
    assert proof_hash == _txt("proofHashJCS.txt")
    assert proof_hash + doc_hash == _txt("combinedHashJCS.txt")


def test_w3c_signature_is_reproduced_bit_for_bit():
    """Signing the unsigned vector with its key and proof options gives exactly the signed vector."""
    signed = sign_document(UNSIGNED, KEYS["privateKeyMultibase"], created=CONFIG["created"],
                           verification_method=CONFIG["verificationMethod"])
    assert signed == SIGNED
    assert signed["proof"]["proofValue"] == _txt("sigBTC58JCS.txt")
    assert b58decode(signed["proof"]["proofValue"][1:]).hex() == _txt("sigHexJCS.txt")


def test_w3c_signed_vector_verifies():
    """The signed vector verifies under the did:key it names."""
    check = verify_document(SIGNED)
    assert check.valid and check.key == KEYS["publicKeyMultibase"]


@pytest.mark.parametrize(("where", "value"), [
    (("name",), "Forged Credential"),
    (("credentialSubject", "alumniOf"), "Another School"),
    (("proof", "created"), "2023-02-24T23:36:39Z"),
    (("proof", "proofPurpose"), "authentication"),
    (("@context",), ["https://www.w3.org/ns/credentials/v2"]),
])
def test_tampered_vector_fails(where, value):
    """Changing the document, the proof options or the @context invalidates the signature."""
    doc = json.loads(json.dumps(SIGNED))
    target = doc
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value
    assert not verify_document(doc).valid


def test_wrong_key_and_malformed_proofs_fail():
    """Another key, a truncated proofValue or a wrong cryptosuite never verify, and never raise."""
    other = generate_signing_key()
    assert not verify_document(SIGNED, public_key=other.public_key()).valid
    for change in ({"proofValue": SIGNED["proof"]["proofValue"][:-3]}, {"proofValue": "nope"},
                   {"cryptosuite": "eddsa-rdfc-2022"}, {"verificationMethod": "https://example.com/key"}):
        doc = {**SIGNED, "proof": {**SIGNED["proof"], **change}}
        assert not verify_document(doc).valid
    assert not verify_document(UNSIGNED).valid


def test_key_formats_normalise_to_one_multikey(tmp_path):
    """Key objects, raw bytes, did:key, PEM text and key files all name the same public key."""
    key = generate_signing_key()
    mb = public_key_multibase(key)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    (tmp_path / "k.pem").write_bytes(pem)
    (tmp_path / "k.txt").write_text(verification_method_for(key) + "\n")
    forms = [key, key.public_key(), raw, mb, verification_method_for(key), pem.decode()]
    assert {load_public_key(f) for f in forms} == {mb}
    assert {load_public_key_file(tmp_path / "k.pem"), load_public_key_file(str(tmp_path / "k.txt"))} == {mb}
    with pytest.raises(CertificateFormatError, match="not a key"):
        load_public_key(tmp_path / "k.pem")  # files only through load_public_key_file
    with pytest.raises(CertificateFormatError):
        load_public_key("z6MkNOTAKEY")
    with pytest.raises(CertificateFormatError):
        load_public_key(12)


def test_signing_key_round_trips_through_pem_and_multibase():
    """A signing key saved as PKCS#8 PEM or as a private Multikey loads back to the same key."""
    key = generate_signing_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    for form in (pem, pem.decode(), signing_key_multibase(key)):
        assert public_key_multibase(load_signing_key(form)) == public_key_multibase(key)


@given(st.binary(max_size=80))
def test_base58_round_trip(data):
    """base58-btc decodes what it encodes, leading zero bytes included."""
    assert b58decode(b58encode(data)) == data
