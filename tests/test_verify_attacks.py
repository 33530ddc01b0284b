"""Attacks on verification: each test is a way a reviewer talked ``verify`` / ``receipt verify`` /
the chain check into passing (or crashing), and must now FAIL (or be refused) with a one-line reason."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import certificates_fixtures as fx
import numpy as np
import pytest

from certun.certificates import (
    Status,
    merkle_tree,
    model_digest,
    public_key_multibase,
    verify,
    write_certificate,
)
from certun.cli import main

DATA = Path(__file__).parent / "data"
PINNED = public_key_multibase(fx.TEST_KEY)
ATTACKER = public_key_multibase(fx.OTHER_KEY)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _model_file(tmp_path: Path, **extra: np.ndarray) -> Path:
    path = tmp_path / "model.npz"
    np.savez(path, **fx.params(), **fx.frozen(), **extra)
    return path


# ------------------------------------------------------------------------------ 1. pinned keys
@pytest.mark.parametrize("spelling", [PINNED, f"did:key:{PINNED}"])
def test_a_key_that_parses_is_never_read_as_a_file(tmp_path, monkeypatch, capsys, spelling):
    """A file named like the published key, holding the attacker's key, must not replace the key."""
    forged = fx.certificate(signed=False)
    from certun.certificates._signing import sign_document
    forged = sign_document(forged, fx.OTHER_KEY, created=fx.CREATED)
    monkeypatch.chdir(tmp_path)
    write_certificate(forged, tmp_path / "cert.json")
    (tmp_path / spelling).write_text(ATTACKER)
    report = verify(tmp_path / "cert.json", trusted_keys=[spelling])
    assert fx.failed(report) == ["signature"]
    code, out, _ = _run(capsys, "verify", "cert.json", "--trusted-key", spelling)
    assert code == 1 and "FAIL  signature" in out


def test_trusted_key_file_is_explicit_and_the_matching_key_is_named(tmp_path, capsys):
    """Keys from files come only through ``--trusted-key-file``; the PASS line names the pinned key."""
    key_file = tmp_path / "issuer.key"
    key_file.write_text(PINNED + "\n")
    cert = tmp_path / "cert.json"
    write_certificate(fx.certificate(signed=True), cert)
    code, out, _ = _run(capsys, "verify", str(cert), "--trusted-key-file", str(key_file))
    assert code == 0, out
    line = next(x for x in out.splitlines() if " signature " in x)
    assert line.startswith("PASS") and PINNED in line
    report = verify(cert, trusted_keys=[str(key_file)])  # a path given as a key is not a key
    assert fx.failed(report) == ["signature"]


def test_require_signature_without_pinning(capsys, tmp_path):
    """``require_signature`` FAILs an unsigned certificate without needing a pinned key."""
    cert = fx.certificate()
    assert verify(cert).ok
    assert fx.failed(verify(cert, require_signature=True)) == ["signature"]
    path = tmp_path / "c.json"
    write_certificate(cert, path)
    code, _, _ = _run(capsys, "verify", str(path), "--require-signature")
    assert code == 1


# -------------------------------------------------------------------------- 2./3. the model check
def test_a_certificate_without_model_digest_fails_when_a_model_is_given(tmp_path):
    """``unlearned_model: null`` and an empty subject must not switch the model check off."""
    cert = fx.certificate()
    cert["artifacts"]["unlearned_model"] = None
    cert["subject"] = []
    report = verify(fx.reseal(cert), model=_model_file(tmp_path))
    assert "model" in fx.failed(report)


def test_issue_refuses_a_certificate_without_the_unlearned_model_digest():
    """``issue()`` does not write an unlearning certificate that names no released model."""
    from certun.errors import InvalidParameterError
    with pytest.raises(InvalidParameterError, match="model_after"):
        fx.certificate(model_after=None)


@pytest.mark.parametrize("extra", [{"fc3.weight": np.ones((2, 2), np.float32)},
                                   {"bn.running_mean": np.zeros(4, np.float32)}])
