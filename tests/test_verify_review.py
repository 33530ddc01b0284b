"""Attacks from the adversarial review of verification (noise record, chain predecessors, receipt
re-read, d and shapes, chain-folder and .npz cost, ambiguous .npz, seed synonyms, published
identifiers): each worked once and must now FAIL (or be refused) with a one-line reason."""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
import zipfile

import certificates_fixtures as fx
import numpy as np
import pytest

import certun.certificates._chain as chain_module
import certun.cli.verify as ccli
from certun.backends import noise as backend_noise
from certun.certificates import Status, merkle_tree, model_digest, public_key_multibase, verify
from certun.certificates._signing import sign_document
from certun.certificates.noise_check import sampler_pairs
from certun.cli import main

PINNED = public_key_multibase(fx.TEST_KEY)
KEY_HEX = "9f" * 32
IDS = list(fx.FORGET_IDS)


def _check(report, name):
    return next(c for c in report.checks if c.name == name)


def _forge(mutate, cert=None):
    cert = copy.deepcopy(cert or fx.certificate())
    mutate(cert)
    return fx.reseal(cert)


# ------------------------------------------------------------------------- 1. the noise record
def test_the_known_source_table_is_what_the_backends_record():
    """The table the verifier trusts is the shipped source's own description (a drift here would FAIL real runs)."""
    from certun.certificates.noise_check import KNOWN_SOURCES

    described = backend_noise.describe()
    (generator, sampler, kdf), known = next(iter(KNOWN_SOURCES.items()))
    assert (generator, sampler) == (described["generator"], described["sampler"])
    assert kdf.startswith(str(described["key_derivation"]))
    from certun.backends.run_key import KEY_DERIVATION

    assert kdf.endswith(KEY_DERIVATION)  # the derivation the backends write today (v2), not an older one
    for name, value in known.items():
        assert described[name] == value, name


def test_a_weak_generator_and_truncated_sampler_fail_noise():
    def weak(c):
        c["execution"]["noise"].update(
            generator="torch.manual_seed(mt19937)", sampler="torch.randn-float32-box-muller-24bit",
            key_derivation="none", positional=False, max_abs_z=5.0, tail_mass_per_pair=0.0, tail_residual=0.0)
    report = verify(_forge(weak))
    assert _check(report, "noise").status is Status.FAIL and "unknown noise source" in _check(report, "noise").detail
    assert not report.ok


@pytest.mark.parametrize("tail", [0.0, 2.0**-128])
def test_an_understated_tail_mass_fails_noise(tail):
    """The residual is computed from the table's 2**-111, never from the record's own tail mass."""
    def understate(c):
        n = c["execution"]["noise"]
        n.update(tail_mass_per_pair=tail, tail_residual=n["pairs"] * tail)
    report = verify(_forge(understate))
    assert _check(report, "noise").status is Status.FAIL, str(report)
    assert "tail_mass_per_pair" in _check(report, "noise").detail


def test_an_os_key_with_the_integer_seed_commitment_scheme_fails():
    def legacy(c):
        c["randomness"]["seed_commitment"]["scheme"] = "certun.seed-commitment.sha256.v1"
    report = verify(_forge(legacy))
    assert _check(report, "noise").status is Status.FAIL and "key_origin" in _check(report, "noise").detail


def test_a_noisy_run_without_a_key_commitment_fails():
    def drop(c):
        c["randomness"]["seed_commitment"] = None
    report = verify(_forge(drop))
    assert _check(report, "noise").status is Status.FAIL and "seed_commitment" in _check(report, "noise").detail


# -------------------------------------------------------------------- 2. chain predecessors
def _successor(prev):
    return fx.certificate(previous=prev, model_before=model_digest(fx.params()), model_before_commitment=None,
                          signed=True, model_seed=1)


def _ledger(tmp_path, prev):
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / "0.json").write_text(json.dumps(prev))
    return ledger


def _weak_claim(c):
    m = c["mechanism"]
    if m["sigma"] is not None:
        m["sigma"] = m["sigma"] / 100
    else:
        m["sigmas"] = [s / 100 for s in m["sigmas"]]


