"""SISA checkpoints on disk: same result as in memory, private files, tampering refused, honest manifest."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from certun.backends import _sisa_checkpoints as ckpt
from certun.backends._sisa_manifest import seal
from certun.backends.sisa import Sisa, SisaCheckpointError, SisaConfig, assign
from certun.certificates import model_digest
from certun.certificates._safetensors_reader import read_safetensors
from certun.errors import InvalidParameterError, UnlearningRunError

SALT = bytes(range(32))
CONFIG = SisaConfig(shards=3, slices=3, batch_size=16)


def _data(n: int = 180, d: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] > 1).long()).clamp(max=2)
    return x, y, [f"user-{i}" for i in range(n)]


def _factory() -> nn.Module:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    model.register_buffer("tag", torch.arange(4, dtype=torch.int64))  # a non-float tensor in the state dict
    return model


def _states(sisa: Sisa) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in sisa.models]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _late_ids(ids: list[str], stage: int) -> dict[int, str]:
    """One identifier per shard whose slice is ``stage`` (so its deletion restarts from a checkpoint)."""
    shard, slice_ = assign(ids, shards=CONFIG.shards, slices=CONFIG.slices, salt=SALT)
    out: dict[int, str] = {}
    for i, (s, r) in enumerate(zip(shard, slice_, strict=True)):
        if r == stage and int(s) not in out:
            out[int(s)] = ids[i]
    return out


def _fitted(tmp_path: Path | None) -> tuple[Sisa, list[str]]:
    x, y, ids = _data()
    sisa = Sisa(_factory, CONFIG, salt=SALT, seed=11, checkpoint_dir=tmp_path)
    sisa.fit(x, y, ids)
    return sisa, ids


def test_disk_round_trip_is_bit_identical_to_the_in_memory_path(tmp_path: Path) -> None:
    disk, ids = _fitted(tmp_path / "ckpt")
    memory, _ = _fitted(None)
    late = _late_ids(ids, 2)
    forget = [late[0], late[1], _late_ids(ids, 1)[2]]
    r_disk, r_mem = disk.unlearn(forget), memory.unlearn(forget)
    assert r_disk.restart_stage == r_mem.restart_stage and min(r_disk.restart_stage.values()) > 0
    assert r_disk.restarted_from == r_mem.restarted_from and None not in r_disk.restarted_from.values()
    for s, (a, b) in enumerate(zip(_states(disk), _states(memory), strict=True)):
        assert _equal(a, b), f"shard {s} differs between disk and in-memory checkpoints"
    assert disk.checkpoints == [[], [], []]  # nothing kept in memory in disk mode
    # a second request restarts from checkpoints written by the first
    more = [_late_ids([i for i in ids if i not in forget], 2)[1]]
    disk.unlearn(more)
    memory.unlearn(more)
    assert all(_equal(a, b) for a, b in zip(_states(disk), _states(memory), strict=True))


def test_files_are_private_and_read_back_with_the_repository_reader(tmp_path: Path) -> None:
    sisa, _ = _fitted(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    expected = sorted([ckpt.checkpoint_name(s, r) for s in range(3) for r in range(3)] + ["manifest.json"])
    assert names == expected  # no temporary files left behind
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    for s, model in enumerate(sisa.models):
        arrays = read_safetensors(tmp_path / ckpt.checkpoint_name(s, 2))
        state = model.state_dict()
        assert arrays.keys() == state.keys()
        for k, v in state.items():
            assert arrays[k].dtype == v.numpy().dtype and np.array_equal(arrays[k], v.numpy()), k
    data = (tmp_path / ckpt.checkpoint_name(0, 0)).read_bytes()
    assert (8 + int.from_bytes(data[:8], "little")) % 8 == 0  # data section aligned


def test_manifest_lists_every_checkpoint_with_its_digest(tmp_path: Path) -> None:
    sisa, ids = _fitted(tmp_path)

    def check() -> None:
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        assert (manifest["shards"], manifest["slices"], manifest["cumulative"]) == (3, 3, True)
        entries = {(e["shard"], e["stage"]): e for e in manifest["checkpoints"]}
        assert sorted(entries) == [(s, r) for s in range(3) for r in range(3)]
        for (s, r), entry in entries.items():
            assert entry["file"] == ckpt.checkpoint_name(s, r)
            assert entry["root"] == model_digest(read_safetensors(tmp_path / entry["file"])).root
        for s, model in enumerate(sisa.models):
            assert entries[(s, 2)]["root"] == model_digest(model.state_dict()).root
        text = (tmp_path / "manifest.json").read_text()
        assert SALT.hex() not in text and "user-" not in text and '"seed"' not in text

    check()
    sisa.unlearn([_late_ids(ids, 1)[0]])
    check()


def test_stale_checkpoints_are_deleted_before_new_ones_are_written(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sisa, ids = _fitted(tmp_path)
    seen: list[set[str]] = []
    real = ckpt.write_checkpoint

    def spy(directory: Path, shard: int, stage: int, state: dict) -> str:
        seen.append({p.name for p in directory.iterdir()})
        return real(directory, shard, stage, state)

    monkeypatch.setattr(ckpt, "write_checkpoint", spy)
    sisa.unlearn([_late_ids(ids, 1)[0]])  # shard 0 restarts at stage 1: stages 1 and 2 are stale
    assert seen, "unlearn wrote no checkpoint"
    assert ckpt.checkpoint_name(0, 0) in seen[0]
    assert ckpt.checkpoint_name(0, 1) not in seen[0] and ckpt.checkpoint_name(0, 2) not in seen[0]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["checkpoints"]) == 9


def _snapshot(sisa: Sisa, directory: Path) -> tuple:
    files = {p.name: p.read_bytes() for p in directory.iterdir()}
    return _states(sisa), sisa.retained_ids(), sisa.gradient_evaluations, files


def _assert_unchanged(sisa: Sisa, directory: Path, before: tuple) -> None:
    states, retained, spent, files = _snapshot(sisa, directory)
    assert all(_equal(a, b) for a, b in zip(states, before[0], strict=True))
    assert retained == before[1] and spent == before[2] and files == before[3]


def test_a_tampered_checkpoint_is_refused_before_any_work(tmp_path: Path) -> None:
    sisa, ids = _fitted(tmp_path)
    target = tmp_path / ckpt.checkpoint_name(1, 1)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last tensor's data
    target.write_bytes(bytes(data))
    before = _snapshot(sisa, tmp_path)
    with pytest.raises(SisaCheckpointError, match="shard-1-stage-1"):
        sisa.unlearn([_late_ids(ids, 2)[0], _late_ids(ids, 2)[1]])
    _assert_unchanged(sisa, tmp_path, before)
    assert issubclass(SisaCheckpointError, UnlearningRunError)


def test_a_swapped_checkpoint_is_refused(tmp_path: Path) -> None:
    sisa, ids = _fitted(tmp_path)
    shutil.copyfile(tmp_path / ckpt.checkpoint_name(0, 1), tmp_path / ckpt.checkpoint_name(2, 1))
    before = _snapshot(sisa, tmp_path)
    with pytest.raises(SisaCheckpointError, match="modified or swapped"):
        sisa.unlearn([_late_ids(ids, 2)[2]])
    _assert_unchanged(sisa, tmp_path, before)


@pytest.mark.parametrize("knows_salt", [False, True])
def test_a_tampered_checkpoint_with_a_rewritten_manifest_is_refused(tmp_path: Path, knows_salt: bool) -> None:
    """The attacker swaps the file and updates its manifest root: the tag catches it, and an attacker who
    even holds the salt (and re-seals the manifest) is caught by the owner's in-memory roots."""
    sisa, ids = _fitted(tmp_path)
    shutil.copyfile(tmp_path / ckpt.checkpoint_name(0, 1), tmp_path / ckpt.checkpoint_name(2, 1))
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    for entry in manifest["checkpoints"]:
        if (entry["shard"], entry["stage"]) == (2, 1):
            entry["root"] = model_digest(read_safetensors(tmp_path / entry["file"])).root
    path.write_text(json.dumps(seal(manifest, SALT) if knows_salt else manifest))
    before = _snapshot(sisa, tmp_path)
    with pytest.raises(SisaCheckpointError, match="records other" if knows_salt else "integrity tag"):
        sisa.unlearn([_late_ids(ids, 2)[2]])
    _assert_unchanged(sisa, tmp_path, before)


