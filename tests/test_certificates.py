"""Issue → verify round trips and one test per failure mode of ``certun.certificates.verify``."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re

import certificates_fixtures as fx
import numpy as np
import pytest

import certun
from certun.certificates import (
    CheckResult,
    Report,
    Status,
    load_certificate,
    model_digest,
    public_key_multibase,
    verify,
    write_certificate,
)
from certun.certificates import _recompute as recompute_module
from certun.certificates._verify import CHECK_NAMES
from certun.errors import CertificateFormatError, InvalidParameterError


def _text(cert: dict) -> str:
    return json.dumps(cert, indent=1)


# ------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("variant", ["gradient_clipping", "model_clipping", "output_perturbation"])
def test_issue_then_verify_passes_every_check_it_can_run(variant):
    """An honestly issued certificate verifies: no FAIL, recompute PASS, the model's digests match."""
    cert = fx.certificate(fx.fixed_schedule(variant))
    report = verify(cert, model={**fx.params(), **fx.frozen()})
    assert report.ok, str(report)
    assert [c.name for c in report.checks] == list(CHECK_NAMES)
    assert report["recompute"].status is Status.PASS
    assert report["model"].status is Status.PASS


def test_retrain_and_varying_schedules_verify():
    """Retraining (ε = δ = 0, no noise) and a per-step σ schedule round-trip and verify."""
    retrain = certun.Schedule(variant="retrain", T=0, target=certun.Guarantee(0.0, 0.0),
                              achieved=certun.Guarantee(0.0, 0.0))
    assert verify(fx.certificate(retrain)).ok
    s = fx.planned_gc()
    varying = fx.with_achieved(dataclasses.replace(
        s, sigmas=tuple(s.sigma * (1.2 if i % 2 else 1.0) for i in range(s.T))))
    cert = fx.certificate(varying)
    assert cert["mechanism"]["sigma"] is None and len(cert["mechanism"]["sigmas"]) == s.T
    assert verify(cert).ok
    cert["mechanism"]["sigmas"] = [x * 0.8 for x in cert["mechanism"]["sigmas"]]  # a forger's weaker noise
    assert fx.failed(verify(fx.reseal(cert))) == ["recompute"]


def test_planned_schedule_round_trips_through_a_file(tmp_path):
    """A certificate for ``plan(...)``'s schedule, written atomically and read back, still verifies."""
    cert = fx.certificate()
    path = write_certificate(cert, tmp_path / "cert.json")
    assert load_certificate(path) == cert
    assert verify(path).ok
    assert verify(path.read_bytes()).ok
    assert os.listdir(tmp_path) == ["cert.json"]


def test_mechanism_is_exactly_schedule_to_dict():
    """``mechanism`` is ``Schedule.to_dict()`` and rebuilds the very same schedule."""
    s = fx.planned_gc()
    cert = fx.certificate(s)
    assert cert["mechanism"] == s.to_dict()
    assert certun.Schedule.from_dict(cert["mechanism"]) == s


def test_certificate_holds_no_identifier_and_no_seed():
    """Neither record identifiers nor the seed appear anywhere in the certificate text."""
    text = json.dumps(fx.certificate())
    assert '"seed"' not in text and "1234" not in text
    assert '"record_id"' not in text


# --------------------------------------------------------------------------- the recompute check
def test_official_code_noise_fails_recompute():
    """docs/theory.md#authors-code: σ giving eps_renyi = 1 (the authors' code) while claiming (1, 1e-5) FAILs.

    The honest exact σ is ≈5.7× the official one (≈7.2× against the closed form of docs/theory.md#gradient-clipping);
    the recomputed ε is ≈7.08, as docs/theory.md#authors-code states.
    """
    honest = fx.planned_gc()
    official_sigma = honest.sigma * math.sqrt(honest.achieved.eps_renyi / 1.0)
    forged = fx.certificate(honest)
    forged["mechanism"]["sigma"] = official_sigma
    forged = fx.reseal(forged)
    report = verify(forged)
    assert not report.ok
    assert fx.failed(report) == ["recompute"]
    detail = report["recompute"].detail
    assert detail.startswith("claimed eps 1.0 < recomputed 7.07")
    assert "delta 1e-05" in detail and "alpha" in detail
    rebuilt = certun.guarantee(certun.Schedule.from_dict(forged["mechanism"]))
    assert rebuilt.eps_renyi == pytest.approx(1.0, rel=1e-9)
    assert rebuilt.eps == pytest.approx(7.08, abs=0.01)


