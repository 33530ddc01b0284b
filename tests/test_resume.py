"""Resumable runs (numpy backend): checkpoint every k steps, resume bit-identically, refuse any other run.

The torch backend's kill test (a process killed mid-run, resumed in another) is in test_resume_torch.py.
"""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
import pytest

import certun
from certun.backends import UnsafeNoiseWarning
from certun.backends.numpy_backend import LinearModel, batches
from certun.errors import InvalidParameterError, UnlearningRunError

CHECKPOINT = "certun-checkpoint.bin"


class CrashError(Exception):
    """A simulated crash (pre-emption) raised from the callback: certun must leave the checkpoint for resume."""


def _data(seed=0, n=40, d_in=4, k=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d_in))
    y = rng.integers(0, k, n)
    model = LinearModel(rng.normal(size=(k, d_in)), rng.normal(size=k))
    return model, batches(X, y, 8)


def _gc(T=12, **kw):
    args = dict(C0=2.0, C1=0.5, gamma=0.05, T=T)
    args.update(kw)
    return certun.plan(1.0, 1e-5, **args)


def _mc(T=12):
    return certun.plan(1.0, 1e-5, variant="model_clipping", C0=2.0, C1=0.5, C2=1.0, gamma=0.05, lam=0.5, T=T)


def _crash_at(step):
    def callback(t, x):
        if t == step:
            raise CrashError(t)
    return callback


def _interrupted(model, data, schedule, folder, *, at=7, every=3, **kw):
    """A run that crashes after noisy step ``at``; the checkpoint of the last multiple of ``every`` stays."""
    with pytest.raises(CrashError):
        certun.unlearn(model, data, schedule, backend="numpy", checkpoint_dir=folder, checkpoint_every=every,
                       callback=_crash_at(at), **kw)
    assert (folder / CHECKPOINT).is_file()


def _same_run(a, b):
    """Same released bytes, same history (but wall times), same certificate but timestamps and salted fields."""
    assert a.model.flat().tobytes() == b.model.flat().tobytes()
    for key, values in a.history.items():
        if key != "time_s":
            assert values == b.history[key], key
    if a.certificate is not None:
        for part in ("claim", "mechanism", "accounting", "subject"):
            assert a.certificate[part] == b.certificate[part], part
        ex_a, ex_b = dict(a.certificate["execution"]), dict(b.certificate["execution"])
        for stamp in ("started_at", "finished_at"):
            ex_a.pop(stamp), ex_b.pop(stamp)
        assert ex_a == ex_b
        assert a.certificate["artifacts"]["unlearned_model"] == b.certificate["artifacts"]["unlearned_model"]


@pytest.mark.parametrize("schedule", [_gc(), _mc()], ids=["gradient_clipping", "model_clipping"])
def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, schedule):
    """CrashError after step 7 with a checkpoint every 3 steps; the resumed run restarts at step 6 and ends
    bit-identical to a run never interrupted (model bytes, history, certificate); the folder is gone."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    reference = certun.unlearn(model, data, schedule, backend="numpy", seed=11)
    _interrupted(model, data, schedule, folder, seed=11)
    seen = []
    resumed = certun.unlearn(model, data, schedule, backend="numpy", seed=11, checkpoint_dir=folder,
                             checkpoint_every=3, callback=lambda t, x: seen.append(t))
    assert resumed.resumed_from == 6 and seen == list(range(6, 12))
    assert reference.resumed_from is None
    _same_run(reference, resumed)
    assert not folder.exists()


def test_an_os_key_is_kept_in_the_checkpoint_and_reused_on_resume(tmp_path):
    """seed=None: the fresh OS key is part of the checkpoint, so the resumed run equals a replay of its
    own opening (the only uninterrupted run with that key)."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder)
    resumed = certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3)
    assert resumed.resumed_from == 6 and resumed.seed_opening["origin"] == "os"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        replay = certun.unlearn(model, data, _gc(), backend="numpy", seed=resumed.seed_opening)
    assert replay.model.flat().tobytes() == resumed.model.flat().tobytes()