def _no_noise(c):
    del c["execution"]["noise"]


def _seed_note(c):
    c["execution"]["extra"]["noise_mode"] = "fresh; seed = 12345"


@pytest.mark.parametrize("mutate,failing", [(_weak_claim, "recompute"), (_no_noise, "noise"),
                                            (_seed_note, "no_raw_seed")])
def test_a_predecessor_that_does_not_verify_breaks_the_link(tmp_path, mutate, failing):
    prev = sign_document(_forge(mutate), fx.TEST_KEY, created=fx.CREATED)
    assert failing in fx.failed(verify(prev, trusted_keys=[PINNED]))
    report = verify(_successor(prev), chain_dir=_ledger(tmp_path, prev), trusted_keys=[PINNED])
    chain = _check(report, "chain")
    assert chain.status is Status.FAIL and "does not verify" in chain.detail and failing in chain.detail
    assert not report.ok


def test_strict_applies_to_predecessors(tmp_path):
    """A predecessor whose noise key came from a user seed WARNs; under strict its link FAILs."""
    prev = fx.certificate(noise=fx.noise_record(fx.planned_gc(), 26, key_origin="user_seed"), signed=True)
    cert = _successor(prev)
    ledger = _ledger(tmp_path, prev)
    assert _check(verify(cert, chain_dir=ledger, trusted_keys=[PINNED]), "chain").status is Status.PASS
    strict = verify(cert, chain_dir=ledger, trusted_keys=[PINNED], strict=True)
    assert _check(strict, "chain").status is Status.FAIL and "user seed" in _check(strict, "chain").detail


# --------------------------------------------------------------------- 3. receipt re-read
def test_receipt_is_checked_against_the_bytes_that_were_verified(tmp_path, monkeypatch, capsys):
    good = fx.certificate()
    path = tmp_path / "cert.json"
    path.write_text(json.dumps(good))
    tree = merkle_tree([7, 1000, 1001, 1002], salt_key=b"k" * 32)
    forged = copy.deepcopy(good)
    forged["artifacts"]["forget_set"]["merkle_root"] = tree.root
    forged = fx.reseal(forged)
    receipt = tmp_path / "receipt.json"
    receipt.write_text(json.dumps(tree.receipt_for(7).to_dict()))
    real_verify = ccli.verify

    def verify_then_swap(*args, **kwargs):  # the race, made deterministic: swap right after the read
        report = real_verify(*args, **kwargs)
        path.write_text(json.dumps(forged))
        return report

    monkeypatch.setattr(ccli, "verify", verify_then_swap)
    code = main(["receipt", "verify", str(receipt), str(path), "--id", "7"])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED" in out, out


# ------------------------------------------------------------------------- 4. d and shapes
def _shrink(cert, shapes):
    c = copy.deepcopy(cert)
    ex = c["execution"]
    ex["parameter_shapes"] = shapes
    ex["d"] = 4 if shapes else 1
    n = ex["noise"]
    n["pairs"] = sampler_pairs(ex["d"], n["draws"])
    n["tail_residual"] = n["pairs"] * n["tail_mass_per_pair"]
    return fx.reseal(c)


def _model(tmp_path):
    path = tmp_path / "model.npz"
    np.savez(path, **fx.params(), **fx.frozen())
    return path


def test_a_noisy_certificate_without_parameter_shapes_fails(tmp_path):
    report = verify(_shrink(fx.certificate(), {}), model=_model(tmp_path))
    assert "consistency" in fx.failed(report) and "parameter_shapes is empty" in report["consistency"].detail


def test_shapes_and_d_that_disagree_with_the_model_file_fail(tmp_path):
    report = verify(_shrink(fx.certificate(), {name: [1] for name in fx.params()}), model=_model(tmp_path))
    assert "model" in fx.failed(report) and "parameter_shapes" in report["model"].detail
    assert "consistency" not in fx.failed(report)  # self-consistent: only the model file shows the lie