def test_stored_achieved_numbers_are_never_trusted():
    """Lowering the stored achieved ε cannot rescue an under-noised mechanism, and only WARNs when honest."""
    cert = fx.certificate()
    cert["mechanism"]["sigma"] *= 0.9
    cert["mechanism"]["achieved_eps"] = 0.5
    cert["accounting"]["eps"] = 0.5
    report = verify(fx.reseal(cert))
    assert "recompute" in fx.failed(report)

    honest = fx.certificate()
    honest["accounting"]["eps"] = 0.123
    report = verify(fx.reseal(honest))
    assert report.ok
    assert report["stored_accounting"].status is Status.WARN
    assert "0.123" in report["stored_accounting"].detail


def test_near_tie_is_decided_with_mpmath(monkeypatch):
    """A claim within 1e-9 of the float64 recomputation is decided by ``guarantee(exact=True)``."""
    calls = []
    real = recompute_module.guarantee

    def spy(schedule, *, exact=False):
        calls.append(exact)
        return real(schedule, exact=exact)

    cert = fx.certificate()  # plan's σ is tight: ε = 1 − O(1e-10)
    monkeypatch.setattr(recompute_module, "guarantee", spy)
    report = verify(cert)
    assert calls == [False, True]
    assert "float64 eps and delta within 1e-09 of the claim: decided with mpmath" in report["recompute"].detail
    assert report["recompute"].status is Status.PASS


@pytest.mark.parametrize("sign", [-1, 1])
def test_near_tie_has_no_tolerance_on_the_unsafe_side(monkeypatch, sign):
    """If float64 says ε = claim·(1 − 1e-12) but mpmath says claim·(1 + 1e-12), the claim FAILs; and
    the other way round it PASSes: the exact value decides, with no tolerance."""
    def fake(schedule, *, exact=False):
        eps = 1.0 * (1 + (sign if exact else -sign) * 1e-12)
        return certun.Guarantee(eps, schedule.target.delta, eps_renyi=0.03, alpha=17.8)  # GC: δ is the target

    cert = fx.certificate()
    monkeypatch.setattr(recompute_module, "guarantee", fake)
    status = verify(cert)["recompute"].status
    assert status is (Status.FAIL if sign > 0 else Status.PASS)


def test_smaller_claimed_delta_fails_for_model_clipping():
    """A δ claim below the recomputed δ_T FAILs recompute (claim and target changed together)."""
    cert = fx.certificate(fx.fixed_schedule("model_clipping"))
    for section in ("claim", "mechanism"):
        cert[section]["delta"] = 1e-200
    report = verify(fx.reseal(cert))
    # the sampler's tail residual over d=3 and 8 draws (~2^-126) is no longer below 1e-13·delta either
    assert fx.failed(report) == ["noise", "recompute"]
    assert report["recompute"].detail.startswith("claimed delta 1e-200 < recomputed")


def test_all_skip_report_is_not_ok():
    """A report without a PASSing recompute check is not ok, even with no FAIL at all."""
    assert not Report((CheckResult("recompute", Status.SKIP, "x"),)).ok
    assert not Report(()).ok
    assert Report((CheckResult("recompute", Status.PASS, "x"), CheckResult("model", Status.WARN, "y"))).ok


# ------------------------------------------------------------------------------------ strict parse
@pytest.mark.parametrize(("old", "new", "needle"), [
    ('"lam": 0.0', '"lam": NaN', "NaN"),
    ('"lam": 0.0', '"lam": -Infinity', "Infinity"),
    ('"lam": 0.0', '"lam": 1e400', "overflows"),
    ('"T": 100,', '"T": 100, "T": 100,', "duplicate key 'T'"),
    ('"d": 26', '"d": 123456789012345678901234', "2**53"),
])
def test_strict_parse_rejects(old, new, needle):
    """NaN, Infinity, 1e400, duplicate keys and unsafe integers FAIL strict_parse; all else is SKIP."""
    text = _text(fx.certificate())
    assert old in text
    report = verify(text.replace(old, new, 1).encode())
    assert fx.failed(report) == ["strict_parse"]
    assert needle in report["strict_parse"].detail
    assert report["recompute"].status is Status.SKIP
    assert not report.ok
    with pytest.raises(CertificateFormatError, match=re.escape(needle)):
        load_certificate(text.replace(old, new, 1).encode())


