"""Verifiable unlearning certificates: issue, sign, verify.

A certificate is the product's promise in a file: closed, versioned JSON holding the claim (ε, δ),
the full mechanism (``Schedule.to_dict()``), digests of the model tensors (a salted commitment for
a first request's starting model), salted Merkle roots of the
retain and forget sets, a commitment to the noise seed, an optional link to the previous certificate
and an optional Ed25519 ``eddsa-jcs-2022`` signature. :func:`verify` recomputes the guarantee with
the accountant and never trusts a stored number. Format and guarantees: docs/certificates.md.
"""

from certun.certificates._canonical import canonical_bytes, content_digest
from certun.certificates._commitment import (
    key_commitment,
    model_commitment,
    open_model_commitment,
    open_seed_commitment,
    seed_commitment,
)
from certun.certificates._digest import model_digest, tensor_digest
from certun.certificates._issue import issue, write_certificate
from certun.certificates._merkle import MerkleReceipt, MerkleTree, encode_id, merkle_tree, verify_receipt
from certun.certificates._parse import load_certificate, read_bytes, strict_loads
from certun.certificates._record import ModelDigest, RunRecord
from certun.certificates._schema import FORMAT_VERSION, SUPPORTED_FORMAT_VERSIONS
from certun.certificates._signing import (
    generate_signing_key,
    load_public_key,
    load_public_key_file,
    load_signing_key,
    public_key_multibase,
    signing_key_multibase,
)
from certun.certificates._verification_report import CheckResult, Report, Status, printable
from certun.certificates._verify import verify

__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_FORMAT_VERSIONS",
    "CheckResult",
    "MerkleReceipt",
    "MerkleTree",
    "ModelDigest",
    "Report",
    "RunRecord",
    "Status",
    "canonical_bytes",
    "content_digest",
    "encode_id",
    "generate_signing_key",
    "issue",
    "load_certificate",
    "load_public_key",
    "load_public_key_file",
    "load_signing_key",
    "merkle_tree",
    "model_commitment",
    "model_digest",
    "open_model_commitment",
    "key_commitment",
    "open_seed_commitment",
    "printable",
    "public_key_multibase",
    "read_bytes",
    "seed_commitment",
    "signing_key_multibase",
    "strict_loads",
    "tensor_digest",
    "verify",
    "verify_receipt",
    "write_certificate",
]
