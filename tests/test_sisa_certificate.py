"""SISA deletions end in a certificate the ordinary verifier checks: exact route, receipts, ledger."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import certificates_fixtures as fx
import numpy as np
import pytest
import torch
from torch import nn

import certun
from certun.backends.sisa import Sisa, SisaConfig
from certun.certificates import RunRecord, issue, model_digest, verify, verify_receipt, write_certificate
from certun.certificates._digest import root_digest
from certun.cli import main
from certun.errors import InvalidParameterError

SALT = bytes(range(32))
EPS, DELTA = 1.0, 1e-6


def _factory() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _trained(shards: int = 3, slices: int = 3) -> tuple[Sisa, list[str]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(150, 6, generator=g)
    y = (x[:, 0] > 0).long()
    ids = [f"user-{i}" for i in range(150)]
    sisa = Sisa(_factory, SisaConfig(shards=shards, slices=slices, batch_size=16), salt=SALT, seed=7)
    sisa.fit(x, y, ids)
    return sisa, ids


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> dict[str, Any]:
    """Two deletion requests of one SISA ensemble, certified as a ledger in a folder."""
    folder = tmp_path_factory.mktemp("sisa-ledger")
    sisa, ids = _trained()
    first_ids = [ids[3]]
    first = sisa.certify(sisa.unlearn(first_ids), first_ids, eps=EPS, delta=DELTA,
                         certificate_path=folder / "000.json")
    second_ids = [ids[40]]
    second_report = sisa.unlearn(second_ids)
    second = sisa.certify(second_report, second_ids, eps=EPS, delta=DELTA, previous=first.certificate)
    model = folder.parent / "sisa-model.pt"
    torch.save(sisa.ensemble.state_dict(), model)
    return {"folder": folder, "first": first, "second": second, "model": model, "forgotten": first_ids[0],
            "second_report": second_report, "sisa": sisa}


def _failed(cert: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    report = verify(cert, **kwargs)
    return {c.name: c.detail for c in report.failures}


def test_a_deletion_certificate_verifies_by_api_and_cli(ledger, capsys) -> None:
    first = ledger["first"]
    cert = first.certificate
    assert verify(cert).ok
    assert first.path == ledger["folder"] / "000.json" and first.path.exists()
    sisa_section = cert["execution"]["sisa"]
    assert sisa_section["shards"] == 3 and len(sisa_section["shard_states"]) == 3
    assert cert["claim"]["variant"] == "retrain" and cert["execution"]["backend"] == "sisa"
    # first request: the pre-deletion ensemble saw the record, so it is committed, not hashed
    assert "commitment" in cert["artifacts"]["model_before"] and first.model_before_opening is not None
    # the second certificate starts from the ensemble the first released: a plain digest
    second = ledger["second"].certificate
    assert second["artifacts"]["model_before"]["root"] == cert["artifacts"]["unlearned_model"]["root"]
    path = ledger["folder"].parent / "second.json"
    write_certificate(second, path)
    assert main(["verify", str(path), "--model", str(ledger["model"])]) == 0
    assert "model" in capsys.readouterr().out


def test_the_released_model_file_must_match(ledger, tmp_path) -> None:
    state = ledger["sisa"].ensemble.state_dict()
    state = {k: v.clone() for k, v in state.items()}
    state["shards.0.0.bias"][0] += 1.0
    model = tmp_path / "tampered.pt"
    torch.save(state, model)
    assert "model" in _failed(ledger["second"].certificate, model=model)


def test_a_receipt_for_a_forgotten_id_verifies(ledger) -> None:
    first, forgotten = ledger["first"], ledger["forgotten"]
    receipt = first.forget_tree.receipt_for(forgotten)
    root = first.certificate["artifacts"]["forget_set"]["merkle_root"]
    assert verify_receipt(receipt, root=root, record_id=forgotten)
    assert not verify_receipt(receipt, root=first.certificate["artifacts"]["retain_set"]["merkle_root"],
                              record_id=forgotten)
    assert not verify_receipt(receipt, root=root, record_id="user-4")


def _states(cert: dict[str, Any]) -> list[dict[str, Any]]:
    return cert["execution"]["sisa"]["shard_states"]


def _untouched(cert: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in _states(cert) if s["status"] == "untouched")


def _retrained(cert: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in _states(cert) if s["status"] == "retrained")


def _noisy_variant(c: dict[str, Any]) -> None:
    c["claim"]["variant"] = c["mechanism"]["variant"] = "gradient_clipping"


def _drop_shard(c: dict[str, Any]) -> None:
    _states(c).pop()


def _repeat_shard(c: dict[str, Any]) -> None:
    _states(c)[-1] = copy.deepcopy(_states(c)[0])


def _untouched_relabelled(c: dict[str, Any]) -> None:
    _untouched(c)["status"] = "retrained"


def _retrained_relabelled(c: dict[str, Any]) -> None:
    state = _retrained(c)
    state.update(status="untouched", restart_stage=None, restarted_from=None)


def _untouched_restart(c: dict[str, Any]) -> None:
    _untouched(c)["restart_stage"] = 0


def _untouched_restarted_from(c: dict[str, Any]) -> None:
    _untouched(c)["restarted_from"] = "sha256:" + "1" * 64


def _stage_out_of_range(c: dict[str, Any]) -> None:
    _retrained(c)["restart_stage"] = c["execution"]["sisa"]["slices"]


def _other_backend(c: dict[str, Any]) -> None:
    c["execution"]["backend"] = "torch"


def _noisy_steps(c: dict[str, Any]) -> None:
    c["execution"]["noisy_steps"] = 1


def _noise_record(c: dict[str, Any]) -> None:
    c["execution"]["noise"] = {"draws": 0, "generator": "x", "key_bits": 256, "key_derivation": "x",
                               "key_origin": "os", "max_abs_z": None, "pairs": 0, "positional": True,
                               "sampler": "x", "tail_mass_per_pair": 0.0, "tail_residual": 0.0}


def _huge_shard_count(c: dict[str, Any]) -> None:
    c["execution"]["sisa"]["shards"] = 2**40  # the old check looped over range(S) and never finished


def _deletion_without_a_retrained_shard(c: dict[str, Any]) -> None:
    for state in _states(c):
        state.update(status="untouched", restart_stage=None, restarted_from=None,
                     retain_root_after=state["retain_root_before"])


def _retrained_without_stage(c: dict[str, Any]) -> None:
    _retrained(c)["restart_stage"] = None


def _restart_checkpoint_mismatch(c: dict[str, Any]) -> None:
    state = _retrained(c)
    state["restarted_from"] = None if state["restart_stage"] else "sha256:" + "1" * 64


@pytest.mark.parametrize(("tamper", "says"), [
    (_huge_shard_count, "states for 1099511627776 shards"),
    (_deletion_without_a_retrained_shard, "no shard is retrained"),
    (_retrained_without_stage, "no restart_stage"),
    (_restart_checkpoint_mismatch, "named exactly when"),
    (_noisy_variant, "not 'retrain'"),
    (_other_backend, "only the 'sisa' backend"),
    (_noisy_steps, "runs no noisy steps"),
    (_noise_record, "execution.noise record"),
    (_drop_shard, "exactly once"),
    (_repeat_shard, "exactly once"),
    (_untouched_relabelled, "did not change"),
    (_retrained_relabelled, "identifiers changed"),
    (_untouched_restart, "both must be null"),
    (_untouched_restarted_from, "both must be null"),
    (_stage_out_of_range, "slices"),
])
def test_each_sisa_rule_fails_a_tampered_certificate(ledger, tamper, says) -> None:
    cert = copy.deepcopy(ledger["first"].certificate)
    tamper(cert)
    failures = _failed(fx.reseal(cert))
    assert "consistency" in failures and says in failures["consistency"], failures


def test_the_schema_closes_the_sisa_section(ledger) -> None:
    for where in ("section", "state"):
        cert = copy.deepcopy(ledger["first"].certificate)
        target = cert["execution"]["sisa"] if where == "section" else _states(cert)[0]
        target["note"] = "x"
        assert "schema" in _failed(fx.reseal(cert))
    cert = copy.deepcopy(ledger["first"].certificate)
    cert["execution"]["sisa"]["assignment"] = "plain-modulo"
    assert "schema" in _failed(fx.reseal(cert))


def _ledger_copy(ledger, tmp_path: Path) -> Path:
    folder = tmp_path / "ledger"
    shutil.copytree(ledger["folder"], folder)
    return folder


def test_a_two_request_ledger_verifies_with_chain(ledger, tmp_path, capsys) -> None:
    folder = _ledger_copy(ledger, tmp_path)
    second = ledger["second"].certificate
    report = verify(second, chain_dir=folder)
    assert report.ok and not report.failures
    path = tmp_path / "second.json"
    write_certificate(second, path)
    assert main(["verify", str(path), "--chain", str(folder), "--model", str(ledger["model"])]) == 0
    capsys.readouterr()


def test_a_ledger_whose_second_certificate_changed_an_untouched_shard_fails(ledger, tmp_path) -> None:
    folder = _ledger_copy(ledger, tmp_path)
    cert = copy.deepcopy(ledger["second"].certificate)
    shard = _untouched(cert)["shard"]
    tensors = cert["artifacts"]["unlearned_model"]["tensors"]
    name = next(n for n in sorted(tensors) if n.startswith(f"shards.{shard}."))
    tensors[name] = "sha256:" + "ab" * 32
    root = root_digest(tensors)
    cert["artifacts"]["unlearned_model"]["root"] = root
    cert["subject"][0]["digest"]["sha256"] = root.removeprefix("sha256:")
    forged = fx.reseal(cert)
    assert not _failed(forged)  # alone, the forged certificate is consistent
    failures = _failed(forged, chain_dir=folder)
    assert "chain" in failures and f"untouched shard {shard} changed" in failures["chain"]


def test_issue_refuses_a_sisa_record_on_a_noisy_variant(ledger) -> None:
    schedule = certun.plan(EPS, DELTA, 1.0, 1.0, 0.1, variant="gradient_clipping")
    after = model_digest({"w": torch.zeros(2)})
    record = RunRecord(backend="sisa", clipping="per_sample", unlearned_parameters=("w",), d=2,
                       noisy_steps=schedule.T, model_after=after,
                       sisa=copy.deepcopy(ledger["first"].certificate["execution"]["sisa"]))
    with pytest.raises(InvalidParameterError, match=r"execution\.sisa records an exact SISA deletion"):
        issue(schedule, record)


def test_certify_refuses_wrong_forget_ids_and_stale_reports() -> None:
    sisa, ids = _trained(shards=2, slices=2)
    report = sisa.unlearn([ids[0]])
    with pytest.raises(InvalidParameterError, match="forget_ids"):
        sisa.certify(report, [ids[1]], eps=EPS, delta=DELTA)
    with pytest.raises(InvalidParameterError, match="forget_ids"):
        sisa.certify(report, [ids[0], ids[0]], eps=EPS, delta=DELTA)
    later = sisa.unlearn([ids[5]])
    with pytest.raises(InvalidParameterError, match="latest unlearn"):
        sisa.certify(report, [ids[0]], eps=EPS, delta=DELTA)
    assert verify(sisa.certify(later, [ids[5]], eps=EPS, delta=DELTA).certificate).ok


def test_a_failed_certify_writes_nothing(tmp_path) -> None:
    sisa, ids = _trained(shards=2, slices=2)
    report = sisa.unlearn([ids[0]])
    target = tmp_path / "cert.json"
    with pytest.raises(InvalidParameterError):
        sisa.certify(report, [ids[0]], eps=float("nan"), delta=DELTA, certificate_path=target)
    assert list(tmp_path.iterdir()) == []


def test_the_checkpoint_restarted_from_is_only_committed_to():
    """A checkpoint was trained on records a later request may delete: the certificate holds a salted
    commitment to it (the opening stays with the owner), never its plain digest."""
    from certun.backends.sisa import assign
    from certun.certificates._commitment import open_model_commitment

    sisa, ids = _trained()
    _, slices = assign(ids, shards=3, slices=3, salt=SALT)
    forget = [ids[int(np.flatnonzero(slices > 0)[0])]]
    report = sisa.unlearn(forget)
    result = sisa.certify(report, forget, eps=1.0, delta=1e-5)
    states = result.certificate["execution"]["sisa"]["shard_states"]
    restarted = {st["shard"]: st["restarted_from"] for st in states if st["restarted_from"] is not None}
    assert restarted
    for s, commitment in restarted.items():
        plain = report.restarted_from[s]
        assert commitment != plain
        opening = result.checkpoint_openings[s]
        assert opening["root"] == plain
        assert open_model_commitment({"scheme": opening["scheme"], "commitment": commitment}, opening)
    text = str(result.certificate)
    assert not any(root in text for root in report.restarted_from.values() if root)