def test_tensors_the_certificate_does_not_cover_fail(tmp_path, extra):
    """A new layer or a buffer in the model file is uncovered: FAIL unless explicitly allowed."""
    cert = fx.certificate()
    model = _model_file(tmp_path, **extra)
    report = verify(cert, model=model)
    assert fx.failed(report) == ["model"] and next(iter(extra)) in report["model"].detail
    allowed = verify(cert, model=model, allow_uncovered=True)
    assert allowed.ok and allowed["model"].status is Status.WARN


def test_public_tensors_are_recorded_and_checked(tmp_path):
    """Buffers declared public are covered by their recorded digests, and a changed one FAILs."""
    from certun.certificates import tensor_digest
    stats = np.linspace(0, 1, 4).astype(np.float32)
    cert = fx.certificate(public_tensors={"bn.running_mean": tensor_digest("bn.running_mean", stats)})
    assert verify(cert, model=_model_file(tmp_path, **{"bn.running_mean": stats})).ok
    report = verify(cert, model=_model_file(tmp_path, **{"bn.running_mean": stats + 1}))
    assert fx.failed(report) == ["model"] and "bn.running_mean" in report["model"].detail


# ------------------------------------------------------------------------- 4. receipt verify
def _receipt(tmp_path: Path, record_id: int = 42) -> Path:
    import json
    tree = merkle_tree(fx.FORGET_IDS, salt_key=fx.MERKLE_SALT_KEY)
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(tree.receipt_for(record_id).to_dict()))
    return path


def test_receipt_verify_checks_the_certificate_first(tmp_path, capsys):
    """A replaced forget root without re-sealing, and the known-bad golden certificate, both fail."""
    receipt = _receipt(tmp_path)
    cert = fx.certificate()
    good = tmp_path / "good.json"
    write_certificate(cert, good)
    assert _run(capsys, "receipt", "verify", str(receipt), str(good))[0] == 0
    edited = copy.deepcopy(cert)
    edited["artifacts"]["forget_set"]["merkle_root"] = merkle_tree([42], salt_key=fx.MERKLE_SALT_KEY).root
    bad = tmp_path / "edited.json"
    import json
    bad.write_text(json.dumps(edited))
    code, out, _err = _run(capsys, "receipt", "verify", str(receipt), str(bad))
    assert code == 1 and "in the certified" not in out
    code, out, _ = _run(capsys, "receipt", "verify", str(receipt), str(DATA / "official_code_noise.bad.cert.json"))
    assert code == 1 and "recompute" in out


def test_receipt_verify_checks_tree_size_and_pinned_keys(tmp_path, capsys):
    """The receipt's tree size must be the recorded set size; ``--trusted-key`` applies too."""
    receipt = _receipt(tmp_path)
    cert = fx.certificate(signed=True)
    cert["artifacts"]["forget_set"]["size"] = 3
    path = tmp_path / "c.json"
    write_certificate(fx.reseal(cert), path)
    code, out, _ = _run(capsys, "receipt", "verify", str(receipt), str(path))
    assert code == 1 and "size" in out
    good = tmp_path / "g.json"
    write_certificate(fx.certificate(signed=True), good)
    assert _run(capsys, "receipt", "verify", str(receipt), str(good), "--trusted-key", PINNED)[0] == 0
    assert _run(capsys, "receipt", "verify", str(receipt), str(good), "--trusted-key", ATTACKER)[0] == 1


# ------------------------------------------------------------------------------- 5. the chain
def _ledger(tmp_path: Path, n: int = 3, **kw) -> list[dict]:
    certs = [fx.certificate(signed=True)]
    for i in range(1, n):
        certs.append(fx.certificate(signed=True, previous=certs[-1], model_seed=i,
                                    model_before=model_digest(fx.params(i - 1))))
    for i, c in enumerate(certs):
        write_certificate(c, tmp_path / f"{i:02d}.json")
    return certs


def test_a_truncated_ledger_fails(tmp_path):
    """A predecessor with ``previous: null`` but sequence > 0 is not the start of the ledger."""
    certs = _ledger(tmp_path)
    (tmp_path / "00.json").unlink()
    truncated = copy.deepcopy(certs[1])
    truncated["chain"]["previous"] = None
    truncated = fx.reseal(truncated)
    (tmp_path / "01.json").unlink()
    import json
    (tmp_path / "01.json").write_text(json.dumps(truncated))
    last = copy.deepcopy(certs[2])
    last["chain"]["previous"] = truncated["content_digest"]
    report = verify(fx.reseal(last), chain_dir=tmp_path)
    assert "chain" in fx.failed(report)