def test_integer_as_float_fails_schema():
    """``"T": 100.0`` hashes like ``100`` under RFC 8785, so the schema refuses it where an integer is due."""
    cert = fx.certificate()
    text = _text(cert).replace('"T": 100,', '"T": 100.0,', 1)
    report = verify(text.encode())
    assert report["content_digest"].status is Status.PASS  # canonical bytes cannot tell
    assert "schema" in fx.failed(report)
    assert "mechanism.T: 100.0 is not of type 'integer'" in report["schema"].detail
    with pytest.raises(CertificateFormatError, match=r"mechanism\.T"):
        load_certificate(text.encode())


def test_in_memory_nan_fails_strict_parse():
    """A dict holding NaN is refused like a file holding NaN."""
    cert = fx.certificate()
    cert["mechanism"]["lam"] = float("nan")
    assert fx.failed(verify(cert)) == ["strict_parse"]


@pytest.mark.parametrize("version", [2, 0, "1", 1.0, None])
def test_unknown_format_version_fails(version):
    """Only known integer format versions are read; anything else FAILs ``format`` with the valid list."""
    cert = fx.certificate()
    cert["format_version"] = version
    report = verify(cert)
    assert fx.failed(report) == ["format"]
    assert "this certun reads format_version 1" in report["format"].detail
    with pytest.raises(CertificateFormatError, match="format_version"):
        load_certificate(_text(cert).encode())


def test_not_a_certificate_fails_format():
    """Valid JSON that is not a certun certificate FAILs ``format``."""
    report = verify(b'{"hello": "world"}')
    assert fx.failed(report) == ["format"]
    report = verify(b"[1, 2]")
    assert fx.failed(report) == ["format"]


def test_unreadable_file_fails(tmp_path):
    """A missing file is a FAIL with its name, not a traceback."""
    report = verify(tmp_path / "nope.json")
    assert fx.failed(report) == ["strict_parse"]
    assert "nope.json" in report["strict_parse"].detail


# -------------------------------------------------------------------------------------- raw seeds
@pytest.mark.parametrize("where", ["randomness", "execution.extra", "execution.finetune"])
def test_raw_seed_fails(where):
    """A key that looks like a raw seed anywhere in the certificate FAILs ``no_raw_seed``."""
    cert = fx.certificate()
    target = cert
    for part in where.split("."):
        target = target[part]
    target["seed"] = 1234
    report = verify(fx.reseal(cert))
    assert "no_raw_seed" in fx.failed(report)
    assert f"{where}.seed" in report["no_raw_seed"].detail


def test_issue_refuses_raw_seed_and_reused_noise():
    """``issue`` never writes a seed, and never certifies a run that reused its noise draw."""
    s = fx.planned_gc()
    with pytest.raises(InvalidParameterError, match="seed"):
        certun.certificates.issue(s, fx.record(s, extra={"torch_seed": 7}))
    with pytest.raises(InvalidParameterError, match="noise_mode"):
        certun.certificates.issue(s, fx.record(s, extra={"noise_mode": "reuse_first_draw_UNSAFE"}))


def test_parameter_named_seed_is_not_a_raw_seed():
    """A model parameter called ``seed.weight`` is a name, not a seed."""
    s = fx.planned_gc()
    p = {"seed.weight": np.ones(3, np.float32)}
    rec = fx.record(s, unlearned_parameters=("seed.weight",), d=3,
                   model_after=certun.certificates.model_digest(p), model_before=None)
    assert verify(certun.certificates.issue(s, rec)).ok


# ------------------------------------------------------------------------------------- signatures
def test_unpinned_signature_warns_pinned_passes():
    """A valid signature is WARN without a pinned key (integrity only) and PASS with it."""
    cert = fx.certificate(signed=True)
    unpinned = verify(cert)
    assert unpinned.ok and unpinned["signature"].status is Status.WARN
    assert "NOT pinned" in unpinned["signature"].detail
    pinned = verify(cert, trusted_keys=[public_key_multibase(fx.TEST_KEY)])
    assert pinned.ok and pinned["signature"].status is Status.PASS