def test_the_checkpoint_is_private_atomic_and_says_what_it_is(tmp_path):
    """Folder 0o700, file 0o600, no temporary file left, and the file itself warns that it is an intermediate
    iterate no certificate covers and holds secret key material."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / CHECKPOINT).stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT]
    head = (folder / CHECKPOINT).read_bytes()[:400].decode("ascii", "replace")
    for words in ("intermediate", "not covered by any certificate", "secret key material", "delete"):
        assert words in head


def test_a_finished_run_removes_its_checkpoints(tmp_path):
    """A run that ends normally leaves no checkpoint and no folder (it wrote some on the way)."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    written = []

    def callback(t, x):
        written.append((folder / CHECKPOINT).exists())

    certun.unlearn(model, data, _gc(), backend="numpy", seed=1, checkpoint_dir=folder, checkpoint_every=2,
                   callback=callback)
    assert any(written) and not folder.exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_failed_run_removes_its_checkpoint(tmp_path):
    """A run certun stops (non-finite loss at step 5, after checkpoints at 2 and 4) deletes the checkpoint."""
    model, data = _data()
    bad = [(X.copy(), y) for X, y in data]
    bad[0][0][0, 0] = np.inf  # the second pass starts at step 5
    folder = tmp_path / "ckpt"
    with pytest.raises(UnlearningRunError, match="non-finite"):
        certun.unlearn(model, bad, _gc(), backend="numpy", seed=1, checkpoint_dir=folder, checkpoint_every=2)
    assert not folder.exists()


def test_resume_keeps_injected_noise_rules(tmp_path):
    """An injected noise source is called with the same draw indices after a resume; still no certificate."""
    model, data = _data()
    folder = tmp_path / "ckpt"

    def source(k, d):
        return np.random.default_rng(k).normal(size=d)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        reference = certun.unlearn(model, data, _gc(), backend="numpy", noise_source=source)
        _interrupted(model, data, _gc(), folder, noise_source=source)
        resumed = certun.unlearn(model, data, _gc(), backend="numpy", noise_source=source, checkpoint_dir=folder,
                                 checkpoint_every=3)
    assert resumed.resumed_from == 6 and resumed.certificate is None
    _same_run(reference, resumed)


# ---------------------------------------------------------------- refusals: another run, tampering
def _other_inputs():
    model, data = _data()
    other_model, _ = _data(seed=1)
    changed = [(X + 1.0, y) for X, y in data]
    logistic = LinearModel(model.weight[:1], model.bias[:1], "logistic")
    return {
        "schedule": dict(schedule=_gc(gamma=0.04)),
        "model": dict(model=other_model),
        "loss": dict(model=LinearModel(model.weight, model.bias, "squared")),
        "finetune": dict(finetune_epochs=1),
        "postprocess": dict(postprocess="none"),
        "clip": dict(clip="batch"),
        "seed": dict(seed=12),
        "forget_ids": dict(forget_ids=["x"]),
        "data": dict(data=changed),
        "shape": dict(model=logistic),
        "center": dict(center=LinearModel(model.weight * 0.5, model.bias * 0.5)),
        "retain_ids": dict(retain_ids=list(range(1, 41))),
        "finetune_lr": dict(finetune_epochs=1, finetune_lr=0.01),
    }


@pytest.mark.parametrize("change", sorted(_other_inputs()))
def test_resuming_another_run_is_refused_before_any_step(tmp_path, change):
    """Other data, schedule, model, loss, options or seed: refused with a clear error before any step, and the
    checkpoint (another run's) is left as it was."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder, seed=11)
    before = (folder / CHECKPOINT).read_bytes()
    args = dict(model=model, data=data, schedule=_gc(), seed=11)
    args.update(_other_inputs()[change])
    seen = []
    with pytest.raises((InvalidParameterError, UnlearningRunError), match="checkpoint"):
        certun.unlearn(args.pop("model"), args.pop("data"), args.pop("schedule"), backend="numpy",
                       checkpoint_dir=folder, checkpoint_every=3, callback=lambda t, x: seen.append(t), **args)
    assert seen == []
    assert (folder / CHECKPOINT).read_bytes() == before


@pytest.mark.parametrize("where", ["header", "iterate", "tag"])
def test_a_tampered_checkpoint_is_refused(tmp_path, where):
    """One flipped bit anywhere (the step count in the header, the iterate, the tag) is refused."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder, seed=11)
    path = folder / CHECKPOINT
    raw = bytearray(path.read_bytes())
    header_end = raw.index(b"}\n") if where == "header" else None
    index = {"header": (header_end or 0) - 1, "iterate": len(raw) - 64 - 3, "tag": len(raw) - 1}[where]
    raw[index] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(UnlearningRunError, match="checkpoint"):
        certun.unlearn(model, data, _gc(), backend="numpy", seed=11, checkpoint_dir=folder, checkpoint_every=3)


