"""Adversarial review of SISA reload: attacks that must be refused (each one succeeded once)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sisa_reload_worker as w
import torch

from certun.backends import _sisa_checkpoints as ckpt
from certun.backends import _sisa_manifest as man
from certun.backends.sisa import Sisa, SisaCheckpointError, assign
from certun.errors import InvalidParameterError

F1, F2, F3 = w.forget_sets()


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
    sisa = w.trained(folder, F1)
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
    sisa = w.trained(tmp_path / "ckpt" if on_disk else None)
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


# ------------------------------------------------------------------------------- what the folder may hold
@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A checkpoint folder after training and the first deletion F1."""
    w.trained(tmp_path / "ckpt", F1)
    return tmp_path / "ckpt"


@pytest.mark.parametrize("name", [ckpt.MANIFEST, ckpt.checkpoint_name(1, 2)])
def test_a_symlink_in_the_folder_is_refused(folder: Path, tmp_path: Path, name: str) -> None:
    """A link to a file elsewhere (even one with the right content) could point at a device or a FIFO."""
    target = tmp_path / "elsewhere"
    (folder / name).rename(target)
    (folder / name).symlink_to(target)
    with pytest.raises(SisaCheckpointError, match="regular file"):
        _load(folder, F1)


_FIFO_LOAD = """
import sys, sisa_reload_worker as w
from certun.backends.sisa import Sisa, SisaCheckpointError, assign
try:
    Sisa.load(sys.argv[1], w.factory, w.CONFIG, *w.without(w.forget_sets()[0]), salt=w.SALT, seed=w.SEED)
except SisaCheckpointError as exc:
    print("refused:", exc)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("name", [ckpt.MANIFEST, ckpt.checkpoint_name(0, 1)])
def test_a_fifo_in_the_folder_is_refused_instead_of_hanging(folder: Path, name: str) -> None:
    (folder / name).unlink()
    os.mkfifo(folder / name)
    env = {**os.environ, "PYTHONPATH": str(Path(w.__file__).parent)}
    try:  # the timeout only stops a hanging reader: it is no speed assertion
        done = subprocess.run([sys.executable, "-c", _FIFO_LOAD, str(folder)], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("Sisa.load hung reading a FIFO")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "regular file" in done.stdout


def test_a_huge_manifest_is_refused_before_it_is_parsed(folder: Path) -> None:
    path = folder / ckpt.MANIFEST
    text = path.read_bytes()
    path.write_bytes(b" " * (man.MAX_MANIFEST_BYTES + 1 - len(text)) + text)  # valid JSON, tag intact
    with pytest.raises(SisaCheckpointError, match="bytes"):
        _load(folder, F1)


# ------------------------------------------------------------------------------- rollback and the ledger
def _same_shards_as_f1() -> list[str]:
    """Another request touching exactly F1's shards at F1's stages: the verifier's untouched-shard check
    cannot tell that the ensemble it starts from is the one before F1 was deleted."""
    _, _, ids = w.data()
    shard, slice_ = assign(ids, shards=w.CONFIG.shards, slices=w.CONFIG.slices, salt=w.SALT)
    at: dict[tuple[int, int], list[str]] = {}
    for i, key in enumerate(zip(shard.tolist(), slice_.tolist(), strict=True)):
        at.setdefault(key, []).append(ids[i])
    return [next(i for i in at[(0, 2)] if i not in F1), next(i for i in at[(1, 1)] if i not in F1)]


def test_a_restored_folder_cannot_extend_the_ledger_past_the_deletion_it_undid(tmp_path: Path) -> None:
    """The folder is restored from a backup taken before F1 and the owner still holds F1's records: the
    reload is consistent, but a certificate chained after F1's would claim F1 stays deleted."""
    folder, backup, ledger = tmp_path / "ckpt", tmp_path / "backup", tmp_path / "ledger"
    ledger.mkdir()
    sisa = w.trained(folder)
    shutil.copytree(folder, backup)
    sisa.certify(sisa.unlearn(F1), F1, eps=w.EPS, delta=w.DELTA, certificate_path=ledger / "000.json")
    shutil.rmtree(folder)
    shutil.copytree(backup, folder)
    restored = Sisa.load(folder, w.factory, w.CONFIG, *w.data(), salt=w.SALT, seed=w.SEED)
    forget = _same_shards_as_f1()
    report = restored.unlearn(forget)
    with pytest.raises(InvalidParameterError, match="previous"):
        restored.certify(report, forget, eps=w.EPS, delta=w.DELTA, previous=ledger / "000.json",
                         certificate_path=ledger / "001.json")
    assert sorted(p.name for p in ledger.iterdir()) == ["000.json"]