def test_every_predecessor_is_checked(tmp_path):
    """A predecessor that is internally inconsistent, or signed by another key when keys are pinned, FAILs."""
    certs = _ledger(tmp_path, 2)
    assert verify(certs[1], chain_dir=tmp_path, trusted_keys=[PINNED]).ok
    first = copy.deepcopy(certs[0])
    first["execution"]["noisy_steps"] = 7
    first = fx.reseal(first)
    import json
    (tmp_path / "00.json").write_text(json.dumps(first))
    second = copy.deepcopy(certs[1])
    second["chain"]["previous"] = first["content_digest"]
    report = verify(fx.reseal(second), chain_dir=tmp_path)
    assert "chain" in fx.failed(report) and "noisy_steps" in report["chain"].detail
    # a predecessor signed by a key that is not pinned
    from certun.certificates._signing import sign_document
    other = sign_document(certs[0], fx.OTHER_KEY, created=fx.CREATED)
    (tmp_path / "00.json").write_text(json.dumps(other))
    report = verify(certs[1], chain_dir=tmp_path, trusted_keys=[PINNED])
    assert "chain" in fx.failed(report)


def test_a_fork_is_reported(tmp_path):
    """Two certificates with the same predecessor are two histories of one ledger."""
    certs = _ledger(tmp_path, 2)
    twin = fx.certificate(signed=True, previous=certs[0], model_seed=5, model_before=model_digest(fx.params(0)))
    write_certificate(twin, tmp_path / "twin.json")
    report = verify(certs[1], chain_dir=tmp_path)
    assert "chain" in fx.failed(report) and "fork" in report["chain"].detail


# ---------------------------------------------------------------- 8. nothing escapes verify()
def test_lone_surrogates_are_refused():
    """A lone UTF-16 surrogate in a tensor name is not strict JSON (it cannot be encoded as UTF-8)."""
    text = fx.certificate_bytes().replace(b'"fc1.bias"', b'"fc1.\\ud800bias"')
    report = verify(text)
    assert fx.failed(report) == ["strict_parse"] and "surrogate" in report["strict_parse"].detail


def test_receipt_with_a_lone_surrogate_is_a_usage_error(tmp_path, capsys):
    """A receipt whose record_id holds a lone surrogate: exit 2, one line, no traceback."""
    receipt = tmp_path / "r.json"
    receipt.write_text(_receipt(tmp_path).read_text().replace('"record_id": 42', '"record_id": "\\udc00"'))
    good = tmp_path / "g.json"
    write_certificate(fx.certificate(), good)
    code, _, err = _run(capsys, "receipt", "verify", str(receipt), str(good))
    assert code == 2 and "surrogate" in err and "Traceback" not in err


def test_a_check_that_raises_becomes_its_fail(monkeypatch):
    """Any exception inside a check is that check's FAIL, never an exception out of ``verify``."""
    import importlib
    v = importlib.import_module("certun.certificates._verify")

    def boom(ctx):
        raise KeyError("surprise")
    monkeypatch.setattr(v, "_CHECKS", tuple((n, r, boom if n == "consistency" else f) for n, r, f in v._CHECKS))
    report = v.verify(fx.certificate())
    assert report["consistency"].status is Status.FAIL and "surprise" in report["consistency"].detail


@pytest.mark.parametrize("content", [b"hello\n", b"PK\x03\x04garbage", b""])
@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_a_model_file_that_is_not_a_model_fails_in_one_line(tmp_path, capsys, content, suffix):
    """``echo hello > m.pt``: the model check FAILs with one line, the CLI exits 1, no traceback."""
    model = tmp_path / f"m{suffix}"
    model.write_bytes(content)
    report = verify(fx.certificate(), model=model)
    assert fx.failed(report) == ["model"] and "\n" not in report["model"].detail
    cert = tmp_path / "c.json"
    write_certificate(fx.certificate(), cert)
    code, out, err = _run(capsys, "verify", str(cert), "--model", str(model))
    assert code == 1 and "Traceback" not in out + err