def _rewrite(path, edit):
    """Edit a checkpoint's header and recompute its checksum (anyone can), keeping its tag (the run key's)."""
    import hashlib
    import json

    raw = path.read_bytes()
    lines = raw.split(b"\n", 3)
    header = json.loads(lines[2])
    edit(header)
    body = b"\n".join([lines[0], lines[1], json.dumps(header, sort_keys=True, separators=(",", ":")).encode(),
                       lines[3][:-64]])
    path.write_bytes(body + hashlib.sha256(body).digest() + raw[-32:])


def test_an_edited_checkpoint_with_a_valid_checksum_is_refused_by_its_tag(tmp_path):
    """Moving the step count back (the checksum recomputed) is refused: the tag is under the run key."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder, seed=11)
    _rewrite(folder / CHECKPOINT, lambda h: h.update(done=3))
    with pytest.raises(UnlearningRunError, match="integrity tag"):
        certun.unlearn(model, data, _gc(), backend="numpy", seed=11, checkpoint_dir=folder, checkpoint_every=3)


def test_a_checkpoint_relabelled_for_other_inputs_is_refused_by_its_tag(tmp_path):
    """Another run's checkpoint whose header claims this run's inputs (binding copied over, checksum recomputed)
    is refused: its tag is under the key of the inputs it was made with."""
    model, data = _data()
    a, b = tmp_path / "a", tmp_path / "b"
    _interrupted(model, data, _gc(), a, seed=11)
    _interrupted(model, data, _gc(), b, seed=11, forget_ids=["x"])
    import json

    theirs = json.loads((b / CHECKPOINT).read_bytes().split(b"\n", 3)[2])["binding"]
    _rewrite(a / CHECKPOINT, lambda h: h.update(binding=theirs))
    with pytest.raises(UnlearningRunError, match="integrity tag"):
        certun.unlearn(model, data, _gc(), backend="numpy", seed=11, forget_ids=["x"], checkpoint_dir=a,
                       checkpoint_every=3)


def test_another_runs_checkpoint_copied_in_is_refused(tmp_path):
    """A checkpoint of another run (another seed) copied into this run's folder is refused."""
    model, data = _data()
    a, b = tmp_path / "a", tmp_path / "b"
    _interrupted(model, data, _gc(), a, seed=11)
    _interrupted(model, data, _gc(), b, seed=12)
    (b / CHECKPOINT).write_bytes((a / CHECKPOINT).read_bytes())
    with pytest.raises(InvalidParameterError, match="checkpoint"):
        certun.unlearn(model, data, _gc(), backend="numpy", seed=12, checkpoint_dir=b, checkpoint_every=3)


