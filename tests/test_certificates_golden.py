"""Golden certificate files: the format cannot drift silently, and stored certificates stay verifiable.

``tests/data/*.cert.json`` were written by :func:`build_golden` (regenerate deliberately with
``CERTUN_REGEN_GOLDEN=1 pytest tests/test_certificates_golden.py`` and review the diff; a format
change must bump ``format_version`` and keep the old files verifying). Comparison normalises the
fields that legitimately vary: library versions, numbers the accountant recomputes (compared with a
tolerance instead), and what depends on them (content digest, signature).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import certificates_fixtures as fx
import pytest

from certun.certificates import (
    FORMAT_VERSION,
    Status,
    load_certificate,
    model_digest,
    public_key_multibase,
    verify,
    write_certificate,
)
from certun.certificates._merkle import TREE_SCHEME_V1

DATA = Path(__file__).parent / "data"
PINNED = [public_key_multibase(fx.TEST_KEY)]
#: Recomputed by the accountant at issue time: compared with a relative tolerance, not bit for bit.
ACCOUNTED = {
    "mechanism": ("achieved_eps", "achieved_delta", "achieved_log_delta", "eps_renyi", "alpha"),
    "accounting": ("eps", "delta", "log_delta", "eps_renyi", "alpha"),
}


def build_golden() -> dict[str, dict]:
    """The golden certificates, built deterministically (fixed keys, salts, seeds and timestamps)."""
    v1 = TREE_SCHEME_V1  # the golden files predate hash-ordered leaves; v1 trees stay verifiable
    gc = fx.certificate(fx.fixed_schedule("gradient_clipping"), signed=True, tree_scheme=v1)
    mc = fx.certificate(fx.fixed_schedule("model_clipping"), previous=gc, model_seed=1, tree_scheme=v1,
                        model_before=model_digest(fx.params(0)))  # starts from gc's released model
    op = fx.certificate(fx.fixed_schedule("output_perturbation"), tree_scheme=v1)
    honest = fx.fixed_schedule("gradient_clipping")
    bad = fx.certificate(honest, tree_scheme=v1)
    bad["mechanism"]["sigma"] = honest.sigma * (honest.achieved.eps_renyi / 1.0) ** 0.5  # eps_renyi = 1
    return {
        "gradient_clipping_signed.cert.json": gc,
        "model_clipping_chained.cert.json": mc,
        "output_perturbation.cert.json": op,
        "official_code_noise.bad.cert.json": fx.reseal(bad),
    }


def receipt_for_42() -> dict:
    """The forget-set receipt of record 42 in the golden certificates (used by docs and CLI tests)."""
    from certun.certificates import merkle_tree

    return merkle_tree(fx.FORGET_IDS, salt_key=fx.MERKLE_SALT_KEY, scheme=TREE_SCHEME_V1).receipt_for(42).to_dict()


def normalise(cert: dict) -> dict:
    """A copy without the fields that legitimately vary between runs and library versions."""
    out = copy.deepcopy(cert)
    out["accounting"]["versions"] = "<versions>"
    for section, keys in ACCOUNTED.items():
        for key in keys:
            out[section][key] = "<recomputed>" if out[section][key] is not None else None
    out["content_digest"] = "<digest>"
    if "proof" in out:
        out["proof"]["proofValue"] = "<signature>"
    if out["chain"]["previous"] is not None:
        out["chain"]["previous"] = "<digest of previous>"
    return out


if os.environ.get("CERTUN_REGEN_GOLDEN") == "1":  # pragma: no cover - deliberate regeneration only
    DATA.mkdir(exist_ok=True)
    for _name, _cert in build_golden().items():
        write_certificate(_cert, DATA / _name)
    (DATA / "receipt_forget_42.json").write_text(json.dumps(receipt_for_42(), indent=2) + "\n")

GOLDEN = sorted(p.name for p in DATA.glob("*.cert.json"))


def test_golden_files_exist():
    """All golden certificates are checked in."""
    assert GOLDEN == sorted(build_golden())


@pytest.mark.parametrize("name", GOLDEN)
def test_format_has_not_drifted(name):
    """Today's certun writes the same certificate (normalised) as the stored golden file."""
    stored = load_certificate(DATA / name)
    built = build_golden()[name]
    assert normalise(built) == normalise(stored)
    for section, keys in ACCOUNTED.items():
        for key in keys:
            if stored[section][key] is None:
                assert built[section][key] is None, key
            else:
                assert built[section][key] == pytest.approx(stored[section][key], rel=1e-6, abs=0.0), key


@pytest.mark.parametrize("name", [n for n in GOLDEN if ".bad." not in n])
def test_stored_certificates_still_verify(name):
    """Every stored good certificate verifies with today's accountant (old certificates stay valid)."""
    report = verify(DATA / name, trusted_keys=PINNED if "signed" in name else (), chain_dir=DATA)
    assert report.ok, str(report)
    assert report["format"].detail.endswith(f"format_version {FORMAT_VERSION}")


def test_stored_chain_links_back():
    """The chained golden certificate links to the signed one in tests/data."""
    report = verify(DATA / "model_clipping_chained.cert.json", chain_dir=DATA)
    assert report["chain"].status is Status.PASS
    assert "2 certificate(s)" in report["chain"].detail


def test_stored_official_code_noise_certificate_fails():
    """The stored certificate with the authors' code's noise (eps_renyi = 1, claim (1, 1e-5)) FAILs."""
    report = verify(DATA / "official_code_noise.bad.cert.json")
    assert not report.ok
    assert [c.name for c in report.failures] == ["recompute"]


def test_stored_receipt_verifies_against_stored_certificate():
    """The stored receipt of record 42 proves membership in the golden certificate's forget set."""
    from certun.certificates import verify_receipt

    stored = json.loads((DATA / "receipt_forget_42.json").read_text())
    assert stored == receipt_for_42()
    cert = load_certificate(DATA / "gradient_clipping_signed.cert.json")
    assert verify_receipt(stored, root=cert["artifacts"]["forget_set"]["merkle_root"], record_id=42)