def test_a_manifest_from_another_seed_is_refused(tmp_path: Path) -> None:
    sisa, ids = _fitted(tmp_path)
    other = tmp_path / "other"
    Sisa(_factory, CONFIG, salt=SALT, seed=12, checkpoint_dir=other).fit(*_data())
    shutil.copyfile(other / "manifest.json", tmp_path / "manifest.json")
    with pytest.raises(SisaCheckpointError, match="another salt or seed"):
        sisa.unlearn([_late_ids(ids, 2)[0]])
    assert len(sisa.retained_ids()) == len(ids)


@pytest.mark.parametrize("damage", ["delete", "truncate", "truncate-data", "manifest"])
def test_a_missing_or_malformed_file_is_a_typed_error(tmp_path: Path, damage: str) -> None:
    sisa, ids = _fitted(tmp_path)
    target = tmp_path / ("manifest.json" if damage == "manifest" else ckpt.checkpoint_name(0, 1))
    if damage == "delete":
        target.unlink()
    elif damage == "truncate-data":  # header intact, last tensor's offsets now outside the file
        target.write_bytes(target.read_bytes()[:-4])
    else:
        target.write_bytes(target.read_bytes()[:5])
    with pytest.raises(SisaCheckpointError):
        sisa.unlearn([_late_ids(ids, 2)[0]])
    assert len(sisa.retained_ids()) == len(ids)


def test_checkpoint_dir_must_be_a_path() -> None:
    with pytest.raises(InvalidParameterError, match="checkpoint_dir"):
        Sisa(_factory, CONFIG, salt=SALT, seed=1, checkpoint_dir=3)  # type: ignore[arg-type]


def test_refit_removes_checkpoints_of_an_earlier_layout(tmp_path: Path) -> None:
    x, y, ids = _data()
    Sisa(_factory, SisaConfig(shards=4, slices=4, batch_size=16), salt=SALT, seed=1,
         checkpoint_dir=tmp_path).fit(x, y, ids)
    _fitted(tmp_path)
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".safetensors"]) == 9