def test_a_stray_file_in_the_chain_folder_is_harmless(tmp_path):
    """Unreadable files in a ``--chain`` folder are noted, never raised."""
    certs = _ledger(tmp_path, 2)
    (tmp_path / "notes.json").write_text("[1, 2")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "list.json").write_text('{"format": "certun.certificate", "format_version": 1}')
    report = verify(certs[1], chain_dir=tmp_path)
    assert report.ok, str(report)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_the_chain_folder_does_not_hang(tmp_path):
    """A FIFO named ``*.json`` is skipped (only regular files are opened)."""
    certs = _ledger(tmp_path, 2)
    os.mkfifo(tmp_path / "pipe.json")
    report = verify(certs[1], chain_dir=tmp_path)
    assert report.ok, str(report)


def test_cli_never_shows_a_traceback(tmp_path, capsys, monkeypatch):
    """An unexpected exception in a subcommand is one line on stderr and exit 2."""
    import certun.cli.verify as cli

    def boom(*a, **k):
        raise RuntimeError("unexpected")
    monkeypatch.setattr(cli, "verify", boom)
    cert = tmp_path / "c.json"
    write_certificate(fx.certificate(), cert)
    code, _out, err = _run(capsys, "verify", str(cert))
    assert code == 2 and "unexpected" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ 8. model files that are not models
def _torch_cases():
    torch = pytest.importorskip("torch")
    cases = {"complex": torch.ones(2, dtype=torch.complex64), "sparse": torch.eye(3).to_sparse()}
    if hasattr(torch, "float8_e4m3fn"):
        cases["float8"] = torch.ones(2).to(torch.float8_e4m3fn)
    cases["quantised"] = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    return cases


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["complex", "sparse", "float8", "quantised"])
def test_unsupported_tensors_in_a_pt_file_fail_in_one_line(tmp_path, capsys, kind):
    """float8, complex, sparse and quantised tensors: a FAIL with a one-line reason, never a traceback."""
    torch = pytest.importorskip("torch")
    cases = _torch_cases()
    if kind not in cases:
        pytest.skip(f"this torch has no {kind} tensors")
    state = {k: torch.from_numpy(v) for k, v in {**fx.params(), **fx.frozen()}.items()}
    state["fc1.bias"] = cases[kind]
    path = tmp_path / "m.pt"
    torch.save(state, path)
    report = verify(fx.certificate(), model=path)
    assert fx.failed(report) == ["model"] and "\n" not in report["model"].detail
    assert "fc1.bias" in report["model"].detail
    mapping = verify(fx.certificate(), model=state)
    assert fx.failed(mapping) == ["model"]