def test_d_that_disagrees_with_the_model_file_fails(tmp_path):
    cert = fx.certificate()
    c = copy.deepcopy(cert)
    c["execution"]["parameter_shapes"] = {}  # retrain-like record, but keep the noisy claim: consistency FAILs
    c["execution"]["d"] += 2
    report = verify(fx.reseal(c), model=_model(tmp_path))
    assert "model" in fx.failed(report) and "execution.d" in report["model"].detail


# ------------------------------------------------------------------- 5. chain-folder cost
def test_symlinks_are_skipped_and_identical_files_parsed_once(tmp_path, monkeypatch):
    prev = fx.certificate(signed=True)
    ledger = _ledger(tmp_path, prev)
    for i in range(3):
        (ledger / f"copy{i}.json").write_bytes((ledger / "0.json").read_bytes())
    os.symlink(ledger / "0.json", ledger / "link.json")
    parsed = []
    real = chain_module.load_certificate
    monkeypatch.setattr(chain_module, "load_certificate", lambda data: parsed.append(1) or real(data))
    index, notes = chain_module.index_certificates(ledger)
    assert len(parsed) == 1 and len(index) == 1
    assert any("link.json" in n and "symbolic link" in n for n in notes)
    report = verify(_successor(prev), chain_dir=ledger, trusted_keys=[PINNED])
    assert _check(report, "chain").status is Status.PASS, str(report)


# ---------------------------------------------------------------------- 6, 7. .npz files
def _npy(a):
    b = io.BytesIO()
    np.lib.format.write_array(b, a)
    return b.getvalue()


