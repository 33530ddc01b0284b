"""certun.unlearn: the one call that runs a backend and issues the certificate; backends only run."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import certun
from certun.backends import get_backend
from certun.backends.numpy_backend import LinearModel, batches
from certun.certificates import generate_signing_key, load_certificate, verify
from certun.errors import CertificateFormatError, InvalidParameterError

ROOT = Path(__file__).resolve().parents[1]


def _data(seed=0, n=48):
    rng = np.random.default_rng(seed)
    return LinearModel(rng.normal(size=(3, 4)), rng.normal(size=3)), batches(rng.normal(size=(n, 4)),
                                                                             rng.integers(0, 3, n), 8)


def _gc(T=4):
    return certun.plan(1.0, 1e-5, C0=2.0, C1=0.5, gamma=0.05, T=T)


def test_plan_unlearn_verify_is_three_steps(tmp_path):
    """The user's path: plan, unlearn (certificate issued and written), verify."""
    model, data = _data()
    path = tmp_path / "certificate.json"
    r = certun.unlearn(model, data, _gc(), backend="numpy", certificate_path=path)
    assert r.certificate_path == path and load_certificate(path) == r.certificate
    assert verify(r.certificate, model=r.model.named()).ok


def test_a_backend_returns_a_record_and_never_a_certificate():
    """The backend's result has the record and the openings, and no certificate field at all."""
    model, data = _data()
    run = get_backend("numpy").unlearn(model, data, _gc(), seed=1)
    assert run.record.backend == "numpy" and run.seed_opening is not None
    assert not hasattr(run, "certificate") and not hasattr(run, "certificate_path")


def test_backends_import_only_provenance_and_record_types_from_certificates():
    """Flow one way: no backend module imports certun.certificates beyond provenance and the record types."""
    allowed = {"certun.certificates.provenance", "certun.certificates.RunRecord", "certun.certificates.ModelDigest",
               "certun.certificates.noise_check"}
    offenders = []
    for path in sorted((ROOT / "backends").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("certun.certificates"):
                names = {f"{node.module}.{a.name}" for a in node.names} if node.module == "certun.certificates" \
                    else {node.module}
                offenders += [f"{path.name}: {n}" for n in names - allowed]
            elif isinstance(node, ast.Import):
                offenders += [f"{path.name}: {a.name}" for a in node.names
                              if a.name.startswith("certun.certificates") and a.name not in allowed]
    assert offenders == []


def test_a_modified_previous_certificate_is_refused_before_the_run(tmp_path):
    """Chaining onto a certificate whose content digest does not match is refused, and nothing is written."""
    model, data = _data()
    first = certun.unlearn(model, data, _gc(), backend="numpy", seed=1)
    forged = json.loads(json.dumps(first.certificate))
    forged["claim"]["eps"] = 0.5
    path = tmp_path / "c.json"
    with pytest.raises(CertificateFormatError, match="content_digest"):
        certun.unlearn(first.model, data, _gc(), backend="numpy", previous=forged, certificate_path=path)
    assert list(tmp_path.iterdir()) == []


def test_signing_key_signs_the_certificate():
    """signing_key= gives an eddsa-jcs-2022 proof."""
    model, data = _data()
    r = certun.unlearn(model, data, _gc(), backend="numpy", signing_key=generate_signing_key())
    assert r.certificate["proof"]["cryptosuite"] == "eddsa-jcs-2022"


@pytest.mark.parametrize("backend", ["nope", 3, object()])
def test_a_bad_backend_is_refused_by_name(backend):
    model, data = _data()
    with pytest.raises(InvalidParameterError, match="backend"):
        certun.unlearn(model, data, _gc(), backend=backend)


def test_a_directory_as_certificate_path_is_refused_before_the_run(tmp_path):
    model, data = _data()
    with pytest.raises(InvalidParameterError, match="certificate_path"):
        certun.unlearn(model, data, _gc(), backend="numpy", certificate_path=tmp_path)


def test_results_print_no_secret():
    """repr() of the result shows neither the seed opening nor the history."""
    model, data = _data()
    r = certun.unlearn(model, data, _gc(), backend="numpy", seed=123456789)
    assert "123456789" not in repr(r) and r.seed_opening["secret"] not in repr(r)
