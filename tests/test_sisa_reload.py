"""Reloading a SISA ensemble from its checkpoint folder: same ensemble, same deletions, attacks refused."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import sisa_reload_worker as w
import torch
from torch import nn

from certun.backends import _sisa_checkpoints as ckpt
from certun.backends.sisa import Sisa, SisaCheckpointError, ensemble_digest
from certun.certificates import verify
from certun.certificates._safetensors_reader import read_safetensors
from certun.errors import InvalidParameterError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

F1, F2, F3 = w.forget_sets()


def _states(sisa: Sisa) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in sisa.models]


def _same(a: Sisa | dict, b: Sisa | dict) -> bool:
    sa = a.ensemble.state_dict() if isinstance(a, Sisa) else a
    sb = b.ensemble.state_dict() if isinstance(b, Sisa) else b
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def _load(folder: Path, forgotten: list[str] = (), **changes) -> Sisa:
    args = {"model_factory": w.factory, "config": w.CONFIG, "salt": w.SALT, "seed": w.SEED}
    args.update(changes)
    x, y, ids = w.without(list(forgotten))
    return Sisa.load(folder, args.pop("model_factory"), args.pop("config"), x, y, ids, **args)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A checkpoint folder after training and the first deletion F1."""
    w.trained(tmp_path / "ckpt", F1)
    return tmp_path / "ckpt"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------- the good path
def test_a_reloaded_ensemble_equals_the_original_and_serves_the_same_deletions(folder: Path) -> None:
    original = w.trained(None, F1)
    loaded = _load(folder, F1)
    assert _same(loaded, original)
    assert sorted(loaded.retained_ids()) == sorted(original.retained_ids())
    for forget in (F2, F3):  # sequential requests after the reload
        a, b = loaded.unlearn(forget), original.unlearn(forget)
        assert a.restart_stage == b.restart_stage and a.restarted_from == b.restarted_from
        assert a.retain_roots_after == b.retain_roots_after and a.model_before == b.model_before
        assert _same(loaded, original)
    # the manifest moved with each deletion: the folder now reloads on the data without F1, F2 and F3
    assert _same(_load(folder, F1 + F2 + F3), original)
    fresh = Sisa(w.factory, w.CONFIG, salt=w.SALT, seed=w.SEED)
    fresh.fit(*w.without(F1 + F2 + F3))
    assert _same(fresh, original)