def test_a_whole_pickled_module_says_expected_a_state_dict(tmp_path):
    """``torch.save(model)`` instead of ``torch.save(model.state_dict())``: one line, the remedy."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "m.pt"
    torch.save(torch.nn.Linear(3, 4), path)
    report = verify(fx.certificate(), model=path)
    assert fx.failed(report) == ["model"] and "state_dict" in report["model"].detail
    assert "\n" not in report["model"].detail


def test_a_non_numeric_frozen_parameter_fails():
    """A frozen parameter that is not a tensor (a string, an object array) FAILs, never raises."""
    tensors = {**fx.params(), **fx.frozen()}
    for value in ("not a tensor", np.array(["a", "b"]), np.array([object()], dtype=object)):
        report = verify(fx.certificate(), model={**tensors, "emb.weight": value})
        assert fx.failed(report) == ["model"], report["model"].detail


def test_safetensors_files_are_read(tmp_path):
    """A ``.safetensors`` model file verifies like ``.npz`` (read with numpy, no extra package)."""
    import json
    import struct
    tensors = {**fx.params(), **fx.frozen()}
    header, blobs, offset = {}, [], 0
    for name, value in tensors.items():
        raw = np.ascontiguousarray(value).astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    assert verify(fx.certificate(), model=path).ok
    path.write_bytes(struct.pack("<Q", 10**9) + text)
    assert fx.failed(verify(fx.certificate(), model=path)) == ["model"]


# ------------------------------------------------------------------------------- 9. cost attacks
def test_a_huge_T_is_refused_before_any_work():
    """A 3.5 kB certificate with T = 10**7 and a constant schedule must not run 10**7 accountant steps."""
    from certun.certificates._verify import MAX_VERIFY_T
    cert = fx.certificate()
    T = 10**7
    assert T > MAX_VERIFY_T
    cert["mechanism"]["T"] = cert["execution"]["noisy_steps"] = T
    m = cert["mechanism"]
    for scalar, plural in (("sigma", "sigmas"), ("gamma", "gammas")):
        if m[plural] is not None:
            m[scalar], m[plural] = m[plural][0], None
    report = verify(fx.reseal(cert))
    assert "recompute" in fx.failed(report) and str(MAX_VERIFY_T) in report["recompute"].detail


def test_a_huge_proof_value_is_refused_by_length():
    """A 100 kB proofValue is not decoded (base58 is quadratic): the signature check refuses its length."""
    cert = fx.certificate(signed=True)
    cert["proof"]["proofValue"] = "z" + "2" * 100_000
    from certun.certificates._signing import verify_document
    check = verify_document(cert)
    assert not check.valid and "characters" in check.detail


def test_the_signature_check_runs_only_after_the_schema():
    """A certificate that fails the schema never reaches the (costlier) signature check."""
    cert = fx.certificate(signed=True)
    cert["claim"]["eps"] = "1"
    report = verify(fx.reseal(cert, keep_proof=True))
    assert report["schema"].status is Status.FAIL and report["signature"].status is Status.SKIP


def test_a_certificate_over_the_size_limit_is_not_read(tmp_path):
    """Files above the size limit are refused before reading; so are FIFOs given as the certificate."""
    from certun.certificates._parse import MAX_CERTIFICATE_BYTES
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_CERTIFICATE_BYTES + 1))
    report = verify(big)
    assert fx.failed(report) == ["strict_parse"] and "bytes" in report["strict_parse"].detail


# --------------------------------------------------------------------------------- 10. smaller holes
@pytest.mark.parametrize("where", ["tensors", "frozen", "homoglyph", "value"])
def test_raw_seeds_are_found_everywhere(where):
    """Seeds nested in name maps, homoglyph keys (Cyrillic e) and seed-like values are all found."""
    cert = fx.certificate()
    if where == "tensors":
        cert["execution"]["extra"]["tensors"] = {"seed": 1234}
    elif where == "frozen":
        cert["execution"]["finetune"]["frozen_parameters"] = {"rng_state": [1, 2]}
    elif where == "homoglyph":
        cert["execution"]["extra"]["s\u0435ed"] = 1234
    else:
        cert["execution"]["extra"]["note"] = "seed=1234"
    report = verify(fx.reseal(cert))
    assert "no_raw_seed" in fx.failed(report)


@pytest.mark.parametrize(("path", "value"), [
    (("content_digest",), None),
    (("issued_at",), "2025-02-30T00:00:00Z"),
    (("issued_at",), "2025-01-01T25:00:00Z"),
    (("issued_at",), "2025-01-01T00:00:00Z\n"),
    (("chain", "previous"), "sha256:" + "0" * 64 + "\n"),
])
def test_schema_refuses_trailing_newlines_and_impossible_dates(path, value):
    """``$`` in a pattern accepted a trailing newline; 30 February and hour 25 were valid dates."""
    cert = fx.certificate()
    if path == ("content_digest",):
        cert = fx.reseal(cert)
        cert["content_digest"] += "\n"
    else:
        target = cert
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        cert = fx.reseal(cert)
    report = verify(cert)
    assert "schema" in fx.failed(report)


def test_an_underflowing_number_is_refused():
    """``1e-400`` silently became 0; a claim written that way is ambiguous and refused."""
    text = fx.certificate_bytes().replace(b'"delta": 1e-05', b'"delta": 1e-400', 1)
    assert b"1e-400" in text
    report = verify(text)
    assert fx.failed(report) == ["strict_parse"] and "underflows" in report["strict_parse"].detail


def test_certificate_strings_are_printed_escaped(tmp_path, capsys):
    """Terminal escapes in a tensor name reach the screen escaped, never raw."""
    cert = fx.certificate()
    cert["execution"]["backend"] = "numpy\x1b[2J\x1b[32mALL GOOD"
    path = tmp_path / "c.json"
    import json
    path.write_text(json.dumps(fx.reseal(cert)))
    tensors = {**fx.params(), **fx.frozen(), "evil\x1b[2J": np.zeros(1, np.float32)}
    model = tmp_path / "m.npz"
    np.savez(model, **tensors)
    code, out, err = _run(capsys, "verify", str(path), "--model", str(model))
    assert "\x1b" not in out + err and "\\x1b" in out
    code, out, err = _run(capsys, "inspect", str(path))
    assert code == 0 and "\x1b" not in out + err


def test_a_noisy_run_relabelled_retrain_fails():
    """A gradient-clipping run relabelled ``retrain`` with claim (0, 0) is inconsistent with its record."""
    cert = fx.certificate()
    for section in ("claim", "mechanism"):
        cert[section]["variant"] = "retrain"
        cert[section]["eps"] = cert[section]["delta"] = 0.0
    m = cert["mechanism"]
    m["T"] = 0
    m.update(achieved_eps=0.0, achieved_delta=0.0, achieved_log_delta=None, eps_renyi=None, alpha=None)
    m.update(sigma=None, sigmas=None, gamma=None, gammas=None, C1=None)
    cert["accounting"].update(eps=0.0, delta=0.0, log_delta=None, eps_renyi=None, alpha=None)
    cert["execution"]["noisy_steps"] = 0  # but clipping per_sample and the conversion still tell
    report = verify(fx.reseal(cert))
    assert "consistency" in fx.failed(report)
    assert "retrain" in report["consistency"].detail


def test_issue_refuses_an_exact_claim_with_a_noisy_record():
    """``issue()`` refuses a retrain schedule whose run record clipped gradients."""
    import certun
    from certun.errors import InvalidParameterError
    retrain = certun.Schedule(variant="retrain", T=0, target=certun.Guarantee(0.0, 0.0),
                              achieved=certun.Guarantee(0.0, 0.0))
    with pytest.raises(InvalidParameterError, match="retrain"):
        fx.certificate(retrain, clipping="per_sample")


def test_strict_turns_warnings_into_failures(tmp_path, capsys):
    """``--strict``: a WARN (here: a valid but unpinned signature) is a FAIL."""
    cert = fx.certificate(signed=True)
    assert verify(cert).ok
    report = verify(cert, strict=True)
    assert fx.failed(report) == ["signature"]
    path = tmp_path / "c.json"
    write_certificate(cert, path)
    assert _run(capsys, "verify", str(path), "--strict")[0] == 1


def test_a_certificate_without_forget_set_warns():
    """No forget set: nothing shows what was forgotten; WARN, and FAIL under strict."""
    cert = fx.certificate(forget_root=None, forget_count=None)
    report = verify(cert)
    assert report.ok and report["consistency"].status is Status.WARN
    assert "forget set" in report["consistency"].detail
    assert not verify(cert, strict=True).ok


# ------------------------------------------------------------------------- arguments of verify()
@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"max_eps": "1"}, "max_eps"), ({"max_eps": -1}, "max_eps"), ({"max_delta": 2.0}, "max_delta"),
    ({"max_eps": float("nan")}, "max_eps"), ({"trusted_keys": PINNED}, "trusted_keys"),
    ({"chain_dir": 3}, "chain_dir"), ({"model": 3}, "model"),
])
def test_verify_validates_its_arguments(kwargs, needle):
    """Bad arguments are a typed error naming the argument, like the CLI's usage errors."""
    from certun.errors import InvalidParameterError
    with pytest.raises(InvalidParameterError, match=needle):
        verify(fx.certificate(), **kwargs)