def test_tampered_signed_certificate_fails_signature():
    """Editing a signed certificate and recomputing its digest still FAILs the signature."""
    cert = fx.certificate(signed=True)
    cert["execution"]["device"] = "cuda:0"
    report = verify(fx.reseal(cert, keep_proof=True))
    assert fx.failed(report) == ["signature"]
    assert "does not match" in report["signature"].detail


def test_signature_by_another_key_fails_when_a_key_is_pinned():
    """A valid signature by a key that is not pinned FAILs once the verifier pins a key."""
    cert = fx.certificate(signed=True)
    report = verify(cert, trusted_keys=[public_key_multibase(fx.OTHER_KEY)])
    assert fx.failed(report) == ["signature"]
    assert public_key_multibase(fx.TEST_KEY) in report["signature"].detail


def test_stripped_signature_fails_when_a_key_is_pinned():
    """Removing the proof is undetectable by digest, so a pinned key demands a signature."""
    cert = fx.certificate(signed=True)
    del cert["proof"]
    assert verify(cert).ok  # integrity alone cannot notice
    report = verify(cert, trusted_keys=[public_key_multibase(fx.TEST_KEY)])
    assert fx.failed(report) == ["signature"]


def test_unreadable_trusted_key_fails():
    """A trusted key that is not an Ed25519 key FAILs the signature check with the reason."""
    report = verify(fx.certificate(signed=True), trusted_keys=["not-a-key"])
    assert fx.failed(report) == ["signature"]


# ------------------------------------------------------------------------------------ consistency
@pytest.mark.parametrize(("path", "value", "needle"), [
    ("execution.noisy_steps", 99, "execution.noisy_steps is 99 but mechanism.T is 100"),
    ("execution.d", 27, "execution.d is 27 but the recorded parameter shapes imply d=26"),
    ("execution.clipping", None, "gradient_clipping needs gradient clipping per_sample or batch"),
    ("claim.eps", 0.5, "claim.eps is 0.5 but mechanism.eps is 1.0"),
    ("claim.variant", "model_clipping", "claim.variant is 'model_clipping'"),
    ("accounting.method", "closed_form", "accounting.method"),
    ("chain.sequence", 3, "chain.sequence is 3"),
])
def test_inconsistent_fields_fail_consistency(path, value, needle):
    """Each internal inconsistency FAILs ``consistency`` and says what was expected."""
    cert = fx.certificate()
    *head, last = path.split(".")
    target = cert
    for part in head:
        target = target[part]
    target[last] = value
    report = verify(fx.reseal(cert))
    assert "consistency" in fx.failed(report)
    assert needle in report["consistency"].detail


def test_sigma_list_of_wrong_length_fails():
    """A per-step σ list shorter than T FAILs consistency and recompute."""
    cert = fx.certificate()
    m = cert["mechanism"]
    m["sigmas"], m["sigma"] = [m["sigma"]] * 99, None
    report = verify(fx.reseal(cert))
    assert {"consistency", "recompute"} <= set(fx.failed(report))
    assert "mechanism.T=100 but mechanism.sigmas has 99 values" in report["consistency"].detail


def test_model_root_must_match_its_tensor_digests():
    """A root that does not follow from the per-tensor digests FAILs consistency."""
    cert = fx.certificate()
    cert["artifacts"]["unlearned_model"]["root"] = "sha256:" + "ab" * 32
    cert["subject"][0]["digest"]["sha256"] = "ab" * 32
    report = verify(fx.reseal(cert))
    assert "its tensor digests give" in report["consistency"].detail


def test_issue_refuses_a_schedule_that_misses_its_target():
    """``issue`` recomputes the guarantee and refuses an under-noised schedule, printing the numbers."""
    s = fx.planned_gc()
    weak = dataclasses.replace(s, sigmas=tuple(x * 0.5 for x in s.sigmas))
    with pytest.raises(InvalidParameterError, match=r"claimed eps 1\.0 < recomputed"):
        certun.certificates.issue(weak, fx.record(weak))