# ------------------------------------------------------------------------------- bad input
_BAD = {"x-list": ("x", lambda x, y, ids: (x.tolist(), y, ids)),
        "x-numpy": ("x", lambda x, y, ids: (x.numpy(), y, ids)),
        "x-none": ("x", lambda x, y, ids: (None, y, ids)),
        "x-scalar": ("x", lambda x, y, ids: (torch.tensor(1.0), y, ids)),
        "y-none": ("y", lambda x, y, ids: (x, None, ids)),
        "ids-none": ("ids", lambda x, y, ids: (x, y, None)),
        "ids-generator": ("ids", lambda x, y, ids: (x, y, (i for i in ids))),
        "ids-unhashable": ("ids", lambda x, y, ids: (x, y, [[i] for i in ids]))}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_bad_data_is_a_typed_error_naming_it(folder: Path, case: str) -> None:
    name, spoil = _BAD[case]
    x, y, ids = spoil(*w.without(F1))
    with pytest.raises(InvalidParameterError, match=rf"^{name}="):
        Sisa.load(folder, w.factory, w.CONFIG, x, y, ids, salt=w.SALT, seed=w.SEED)
    with pytest.raises(InvalidParameterError, match=rf"^{name}="):
        Sisa(w.factory, w.CONFIG, salt=w.SALT, seed=w.SEED).fit(x, y, ids)


@pytest.mark.parametrize("device", ["bogus", "cuda:999", 3])
def test_a_bad_or_missing_device_is_a_typed_error(folder: Path, device: object) -> None:
    with pytest.raises(InvalidParameterError, match=r"^device="):
        Sisa.load(folder, w.factory, w.CONFIG, *w.without(F1), salt=w.SALT, seed=w.SEED, device=device)


def test_an_empty_folder_name_is_refused_not_taken_as_the_working_directory() -> None:
    with pytest.raises(InvalidParameterError, match=r"^checkpoint_dir="):
        Sisa(w.factory, w.CONFIG, checkpoint_dir="")


@pytest.mark.parametrize(("shards", "slices"), [(10**9, 1), (1, 10**9), (181, 1)])
def test_more_shard_slices_than_records_is_refused_before_training(shards: int, slices: int) -> None:
    """Empty shards would put untrained models in the ensemble; 10**9 of them would never finish."""
    config = w.CONFIG.__class__(shards=shards, slices=slices)
    factory_calls = []
    sisa = Sisa(lambda: factory_calls.append(1) or w.factory(), config, salt=w.SALT, seed=w.SEED)
    with pytest.raises(InvalidParameterError, match=r"^config="):
        sisa.fit(*w.data())
    assert not factory_calls


def test_the_demo_refuses_more_shards_than_records_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from certun.cli import main

    code = main(["demo", "--quick", "--data", "digits", "--route", "sisa", "--shards", "1000000000",
                 "--out", str(tmp_path / "demo"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "config=" in err and "shards" in err
    assert not (tmp_path / "demo" / "certificate.json").exists()


def test_temporary_files_left_by_a_killed_write_are_removed_by_the_next_fit(folder: Path) -> None:
    """A process killed inside a write leaves its temporary file: weights trained on records that a later
    deletion removes, kept in the folder forever unless fit clears them with the checkpoints."""
    left = [folder / f".{ckpt.checkpoint_name(1, 2)}.k9x2_a1.tmp", folder / f".{ckpt.MANIFEST}.q0z1.tmp"]
    for path in left:
        path.write_bytes(b"weights that saw a deleted record")
    other = folder / ".owner-notes.tmp"  # not certun's: left alone
    other.write_bytes(b"")
    Sisa(w.factory, w.CONFIG, salt=w.SALT, seed=w.SEED, checkpoint_dir=folder).fit(*w.data())
    assert not any(p.exists() for p in left) and other.exists()


def _first_slice_ids() -> list[str]:
    """One record from the first slice of shard 0: deleting it needs no checkpoint (a fresh start)."""
    _, _, ids = w.data()
    shard, slice_ = assign(ids, shards=w.CONFIG.shards, slices=w.CONFIG.slices, salt=w.SALT)
    return [next(i for n, i in enumerate(ids) if shard[n] == 0 and slice_[n] == 0)]


def test_a_folder_another_process_retrained_with_other_settings_is_refused(tmp_path: Path) -> None:
    """Another process refits the folder (same salt, seed and data, another lr): a deletion that reads no
    checkpoint must still see that the folder no longer holds this ensemble's checkpoints."""
    folder = tmp_path / "ckpt"
    stale = w.trained(folder)
    Sisa(w.factory, w.CONFIG.__class__(shards=3, slices=3, batch_size=16, lr=0.01), salt=w.SALT, seed=w.SEED,
         checkpoint_dir=folder).fit(*w.data())
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(SisaCheckpointError, match="another process"):
        stale.unlearn(_first_slice_ids())
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_folder_others_can_write_to_is_refused(folder: Path, mode: int) -> None:
    """Whoever can write to the folder can delete checkpoints or put back an old manifest and files."""
    os.chmod(folder, mode)
    try:
        with pytest.raises(SisaCheckpointError, match="writable"):
            _load(folder, F1)
        with pytest.raises(SisaCheckpointError, match="writable"):
            w.trained(folder)
    finally:
        os.chmod(folder, 0o700)