def test_verify_given_a_module_hints_at_state_dict():
    """An ``nn.Module`` where a model file or state dict goes: a hint to pass ``state_dict()``."""
    torch = pytest.importorskip("torch")
    from certun.errors import InvalidParameterError
    with pytest.raises(InvalidParameterError, match="state_dict"):
        verify(fx.certificate(), model=torch.nn.Linear(2, 2))
    with pytest.raises(InvalidParameterError, match="cert"):
        verify(None)


def test_receipt_verify_names_the_unreadable_file(tmp_path, capsys):
    """A missing receipt is named as the receipt (not as a certificate), exit 2."""
    good = tmp_path / "g.json"
    write_certificate(fx.certificate(), good)
    code, _, err = _run(capsys, "receipt", "verify", str(tmp_path / "nope.json"), str(good))
    assert code == 2 and "receipt" in err and "certificate" not in err.split(":", 2)[-1]


# ---------------------------------------------------------------------- a fresh adversarial pass
def test_a_centre_equal_to_the_starting_model_fails():
    """A chained request whose centre is its (plain) starting model: the centre depends on D."""
    before = fx.params(0)
    cert = fx.certificate(model_before=model_digest(before), previous=fx.certificate(), model_seed=1)
    for centre in (before, {**fx.params(7), "fc1.bias": before["fc1.bias"]}):  # whole, or one tensor
        forged = copy.deepcopy(cert)
        forged["artifacts"]["center"] = {"algorithm": "certun.tensor-sha256.v1", **model_digest(centre).to_dict()}
        report = verify(fx.reseal(forged))
        assert "consistency" in fx.failed(report) and "centre" in report["consistency"].detail


