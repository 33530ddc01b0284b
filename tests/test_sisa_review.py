"""Adversarial review of SISA reload: attacks that must be refused (each one succeeded once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sisa_reload_worker as w
import torch

from certun.backends.sisa import Sisa, SisaCheckpointError
from certun.errors import InvalidParameterError

F1, F2, F3 = w.forget_sets()


def _trained(folder: Path | None, forget: list[str] | None = None) -> Sisa:
    sisa = Sisa(w.factory, w.CONFIG, salt=w.SALT, seed=w.SEED, checkpoint_dir=folder)
    sisa.fit(*w.data())
    if forget:
        sisa.unlearn(forget)
    return sisa


def _load(folder: Path, forgotten: list[str]) -> Sisa:
    return Sisa.load(folder, w.factory, w.CONFIG, *w.without(forgotten), salt=w.SALT, seed=w.SEED)


def _dies_on_second_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies after one shard of a deletion is retrained, before the next one starts."""
    real = Sisa._train_from
    calls = {"n": 0}

    def train_from(self: Sisa, shard: int, stage: int, model: torch.nn.Module) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, shard, stage, model)

    monkeypatch.setattr(Sisa, "_train_from", train_from)


# ------------------------------------------------------------------------------- interrupted deletions
def test_a_deletion_killed_between_two_shards_leaves_a_folder_that_does_not_reload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """F2 touches shards 1 and 2: dying after shard 1 must not leave shard 2's old checkpoints (which saw
    F2's record) listed in a manifest that already records the data without F2."""
    folder = tmp_path / "ckpt"
    sisa = _trained(folder, F1)
    _dies_on_second_shard(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        sisa.unlearn(F2)
    monkeypatch.undo()
    for forgotten in (F1, F1 + F2):
        with pytest.raises(SisaCheckpointError, match="interrupted"):
            _load(folder, forgotten)


@pytest.mark.parametrize("on_disk", [True, False])
def test_an_ensemble_whose_deletion_failed_midway_serves_and_certifies_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, on_disk: bool) -> None:
    """After a failed deletion, shard 2 still holds F2's record: a later deletion (F3 is in shard 0 only)
    or a certificate would claim an exact ensemble that still depends on it."""
    sisa = _trained(tmp_path / "ckpt" if on_disk else None)
    first = sisa.unlearn(F1)
    _dies_on_second_shard(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        sisa.unlearn(F2)
    monkeypatch.undo()
    with pytest.raises(InvalidParameterError, match="interrupted"):
        sisa.unlearn(F3)
    with pytest.raises(InvalidParameterError, match="interrupted"):
        sisa.certify(first, F1, eps=w.EPS, delta=w.DELTA)
    sisa.fit(*w.without(F1 + F2))  # retraining from scratch is the way out
    report = sisa.unlearn(F3)
    assert sisa.certify(report, F3, eps=w.EPS, delta=w.DELTA).certificate