def test_the_whole_point_train_in_one_process_delete_in_another(tmp_path: Path) -> None:
    """Train and serve F1 in one process, reload in another and serve F2, F3: bit-identical, certified, chained."""
    folder, ledger = tmp_path / "ckpt", tmp_path / "ledger"
    ledger.mkdir()
    worker = Path(w.__file__)
    env = {**os.environ, "PYTHONPATH": str(worker.parent)}
    for command in ("train", "serve"):
        done = subprocess.run([sys.executable, str(worker), command, str(folder), str(ledger)], env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    served = {k: torch.from_numpy(v.copy()) for k, v in read_safetensors(ledger / "ensemble.safetensors").items()}
    certs = [json.loads((ledger / f"{n:03d}.json").read_text()) for n in range(3)]
    # the same requests served in this process, without any reload
    original = w.trained(None)
    for n, forget in enumerate((F1, F2, F3)):
        report = original.unlearn(forget)
        assert certs[n]["artifacts"]["unlearned_model"]["root"] == ensemble_digest(original.ensemble).root
        states = certs[n]["execution"]["sisa"]["shard_states"]
        assert [{k: e[k] for k in ("shard", "status", "restart_stage")} for e in states] == _public_states(report)
    assert _same(served, original)
    fresh = Sisa(w.factory, w.CONFIG, salt=w.SALT, seed=w.SEED)
    fresh.fit(*w.without(F1 + F2 + F3))
    assert _same(served, fresh)
    for n in range(3):
        assert verify(certs[n], chain_dir=ledger).ok, n
    assert certs[1]["chain"]["sequence"] == 1 and certs[2]["chain"]["sequence"] == 2
    assert certs[1]["artifacts"]["model_before"]["root"] == certs[0]["artifacts"]["unlearned_model"]["root"]
    assert _same(_load(folder, F1 + F2 + F3), served)  # a third process picks up where the second stopped


def _public_states(report) -> list[dict]:
    return [{"shard": s, "status": "retrained" if s in report.restart_stage else "untouched",
             "restart_stage": report.restart_stage.get(s)} for s in range(w.CONFIG.shards)]


# ------------------------------------------------------------------------------------- attacks
class _CountingFactory:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> nn.Module:
        self.calls += 1
        return w.factory()


def _refused(folder: Path, error: type[Exception], match: str, forgotten: list[str] = F1, **changes) -> None:
    """Loading is refused with ``error`` before any model is built, and the folder is left as it was."""
    before = _files(folder)
    factory = changes.pop("model_factory", _CountingFactory())
    with pytest.raises(error, match=match):
        _load(folder, forgotten, model_factory=factory, **changes)
    assert _files(folder) == before
    if isinstance(factory, _CountingFactory):
        assert factory.calls == 0, "a model was built before the refusal"


def test_a_wrong_salt_is_refused(folder: Path) -> None:
    _refused(folder, SisaCheckpointError, "integrity tag", salt=bytes(32))


def test_a_wrong_seed_is_refused_without_printing_either_seed(folder: Path) -> None:
    with pytest.raises(InvalidParameterError, match="seed") as info:
        _load(folder, F1, seed=w.SEED + 1)
    assert str(w.SEED + 1) not in str(info.value) and str(w.SEED) not in str(info.value).replace("seed=", "")
    _refused(folder, InvalidParameterError, "seed", seed=w.SEED + 1)


@pytest.mark.parametrize("edit", ["root", "lr", "records", "drop-entry", "tag", "untagged"])
def test_an_edited_manifest_is_refused(folder: Path, edit: str) -> None:
    path = folder / ckpt.MANIFEST
    manifest = json.loads(path.read_text())
    if edit == "root":
        manifest["checkpoints"][0]["root"] = "sha256:" + "00" * 32
    elif edit == "lr":
        manifest["lr"] = 0.1
    elif edit == "records":
        manifest["data"]["records"] += 1
    elif edit == "drop-entry":
        manifest["checkpoints"].pop()
    elif edit == "tag":
        manifest["tag"] = "hmac-sha256:" + "00" * 32
    else:
        del manifest["tag"]
    path.write_text(json.dumps(manifest))
    _refused(folder, SisaCheckpointError, "integrity tag")


def test_a_missing_manifest_is_refused(folder: Path) -> None:
    (folder / ckpt.MANIFEST).unlink()
    _refused(folder, SisaCheckpointError, "manifest")


def test_a_folder_without_a_manifest_from_in_memory_training_is_refused(tmp_path: Path) -> None:
    tmp_path.joinpath("empty").mkdir()
    _refused(tmp_path / "empty", SisaCheckpointError, "manifest")


@pytest.mark.parametrize("damage", ["flip", "swap", "delete", "truncate"])
def test_a_tampered_swapped_or_missing_checkpoint_is_refused(folder: Path, damage: str) -> None:
    target = folder / ckpt.checkpoint_name(2, 0)  # an early stage: not needed for the current ensemble
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "swap":
        shutil.copyfile(folder / ckpt.checkpoint_name(1, 0), target)
    elif damage == "delete":
        target.unlink()
    else:
        target.write_bytes(target.read_bytes()[:-4])
    before = _files(folder)
    with pytest.raises(SisaCheckpointError, match="shard-2-stage-0"):
        _load(folder, F1)
    assert _files(folder) == before


def test_a_manifest_and_files_from_another_training_with_the_same_key_are_refused(folder: Path,
                                                                                   tmp_path: Path) -> None:
    """Same salt and seed, other data: the tag verifies, the recorded data digest does not match."""
    other = tmp_path / "other"
    x, y, ids = w.data()
    Sisa(w.factory, w.CONFIG, salt=w.SALT, seed=w.SEED, checkpoint_dir=other).fit(x, 1 - y.clamp(max=1), ids)
    shutil.rmtree(folder)
    shutil.copytree(other, folder)
    _refused(folder, InvalidParameterError, "data", forgotten=[])


def test_a_manifest_of_another_seed_is_refused(folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    Sisa(w.factory, w.CONFIG, salt=w.SALT, seed=w.SEED + 1, checkpoint_dir=other).fit(*w.data())
    shutil.copyfile(other / ckpt.MANIFEST, folder / ckpt.MANIFEST)
    _refused(folder, InvalidParameterError, "seed")


def test_a_rolled_back_folder_is_refused(tmp_path: Path) -> None:
    """An attacker restores the folder as it was before a deletion: the owner's current data gives it away."""
    folder, snapshot = tmp_path / "ckpt", tmp_path / "snapshot"
    sisa = w.trained(folder)
    shutil.copytree(folder, snapshot)
    sisa.unlearn(F1)
    shutil.rmtree(folder)
    shutil.copytree(snapshot, folder)
    _refused(folder, InvalidParameterError, "data")


@pytest.mark.parametrize("wrong", ["label", "row", "deleted-record-kept", "id"])
def test_data_other_than_the_recorded_data_is_refused(folder: Path, wrong: str) -> None:
    x, y, ids = w.without(F1)
    if wrong == "label":
        y = y.clone()
        y[7] = (y[7] + 1) % 3
    elif wrong == "row":
        x = x.clone()
        x[3, 2] = torch.nextafter(x[3, 2], torch.tensor(10.0))
    elif wrong == "deleted-record-kept":
        x, y, ids = w.data()
    else:
        ids = [*ids[:-1], "someone-else"]
    factory = _CountingFactory()
    before = _files(folder)
    with pytest.raises(InvalidParameterError, match="data"):
        Sisa.load(folder, factory, w.CONFIG, x, y, ids, salt=w.SALT, seed=w.SEED)
    assert factory.calls == 0 and _files(folder) == before


def test_row_order_does_not_matter(folder: Path) -> None:
    x, y, ids = w.without(F1)
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(3))
    loaded = Sisa.load(folder, w.factory, w.CONFIG, x[order], y[order], [ids[i] for i in order.tolist()],
                       salt=w.SALT, seed=w.SEED)
    assert _same(loaded, w.trained(None, F1))


@pytest.mark.parametrize("field", ["lr", "slices", "cumulative", "batch_size"])
def test_other_training_settings_are_refused(folder: Path, field: str) -> None:
    change = {"lr": 0.01, "slices": 4, "cumulative": False, "batch_size": 32}[field]
    _refused(folder, InvalidParameterError, f"config.*{field}", config=replace(w.CONFIG, **{field: change}))


@pytest.mark.parametrize("factory", ["architecture", "initialisation"])
def test_another_model_factory_is_refused(folder: Path, factory: str) -> None:
    def wider() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3))

    def other_init() -> nn.Module:
        model = w.factory()
        with torch.no_grad():
            model[0].bias.add_(1.0)
        return model

    _refused(folder, InvalidParameterError, "model_factory",
             model_factory=wider if factory == "architecture" else other_init)