def test_a_checkpoint_of_a_truncated_file_is_refused(tmp_path):
    """A file cut short (a torn copy) is refused, not read as a shorter iterate."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder, seed=11)
    path = folder / CHECKPOINT
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UnlearningRunError, match="checkpoint"):
        certun.unlearn(model, data, _gc(), backend="numpy", seed=11, checkpoint_dir=folder, checkpoint_every=3)


# ---------------------------------------------------------------- options
@pytest.mark.parametrize("every", [0, -1, 1.5, True, "3"])
def test_bad_checkpoint_every_is_refused(tmp_path, every):
    model, data = _data()
    with pytest.raises(InvalidParameterError, match="checkpoint_every"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=tmp_path / "c", checkpoint_every=every)


def test_checkpoint_options_come_together(tmp_path):
    """A folder without a period, or a period without a folder, is refused before any work."""
    model, data = _data()
    with pytest.raises(InvalidParameterError, match="checkpoint_every"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=tmp_path / "c")
    with pytest.raises(InvalidParameterError, match="checkpoint_dir"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_every=3)


def test_a_checkpoint_dir_that_is_a_file_or_a_link_is_refused(tmp_path):
    model, data = _data()
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(InvalidParameterError, match="checkpoint_dir"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=afile, checkpoint_every=3)
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(InvalidParameterError, match="checkpoint_dir"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=tmp_path / "link", checkpoint_every=3)


def test_an_existing_empty_folder_is_made_private_and_removed(tmp_path):
    """A folder the user made for the run (mode 755, empty) is used, made private while the run holds it, and
    removed at the end. (A folder holding other files is refused: test_resume_attacks.py.)"""
    model, data = _data()
    folder = tmp_path / "ckpt"
    folder.mkdir(mode=0o755)
    modes = []
    certun.unlearn(model, data, _gc(), backend="numpy", seed=1, checkpoint_dir=folder, checkpoint_every=2,
                   callback=lambda t, x: modes.append(stat.S_IMODE(folder.stat().st_mode)))
    assert modes and set(modes) == {0o700} and not folder.exists()


def test_a_run_without_noisy_steps_leaves_no_folder(tmp_path):
    """Output perturbation has no steps to checkpoint: the option is accepted and nothing is left behind."""
    model, data = _data()
    schedule = certun.plan(1.0, 1e-5, variant="output_perturbation", C0=2.0)
    folder = tmp_path / "ckpt"
    result = certun.unlearn(model, data, schedule, backend="numpy", seed=1, checkpoint_dir=folder,
                            checkpoint_every=1)
    assert result.resumed_from is None and not folder.exists()


def test_a_process_that_is_not_the_writer_reads_but_never_writes_or_deletes(tmp_path):
    """A distributed run's ranks but 0 (``checkpoint_writer = False``) resume from the checkpoint rank 0 wrote,
    and neither write one nor delete it."""
    from certun.backends import _skeleton as skeleton
    from certun.backends._options import RunOptions
    from certun.backends.numpy_backend import _NumpyRun

    class Reader(_NumpyRun):
        checkpoint_writer = False

    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder, seed=11)
    before = (folder / CHECKPOINT).read_bytes()
    opts = RunOptions.check(_gc(), clip="per_sample", postprocess="project_C0", finetune_epochs=0, finetune_lr=0.05,
                            noise_mode="fresh", progress=False, callback=None, noise_source=None,
                            checkpoint_dir=folder, checkpoint_every=1)
    hooks = Reader(model, data, _gc(), opts, center=None, model_factory=None)
    result = skeleton.run(hooks, data, _gc(), opts, seed=11, previous=None, retain_ids=None, forget_ids=None)
    reference = certun.unlearn(model, data, _gc(), backend="numpy", seed=11)
    assert result.resumed_from == 6 and result.model.flat().tobytes() == reference.model.flat().tobytes()
    assert (folder / CHECKPOINT).read_bytes() == before


def test_resuming_with_another_previous_certificate_is_refused(tmp_path):
    """The ledger's previous certificate is part of the run: a resume chained onto another one is refused."""
    model, data = _data()
    first = certun.unlearn(model, data, _gc(T=2), backend="numpy", seed=3)
    folder = tmp_path / "ckpt"
    _interrupted(first.model, data, _gc(), folder, seed=11)
    with pytest.raises(InvalidParameterError, match="previous certificate"):
        certun.unlearn(first.model, data, _gc(), backend="numpy", seed=11, previous=first.certificate,
                       checkpoint_dir=folder, checkpoint_every=3)


def test_a_replay_resumes_only_with_its_own_opening(tmp_path):
    """An audit replay (a seed_opening as seed) resumes with the same opening, bit for bit, and never with another
    run's opening; it stays uncertified."""
    model, data = _data()
    a = certun.unlearn(model, data, _gc(), backend="numpy")
    b = certun.unlearn(model, data, _gc(), backend="numpy")
    folder = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _interrupted(model, data, _gc(), folder, seed=a.seed_opening)
        with pytest.raises(InvalidParameterError, match="seed"):
            certun.unlearn(model, data, _gc(), backend="numpy", seed=b.seed_opening, checkpoint_dir=folder,
                           checkpoint_every=3)
        resumed = certun.unlearn(model, data, _gc(), backend="numpy", seed=a.seed_opening, checkpoint_dir=folder,
                                 checkpoint_every=3)
    assert resumed.resumed_from == 6 and resumed.certificate is None
    assert resumed.model.flat().tobytes() == a.model.flat().tobytes()