def test_an_npz_that_expands_far_beyond_its_size_is_refused(tmp_path):
    path = tmp_path / "model.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, a in {**fx.params(), **fx.frozen()}.items():
            z.writestr(name + ".npy", _npy(a))
        with z.open("extra.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (8 * 1024 * 1024,)})
            for _ in range(8):
                f.write(bytes(4 * 1024 * 1024))
    report = verify(fx.certificate(), model=path)
    assert "model" in fx.failed(report) and "refusing to inflate" in report["model"].detail


def test_an_npy_header_that_does_not_match_its_member_is_refused(tmp_path):
    path = tmp_path / "model.npz"
    arrays = {**fx.params(), **fx.frozen()}
    with zipfile.ZipFile(path, "w") as z:
        for name, a in arrays.items():
            data = _npy(a)
            z.writestr(name + ".npy", data + (b"\0" * 8 if name == "fc1.bias" else b""))
    report = verify(fx.certificate(), model=path)
    assert "model" in fx.failed(report) and "declares shape" in report["model"].detail


@pytest.mark.parametrize("layout", ["stripped", "duplicate", "not-npy"])
def test_an_npz_with_two_arrays_for_one_tensor_is_refused(tmp_path, layout):
    path = tmp_path / "model.npz"
    arrays = {**fx.params(), **fx.frozen()}
    leaked = np.full_like(arrays["fc1.weight"], 7.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on a duplicate name
        with zipfile.ZipFile(path, "w") as z:
            if layout != "not-npy":
                z.writestr("fc1.weight.npy", _npy(leaked))
            for name, a in arrays.items():
                member = name if (name == "fc1.weight" and layout == "stripped") else name + ".npy"
                z.writestr(member, _npy(a))
            if layout == "not-npy":
                z.writestr("README.txt", b"hello")
    report = verify(fx.certificate(), model=path)
    assert "model" in fx.failed(report), str(report)
    assert {"stripped": "end in .npy", "duplicate": "more than once", "not-npy": "end in .npy"}[layout] \
        in report["model"].detail


# --------------------------------------------------------------- 8. raw-seed synonyms
@pytest.mark.parametrize("extra", [
    {"rng": 1234}, {"rng_key": [0, 1234]}, {"noise_key": KEY_HEX}, {"run_key": KEY_HEX}, {"runKey": 5},
    {"secret": KEY_HEX}, {"entropy": 1234}, {"noise_mode": "rng: 1234"}, {"noise_mode": "noise key = " + KEY_HEX},
    {"noise_mode": KEY_HEX},
])
def test_seed_synonyms_fail_no_raw_seed(extra):
    cert = copy.deepcopy(fx.certificate())
    cert["execution"]["extra"] = extra
    report = verify(fx.reseal(cert))
    assert _check(report, "no_raw_seed").status is Status.FAIL, (extra, str(report))


# ---------------------------------------------------------- 9. published identifiers
@pytest.mark.parametrize("where,value", [
    ("extra", {"forget": IDS}), ("extra", {"forget_set": IDS}), ("extra", {"deleted": IDS}),
    ("extra", {"unlearned_ids": IDS}), ("extra", {"requests": [{"user": i} for i in IDS]}),
    ("extra", {"buffers": "recompute", "recomputed_buffers": IDS}),  # a backend's key, holding identifiers
    ("finetune", {"epochs": 1, "lr": 0.05, "batches": IDS}),
    ("notes", [f"forget_ids={IDS}"]),
])
def test_published_identifiers_fail(where, value):
    cert = copy.deepcopy(fx.certificate())
    if where == "notes":
        cert["mechanism"]["notes"] = value
    else:
        cert["execution"][where] = value
    report = verify(fx.reseal(cert))
    assert "consistency" in fx.failed(report), (where, value, str(report))


def test_extra_is_closed_to_the_keys_the_backends_write():
    cert = copy.deepcopy(fx.certificate())
    cert["execution"]["extra"] = {"comment": "nothing secret"}
    report = verify(fx.reseal(cert))
    assert "consistency" in fx.failed(report) and "never write" in report["consistency"].detail


def test_the_backends_extra_keys_still_verify():
    cert = copy.deepcopy(fx.certificate())
    cert["execution"]["extra"] = {
        "buffers": "recompute", "frozen": "public", "clip_implementation": "functorch", "recomputed_buffers": ["bn"],
        "public_buffers": {}, "attributes": "none", "public_attributes": {}, "noise_mode": "fresh", "loss": "squared"}
    report = verify(fx.reseal(cert))
    assert report.ok, str(report)



def test_the_walk_bounds_the_predecessors_accountant_work(tmp_path, monkeypatch):
    """Every predecessor's guarantee is recomputed, so the noisy steps of the walk are bounded."""
    prev = fx.certificate(signed=True)
    monkeypatch.setattr(chain_module, "MAX_CHAIN_T", prev["mechanism"]["T"] - 1)
    report = verify(_successor(prev), chain_dir=_ledger(tmp_path, prev), trusted_keys=[PINNED])
    assert _check(report, "chain").status is Status.FAIL and "noisy steps" in _check(report, "chain").detail


# ------------------------------------------------------------------------- round 2: who was deleted, in plain fields
@pytest.mark.parametrize("mutate", [
    lambda c: c["execution"].__setitem__("device", "cpu forget_ids=[3, 17, 42]"),
    lambda c: c["execution"].__setitem__("dtype", "float32 #3 #17"),
    lambda c: c["execution"]["versions"].__setitem__("forget_ids", "3,17,42"),
    lambda c: c["accounting"]["versions"].__setitem__("deleted", "alice@example.com"),
], ids=["device", "dtype", "execution-versions", "accounting-versions"])
def test_identifiers_cannot_ride_in_plain_execution_fields(mutate):
    """device, dtype and versions are closed by the schema, so they cannot carry who was deleted."""
    report = verify(_forge(mutate))
    assert _check(report, "schema").status is Status.FAIL and not report.ok


def test_the_mechanism_must_fit_in_delta_minus_the_samplers_share(monkeypatch):
    """The noise check lets the sampler misplace up to TAIL_SLACK·δ; the mechanism is held to the rest, so
    their sum never exceeds the claim. Gradient clipping's ε is computed at that smaller δ."""
    from certun.certificates import _recompute
    from certun.certificates.noise_check import TAIL_SLACK

    seen = []
    real = _recompute.guarantee

    def spy(schedule, *, exact=False):
        seen.append(schedule.target.delta)
        return real(schedule, exact=exact)

    monkeypatch.setattr(_recompute, "guarantee", spy)
    cert = fx.certificate()
    assert verify(cert).ok
    claim = float(cert["claim"]["delta"])
    assert seen and all(d == claim - TAIL_SLACK * claim for d in seen) and seen[0] < claim
