"""The model a first request starts from is committed to, never published (artifacts.model_before).

A plain digest of the trained model lets anyone who can retrain test whether a record was in the
training data. ``issue`` refuses one unless it is the model the previous certificate released, and
``verify`` FAILs a first certificate that carries one.
"""

from __future__ import annotations

import certificates_fixtures as fx
import pytest

from certun.certificates import issue, model_commitment, model_digest, open_model_commitment, verify
from certun.errors import InvalidParameterError


def test_model_commitment_opens_only_with_its_opening():
    """The opening (root, salt) opens the commitment; another salt or root does not, and salts hide the root."""
    digest = model_digest(fx.params(0))
    public, private = model_commitment(digest)
    assert open_model_commitment(public, private) and private["root"] == digest.root
    other_public, other_private = model_commitment(digest)
    assert other_public["commitment"] != public["commitment"]
    assert not open_model_commitment(public, other_private)
    assert not open_model_commitment(public, {**private, "root": model_digest(fx.params(1)).root})
    with pytest.raises(InvalidParameterError, match="digest"):
        model_commitment("not a root")


def test_issue_refuses_a_plain_starting_digest_in_a_first_certificate():
    """A first certificate (no previous) with a plain model_before digest is refused: it would reveal membership."""
    s = fx.planned_gc()
    record = fx.record(s, model_before=model_digest(fx.params(1000)))
    with pytest.raises(InvalidParameterError, match="model_before"):
        issue(s, record)
    cert = fx.certificate()
    assert set(cert["artifacts"]["model_before"]) == {"scheme", "commitment"}
    assert verify(cert).ok


def test_issue_accepts_a_plain_digest_only_of_the_previous_released_model():
    """Chained onto a previous certificate, model_before may be plain only if it is that certificate's release."""
    first = fx.certificate()
    chained = fx.certificate(previous=first, model_seed=1, model_before=model_digest(fx.params(0)))
    assert chained["artifacts"]["model_before"]["root"] == first["artifacts"]["unlearned_model"]["root"]
    with pytest.raises(InvalidParameterError, match="previous certificate released"):
        fx.certificate(previous=first, model_seed=1, model_before=model_digest(fx.params(7)))


def test_verify_fails_a_first_certificate_that_publishes_its_starting_model():
    """A sequence-0 certificate edited to carry a plain model_before digest (and resealed) FAILs consistency."""
    cert = fx.certificate()
    digest = model_digest(fx.params(1000))
    cert["artifacts"]["model_before"] = {"algorithm": "certun.tensor-sha256.v1", **digest.to_dict()}
    report = verify(fx.reseal(cert))
    assert fx.failed(report) == ["consistency"]
    assert "reveals whether a record was in the training data" in report["consistency"].detail