def test_issue_refuses_inconsistent_record():
    """``issue`` refuses a record whose steps, d or clipping contradict the schedule."""
    s = fx.planned_gc()
    with pytest.raises(InvalidParameterError, match="noisy_steps"):
        certun.certificates.issue(s, fx.record(s, noisy_steps=3))
    with pytest.raises(InvalidParameterError, match="clipping"):
        certun.certificates.issue(s, fx.record(s, clipping=None))
    with pytest.raises(CertificateFormatError, match="clipping"):
        certun.certificates.issue(s, fx.record(s, clipping="sometimes"))


# ------------------------------------------------------------------------------------------ model
def test_model_npz_and_pt_match(tmp_path):
    """The model check reads .npz and .pt state_dicts and finds them identical to the digests."""
    torch = pytest.importorskip("torch")
    cert = fx.certificate()
    tensors = {**fx.params(), **fx.frozen()}
    np.savez(tmp_path / "m.npz", **tensors)
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, tmp_path / "m.pt")
    for name in ("m.npz", "m.pt"):
        report = verify(cert, model=tmp_path / name)
        assert report.ok and report["model"].status is Status.PASS, report["model"].detail


def test_model_first_differing_tensor_is_named(tmp_path):
    """A changed unlearned tensor FAILs ``model`` and the detail names it with got/expected digests."""
    tensors = {**fx.params(), **fx.frozen()}
    tensors["fc2.weight"] = tensors["fc2.weight"].copy()
    tensors["fc2.weight"][0, 0] += 1e-3
    np.savez(tmp_path / "m.npz", **tensors)
    report = verify(fx.certificate(), model=tmp_path / "m.npz")
    assert fx.failed(report) == ["model"]
    assert report["model"].detail.startswith("tensor 'fc2.weight' differs: got sha256:")


def test_model_changed_frozen_parameter_fails():
    """Frozen parameters must be bit-identical to their recorded digests."""
    tensors = {**fx.params(), **fx.frozen()}
    tensors["emb.weight"] = tensors["emb.weight"] + 1
    report = verify(fx.certificate(), model=tensors)
    assert fx.failed(report) == ["model"]
    assert "frozen parameter 'emb.weight' changed" in report["model"].detail


def test_model_dtype_change_is_a_difference():
    """The same values in float64 are a different tensor: dtype is part of the digest."""
    tensors = {**{k: v.astype(np.float64) for k, v in fx.params().items()}, **fx.frozen()}
    assert fx.failed(verify(fx.certificate(), model=tensors)) == ["model"]


def test_model_missing_tensor_and_extra_buffer():
    """A missing unlearned tensor FAILs; so does a tensor the certificate does not cover, unless allowed."""
    tensors = {**fx.params(), **fx.frozen()}
    missing = {k: v for k, v in tensors.items() if k != "fc1.bias"}
    assert "lacks unlearned parameter 'fc1.bias'" in verify(fx.certificate(), model=missing)["model"].detail
    extra = {**tensors, "bn.running_mean": np.zeros(4, np.float32)}
    assert fx.failed(verify(fx.certificate(), model=extra)) == ["model"]
    report = verify(fx.certificate(), model=extra, allow_uncovered=True)
    assert report.ok and report["model"].status is Status.WARN
    assert "bn.running_mean" in report["model"].detail


def test_model_file_errors_are_failures(tmp_path):
    """Unknown suffixes and corrupt files FAIL the model check with a message."""
    (tmp_path / "m.bin").write_bytes(b"x")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert "unknown model file type" in verify(fx.certificate(), model=tmp_path / "m.bin")["model"].detail
    assert fx.failed(verify(fx.certificate(), model=tmp_path / "bad.npz")) == ["model"]


def test_model_torch_tensor_digest_equals_numpy():
    """A torch state_dict given in memory hashes like the numpy arrays it came from."""
    torch = pytest.importorskip("torch")
    tensors = {k: torch.from_numpy(v) for k, v in {**fx.params(), **fx.frozen()}.items()}
    assert verify(fx.certificate(), model=tensors)["model"].status is Status.PASS