def test_an_interrupted_deletion_is_refused(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that dies mid-deletion leaves a manifest without every checkpoint: reload says so."""
    sisa = _load(folder, F1)
    real = ckpt.write_checkpoint
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "write_checkpoint", dies)
    with pytest.raises(KeyboardInterrupt):
        sisa.unlearn(F2)
    monkeypatch.undo()
    for forgotten in (F1, F1 + F2):
        _refused(folder, SisaCheckpointError, "interrupted", forgotten=forgotten)


def test_a_manifest_edited_after_loading_is_refused_at_the_next_deletion(folder: Path) -> None:
    sisa = _load(folder, F1)
    path = folder / ckpt.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["deletions"] += 5
    path.write_text(json.dumps(manifest))
    before = _states(sisa)
    with pytest.raises(SisaCheckpointError, match="integrity tag"):
        sisa.unlearn(F2)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(before, _states(sisa), strict=True) for k in a)
    assert F2[0] in sisa.retained_ids()


@pytest.mark.parametrize(("name", "value"), [("checkpoint_dir", 3), ("salt", "secret"), ("salt", b"short"),
                                             ("seed", -1), ("seed", None), ("model_factory", None), ("config", {})])
def test_bad_arguments_are_typed_errors(folder: Path, name: str, value: object) -> None:
    args = {"checkpoint_dir": folder, "model_factory": w.factory, "config": w.CONFIG, "salt": w.SALT,
            "seed": w.SEED, name: value}
    with pytest.raises(InvalidParameterError, match=name):
        Sisa.load(args["checkpoint_dir"], args["model_factory"], args["config"], *w.without(F1),
                  salt=args["salt"], seed=args["seed"])


def test_a_sisa_whose_folder_another_process_moved_on_is_refused(folder: Path) -> None:
    """Two owners' processes load one folder; after one serves a deletion, the other's view is stale."""
    stale, current = _load(folder, F1), _load(folder, F1)
    current.unlearn(F2)  # shards 1 and 2; the stale one now deletes from shard 0 only
    before, files = _states(stale), _files(folder)
    with pytest.raises(SisaCheckpointError, match="another process"):
        stale.unlearn(F3)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(before, _states(stale), strict=True) for k in a)
    assert _files(folder) == files and F3[0] in stale.retained_ids()
    assert _same(_load(folder, F1 + F2), current)


@contextlib.contextmanager
def _held(folder: Path, mode: int):
    """Another holder of the folder's lock (flock locks of separate opens conflict, even in one process)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


@pytest.mark.skipif(fcntl is None, reason="no flock on this platform")
def test_a_folder_in_use_by_another_process_is_refused_at_once(folder: Path) -> None:
    sisa = _load(folder, F1)
    before, files = _states(sisa), _files(folder)
    with _held(folder, fcntl.LOCK_EX):
        with pytest.raises(SisaCheckpointError, match="in use by another process"):
            sisa.unlearn(F2)
        with pytest.raises(SisaCheckpointError, match="in use by another process"):
            _load(folder, F1)
        with pytest.raises(SisaCheckpointError, match="in use by another process"):
            w.trained(folder)
    assert _files(folder) == files and F2[0] in sisa.retained_ids()
    assert all(torch.equal(a[k], b[k]) for a, b in zip(before, _states(sisa), strict=True) for k in a)
    with _held(folder, fcntl.LOCK_SH):  # another process loading: loading too is fine
        assert _same(_load(folder, F1), sisa)
    sisa.unlearn(F2)  # released: served


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SisaCheckpointError, match="nowhere"):
        _load(tmp_path / "nowhere", F1)