def test_issue_refuses_a_centre_equal_to_the_starting_model():
    """``issue()`` refuses what ``verify`` would reject."""
    from certun.errors import InvalidParameterError
    before = fx.params(0)
    with pytest.raises(InvalidParameterError, match="centre"):
        fx.certificate(model_before=model_digest(before), center=model_digest(before),
                       previous=fx.certificate(), model_seed=1)


def test_a_chain_folder_over_the_byte_budget_fails(tmp_path, monkeypatch):
    """The chain walk reads a bounded number of bytes in all, not 4096 files of 1 MiB each."""
    import importlib
    chain = importlib.import_module("certun.certificates._chain")
    certs = _ledger(tmp_path, 2)
    monkeypatch.setattr(chain, "MAX_CHAIN_BYTES", 1000)
    report = verify(certs[1], chain_dir=tmp_path)
    assert fx.failed(report) == ["chain"] and "bytes" in report["chain"].detail


def test_every_subcommand_documents_its_exit_codes():
    """``--help`` of every subcommand states the exit codes."""
    from certun.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        assert "exit codes" in (p.epilog or ""), name


# ------------------------------------------------------------------------ 7. receipts leak rank
def test_leaf_index_does_not_reveal_rank():
    """Leaves are ordered by salted leaf hash: a receipt's leaf index is not the identifier's rank."""
    ids = list(range(10, 74))  # two digits: the encoded order is the numeric order
    tree = merkle_tree(ids, salt_key=fx.MERKLE_SALT_KEY)
    indices = [tree.receipt_for(i).leaf_index for i in ids]
    assert sorted(indices) == list(range(64)) and indices != list(range(64))
    assert merkle_tree(reversed(ids), salt_key=fx.MERKLE_SALT_KEY).root == tree.root  # still a set function
    from certun.certificates import verify_receipt
    assert all(verify_receipt(tree.receipt_for(i), root=tree.root, record_id=i) for i in ids)


def test_v1_trees_stay_buildable_and_verifiable():
    """Identifier-ordered (v1) trees, as in older certificates, are still built on request and verify."""
    from certun.certificates import verify_receipt
    from certun.certificates._merkle import TREE_SCHEME_V1
    tree = merkle_tree(range(8), salt_key=fx.MERKLE_SALT_KEY, scheme=TREE_SCHEME_V1)
    assert [tree.receipt_for(i).leaf_index for i in range(8)] == list(range(8))
    assert verify_receipt(tree.receipt_for(3).to_dict(), root=tree.root, record_id=3)