# ------------------------------------------------------------------------------------------ chain
def _ledger(tmp_path, n=3, *, continuous=True):
    certs = []
    for i in range(n):
        before = {"model_before": model_digest(fx.params(i - 1))} if continuous and i else {}
        certs.append(fx.certificate(previous=certs[-1] if certs else None, model_seed=i, **before))
        write_certificate(certs[-1], tmp_path / f"{i:03d}.json")
    return certs


def test_chain_links_pass(tmp_path):
    """Three certificates linked by content digest verify as a chain back to sequence 0."""
    certs = _ledger(tmp_path)
    assert [c["chain"]["sequence"] for c in certs] == [0, 1, 2]
    report = verify(certs[-1], chain_dir=tmp_path)
    assert report["chain"].status is Status.PASS
    assert "3 certificate(s)" in report["chain"].detail
    assert report.ok


def test_chain_fails_when_a_noisy_request_did_not_start_from_the_released_model(tmp_path):
    """If noisy request n did not start from the model released by request n-1, both releases are noisy views
    of earlier models and compose: the chain check FAILs (an exact route only WARNs)."""
    certs = _ledger(tmp_path, continuous=False)
    report = verify(certs[-1], chain_dir=tmp_path)
    assert report["chain"].status is Status.FAIL and not report.ok
    assert "did not start from the model released at sequence 1" in report["chain"].detail


def test_chain_without_folder_is_skipped():
    """A certificate with a previous link but no ledger folder SKIPs the chain check and says why."""
    first = fx.certificate()
    second = fx.certificate(previous=first)
    assert verify(second)["chain"].status is Status.SKIP


def test_chain_missing_or_modified_predecessor_fails(tmp_path):
    """A predecessor that is missing, or modified (even resealed), breaks the chain."""
    certs = _ledger(tmp_path)
    forged = fx.reseal(copy.deepcopy(certs[1]))
    forged["execution"]["device"] = "tpu"
    write_certificate(fx.reseal(forged), tmp_path / "001.json")
    report = verify(certs[2], chain_dir=tmp_path)
    assert fx.failed(report) == ["chain"]
    assert "sequence 1" in report["chain"].detail
    (tmp_path / "001.json").unlink()
    assert fx.failed(verify(certs[2], chain_dir=tmp_path)) == ["chain"]


def test_issue_refuses_modified_previous():
    """``issue`` will not chain onto a certificate whose digest does not match its content."""
    first = fx.certificate()
    first["execution"]["device"] = "tpu"
    with pytest.raises(CertificateFormatError, match="previous certificate"):
        fx.certificate(previous=first)


# ----------------------------------------------------------------------------------------- policy
def test_policy_limits():
    """``max_eps``/``max_delta`` FAIL a claim above them and PASS one within them."""
    cert = fx.certificate()
    assert fx.failed(verify(cert, max_eps=0.5)) == ["policy"]
    assert "claimed eps 1.0 > policy max_eps 0.5" in verify(cert, max_eps=0.5)["policy"].detail
    assert fx.failed(verify(cert, max_delta=1e-6)) == ["policy"]
    assert verify(cert, max_eps=1.0, max_delta=1e-5)["policy"].status is Status.PASS


# --------------------------------------------------------------------------------- atomic writing
def test_write_refuses_invalid_certificate_and_leaves_nothing(tmp_path):
    """A certificate with a stale digest or a schema violation is never written, not even partly."""
    cert = fx.certificate()
    cert["execution"]["device"] = "tpu"
    with pytest.raises(CertificateFormatError, match="content_digest"):
        write_certificate(cert, tmp_path / "c.json")
    bad = fx.reseal(fx.certificate())
    bad["mechanism"]["T"] = -1
    with pytest.raises(CertificateFormatError, match="schema"):
        write_certificate(fx.reseal(bad), tmp_path / "c.json")
    assert os.listdir(tmp_path) == []


def test_write_replaces_atomically(tmp_path):
    """Writing over an existing certificate replaces it whole and leaves no temporary file."""
    path = tmp_path / "c.json"
    write_certificate(fx.certificate(), path)
    second = fx.certificate(fx.fixed_schedule("model_clipping"))
    write_certificate(second, path)
    assert load_certificate(path) == second
    assert os.listdir(tmp_path) == ["c.json"]