def test_duplicate_parameter_names_are_found_in_linear_time():
    """200 000 unlearned-parameter names with one duplicate (a 1 MiB certificate) must not take
    quadratic time to report (the previous code counted each name in the whole list: it hangs)."""
    cert = fx.certificate()
    names = [f"p{i}" for i in range(200_000)]
    cert["execution"]["unlearned_parameters"] = [*names, "p7"]
    report = verify(fx.reseal(cert))
    assert "consistency" in fx.failed(report) and "'p7'" in report["consistency"].detail


def test_details_are_bounded():
    """However many names a certificate lists, each report line stays short."""
    cert = fx.certificate()
    cert["execution"]["unlearned_parameters"] = [f"p{i}" for i in range(20_000)]
    report = verify(fx.reseal(cert))
    assert max(len(c.detail) for c in report.checks) < 2100


# ------------------------------------------------------------------------------ exit codes
@pytest.mark.parametrize("command", ["verify", "receipt"])
def test_unreadable_inputs_exit_two(tmp_path, capsys, command):
    """Missing certificate, model, key file or chain folder, and a malformed key: exit 2, one line."""
    good = tmp_path / "g.json"
    write_certificate(fx.certificate(), good)
    receipt = _receipt(tmp_path)
    head = ["verify"] if command == "verify" else ["receipt", "verify", str(receipt)]
    cases = [[str(tmp_path / "missing.json")],
             [str(good), "--trusted-key-file", str(tmp_path / "missing.key")],
             [str(good), "--trusted-key", "not-a-key"],
             [str(good), "--chain", str(tmp_path / "no-such-dir")]]
    if command == "verify":
        cases.append([str(good), "--model", str(tmp_path / "missing.pt")])
    for args in cases:
        code, out, err = _run(capsys, *head, *args)
        assert code == 2, (args, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("key", ["forget_ids", "deleted_indices", "retainIds", "f\u043erget_records"])
def test_record_identifiers_in_free_form_fields_fail(key):
    """A certificate publishes salted roots only: identifiers in ``extra`` would name the forgotten."""
    cert = fx.certificate()
    cert["execution"]["extra"][key] = [3, 17, 42, 99]
    report = verify(fx.reseal(cert))
    assert "consistency" in fx.failed(report) and "identifiers" in report["consistency"].detail
    from certun.errors import InvalidParameterError
    with pytest.raises(InvalidParameterError, match="identifiers"):
        fx.certificate(extra={key: [3, 17]})


def test_require_signature_applies_to_predecessors(tmp_path):
    """With ``require_signature``, an unsigned predecessor in the chain FAILs too."""
    first = fx.certificate()
    write_certificate(first, tmp_path / "00.json")
    second = fx.certificate(signed=True, previous=first, model_seed=1, model_before=model_digest(fx.params(0)))
    assert verify(second, chain_dir=tmp_path).ok
    report = verify(second, chain_dir=tmp_path, require_signature=True)
    assert fx.failed(report) == ["chain"] and "unsigned" in report["chain"].detail


def test_huge_recorded_shapes_fail_cleanly():
    """A shape of 60 000 dims of 2**53 - 1 (a 1 MiB certificate) is a consistency FAIL that names d,
    not a big-integer product that runs for seconds and then breaks the check."""
    cert = fx.certificate()
    cert["execution"]["parameter_shapes"]["fc1.bias"] = [2**53 - 1] * 60_000
    report = verify(fx.reseal(cert))
    assert "consistency" in fx.failed(report)
    assert "could not run" not in report["consistency"].detail and "execution.d" in report["consistency"].detail


def test_a_lone_surrogate_in_a_model_tensor_name_fails_with_a_reason(tmp_path):
    """A ``.pt`` state_dict key with a lone surrogate (pickle can hold one): a named FAIL, no exception."""
    torch = pytest.importorskip("torch")
    state = {k: torch.from_numpy(v) for k, v in {**fx.params(), **fx.frozen()}.items()}
    state["evil\ud800"] = torch.zeros(1)
    path = tmp_path / "m.pt"
    torch.save(state, path)
    report = verify(fx.certificate(), model=path)
    assert fx.failed(report) == ["model"] and "surrogate" in report["model"].detail
