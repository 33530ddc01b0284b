"""Attacks on resumable runs: leaks of the checkpointed key, planted or shared checkpoints, resumes that mix
versions, forged restored state. Each test was seen failing before its fix, except the one marked as a
regression test (an attack already refused)."""

from __future__ import annotations

import json
import os
import traceback

import numpy as np
import pytest

import certun
from certun.errors import InvalidParameterError, UnlearningRunError
from tests.test_resume import CHECKPOINT, CrashError, _crash_at, _data, _gc, _interrupted


def _secret(folder):
    return json.loads((folder / CHECKPOINT).read_bytes().split(b"\n", 3)[2])["secret"]


def test_a_crash_report_with_locals_never_shows_the_checkpointed_key(tmp_path):
    """A crash of a resumed run reported with local variables (pytest --showlocals, error trackers) must not
    print the run's secret from the checkpoint read back, nor the checkpointed iterate's bytes."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder)
    with pytest.raises(CrashError) as info:
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3,
                       callback=_crash_at(9))
    report = "".join(traceback.TracebackException.from_exception(info.value, capture_locals=True).format())
    assert "resume" in report  # the frames holding the checkpoint state were captured
    assert _secret(folder) not in report and "'secret'" not in report  # (read after: no test local holds it)


def test_a_refusal_report_with_locals_never_shows_the_checkpointed_key(tmp_path):
    """A resume refused for other inputs, reported with local variables, prints no secret from the file."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder)
    with pytest.raises(InvalidParameterError) as info:
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3,
                       postprocess="none")
    report = "".join(traceback.TracebackException.from_exception(info.value, capture_locals=True).format())
    assert "stored" in report  # the frame that read the file was captured
    assert _secret(folder) not in report


def test_a_checkpoint_others_can_read_is_refused(tmp_path):
    """A checkpoint file group- or world-readable (copied with a umask, restored from a backup) may have had its
    secret read: a run on it would release a model whose noise others know. Refused, kept."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder)
    (folder / CHECKPOINT).chmod(0o644)
    with pytest.raises(UnlearningRunError, match="permissions"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3)
    assert (folder / CHECKPOINT).exists()


def test_a_checkpoint_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    """A checkpoint planted by another user (a shared scratch folder) could carry a secret they chose, which a
    seed=None resume would take as its key: refused unless this user owns it."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder)
    from certun.backends import _checkpoint_file as files

    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)  # (the folder is refused as well: read the file alone)
    with pytest.raises(UnlearningRunError, match="owned by"):
        files.read(folder)


def test_two_processes_never_run_from_one_checkpoint_at_once(tmp_path):
    """A scheduler that relaunches a job while the old one still runs: the second run on the same folder is
    refused before any step (two releases continuing one checkpointed iterate; the first one's temporary
    file must not be swept away under it)."""
    fcntl = pytest.importorskip("fcntl")
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the other, running process holds
        seen = []
        with pytest.raises(InvalidParameterError, match="another process"):
            certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3,
                           callback=lambda t, x: seen.append(t))
        assert seen == [] and (folder / CHECKPOINT).exists()
    finally:
        os.close(fd)
    resumed = certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3)
    assert resumed.resumed_from == 6 and not folder.exists()


def test_a_resume_under_other_library_versions_is_refused(tmp_path, monkeypatch):
    """The certificate records the versions of one process; steps computed under another certun or numpy would
    make that record false for part of the run. A resume under other versions is refused, checkpoint kept."""
    from certun.certificates import provenance

    model, data = _data()
    folder = tmp_path / "ckpt"
    real = provenance.versions
    monkeypatch.setattr(provenance, "versions", lambda *p, **k: {**real(*p, **k), "certun": "0.0.1-old"})
    _interrupted(model, data, _gc(), folder, seed=11)
    monkeypatch.setattr(provenance, "versions", real)
    with pytest.raises(InvalidParameterError, match="versions"):
        certun.unlearn(model, data, _gc(), backend="numpy", seed=11, checkpoint_dir=folder, checkpoint_every=3)
    assert (folder / CHECKPOINT).exists()


@pytest.mark.parametrize("edit", ["done_past_T", "short_iterate", "nan_iterate", "values"])
def test_restored_state_is_checked_not_trusted(tmp_path, edit, monkeypatch):
    """A checkpoint whose state cannot be a step of this run (more steps than T, an iterate of another length or
    with NaN, step statistics that are not numbers) is refused before any step, even with a valid tag."""
    from certun.backends import _resume

    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder, seed=11)
    # re-tag after the edit with the run's own MAC key (the owner can: the secret is in the file)
    captured = {}
    real_begin = _resume.begin

    def spy(*args, **kwargs):
        key, resume = real_begin(*args, **kwargs)
        captured["mac"] = _resume._mac_key(key)
        return key, resume

    monkeypatch.setattr(_resume, "begin", spy)
    with pytest.raises(CrashError):  # learn the MAC key: resume and crash at once (checkpoint kept)
        certun.unlearn(model, data, _gc(), backend="numpy", seed=11, checkpoint_dir=folder, checkpoint_every=3,
                       callback=_crash_at(6))
    monkeypatch.setattr(_resume, "begin", real_begin)
    from certun.backends import _checkpoint_file as files

    stored = files.read(folder)
    header = {k: v for k, v in stored.header.items() if k != "blobs"}
    header["secret"] = stored.secret.hex()
    blobs = list(stored.blobs)
    if edit == "done_past_T":  # with the retain chain of 40 batches, as a forger would recompute it
        from certun.backends.run_key import RETAIN_PREFIX_START, chain_batch

        running = RETAIN_PREFIX_START
        for i in range(40):
            running = chain_batch(running, data[i % len(data)])
        header.update(done=40, running=running.hex())
    elif edit == "short_iterate":
        blobs[0] = blobs[0][:-8]
    elif edit == "nan_iterate":
        blobs[0] = np.full(len(blobs[0]) // 8, np.nan).tobytes()
    else:
        header["values"] = [["a", "b", "c"]] * header["done"]
    files.write(folder, header, blobs, captured["mac"])
    seen = []
    with pytest.raises(UnlearningRunError, match="checkpoint"):
        certun.unlearn(model, data, _gc(), backend="numpy", seed=11, checkpoint_dir=folder, checkpoint_every=3,
                       callback=lambda t, x: seen.append(t))
    assert seen == []


def test_a_resumed_certificate_says_when_its_first_step_ran(tmp_path, monkeypatch):
    """The certificate's started_at of a resumed run is when the run began (its first steps ran then), not when
    the resume began; finished_at is the resume's end."""
    from certun.certificates import provenance

    model, data = _data()
    folder = tmp_path / "ckpt"
    real = provenance.now_utc
    monkeypatch.setattr(provenance, "now_utc", lambda: "2020-01-02T03:04:05Z")
    _interrupted(model, data, _gc(), folder)
    monkeypatch.setattr(provenance, "now_utc", real)
    resumed = certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3)
    execution = resumed.certificate["execution"]
    assert execution["started_at"] == "2020-01-02T03:04:05Z"
    assert execution["finished_at"] > "2020-01-02T03:04:05Z"


def test_a_checkpoint_that_cannot_be_written_stops_the_run_with_a_typed_error(tmp_path):
    """The folder removed (or the disk full) mid-run: a clear UnlearningRunError naming the folder, no certificate,
    not a bare OSError from deep inside the run."""
    import shutil

    model, data = _data()
    folder = tmp_path / "ckpt"

    def remove_folder(t, x):
        if t == 4:
            shutil.rmtree(folder)

    with pytest.raises(UnlearningRunError, match="could not write the checkpoint"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3,
                       callback=remove_folder, certificate_path=tmp_path / "cert.json")
    assert not (tmp_path / "cert.json").exists()


def test_a_fifo_in_place_of_the_checkpoint_is_refused_without_hanging(tmp_path):
    """A named pipe planted as the checkpoint would block a plain open() until someone writes to it: refused at
    once as not a plain file. (The thread only keeps a regression from hanging the whole suite.)"""
    import threading

    model, data = _data()
    folder = tmp_path / "ckpt"
    folder.mkdir(mode=0o700)
    os.mkfifo(folder / CHECKPOINT, 0o600)
    outcome = []

    def run():
        try:
            certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3)
        except UnlearningRunError as e:
            outcome.append(str(e))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(120)
    if worker.is_alive():  # unblock the hung open, then fail
        os.close(os.open(folder / CHECKPOINT, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading the checkpoint blocked on a named pipe")
    assert outcome and "not a plain file" in outcome[0]


@pytest.mark.parametrize("mode", [0o1777, 0o755])
def test_a_folder_holding_other_files_is_refused_and_left_as_it_was(tmp_path, mode):
    """checkpoint_dir="/tmp", "." or a home folder by mistake: certun would make a shared folder private (as root,
    /tmp itself) and drop its secret among other files. A folder holding anything but certun's checkpoint is
    refused before any work, its permissions and files untouched."""
    model, data = _data()
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(mode)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(InvalidParameterError, match="checkpoint_dir"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3)
    assert oct(folder.stat().st_mode & 0o7777) == oct(mode)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_the_lock_is_let_go_even_while_a_forked_worker_lives(tmp_path):
    """DataLoader workers forked during the run inherit the folder's descriptor; the run's end (or crash) must still
    let the next run in, not leave the lock held until the workers exit."""
    import signal

    from certun.backends import _checkpoint_folder as folders

    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    folder, fd = folders.lock(str(tmp_path / "ckpt"))
    pid = os.fork()
    if pid == 0:  # the worker: holds its inherited copy of the descriptor until killed
        signal.pause()
        os._exit(0)
    try:
        folders.release(fd)
        _, again = folders.lock(str(folder))
        folders.release(again)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("folder", ["ckpt\x00x", b"ckpt"], ids=["nul_byte", "bytes"])
def test_a_checkpoint_dir_that_is_no_usable_path_gets_a_typed_error(tmp_path, folder):
    """A path with a NUL byte or given as bytes: InvalidParameterError naming checkpoint_dir, not a bare
    ValueError/TypeError from deep in the run."""
    model, data = _data()
    path = os.path.join(os.fsencode(tmp_path), folder) if isinstance(folder, bytes) else str(tmp_path / folder)
    with pytest.raises(InvalidParameterError, match="checkpoint_dir"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=path, checkpoint_every=3)


def test_a_resume_on_another_kind_of_device_is_refused(tmp_path, monkeypatch):
    """The certificate records one device; a run begun on a GPU and resumed on the CPU (or back) would have steps
    computed on a device the record does not name. Refused before any step, checkpoint kept."""
    import dataclasses

    from certun.backends.numpy_backend import _NumpyRun

    model, data = _data()
    folder = tmp_path / "ckpt"
    real = _NumpyRun.prepare
    monkeypatch.setattr(_NumpyRun, "prepare", lambda self: dataclasses.replace(real(self), device="cuda:0"))
    _interrupted(model, data, _gc(), folder, seed=11)
    monkeypatch.setattr(_NumpyRun, "prepare", real)
    with pytest.raises(InvalidParameterError, match="device"):
        certun.unlearn(model, data, _gc(), backend="numpy", seed=11, checkpoint_dir=folder, checkpoint_every=3)
    assert (folder / CHECKPOINT).exists()


def test_a_folder_in_place_of_a_temporary_file_gets_a_typed_error(tmp_path):
    """Something certun cannot sweep away where a crash leaves its temporary file (a folder of that name): a clear
    InvalidParameterError naming checkpoint_dir, not a bare IsADirectoryError."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    (folder / ".certun-checkpoint.bin.tmp-1").mkdir(parents=True)
    with pytest.raises(InvalidParameterError, match="checkpoint_dir"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3)


def test_a_failed_checkpoint_write_reported_with_locals_never_shows_the_key(tmp_path):
    """The write that fails (folder removed mid-run) is where the header with the secret is built: its report with
    local variables must not print the secret."""
    import shutil

    from certun.backends import noise
    from certun.certificates.provenance import resolve_seed

    model, data = _data()
    folder = tmp_path / "ckpt"

    def remove_folder(t, x):
        if t == 4:
            shutil.rmtree(folder)

    with pytest.raises(UnlearningRunError) as info:
        certun.unlearn(model, data, _gc(), backend="numpy", seed=11, checkpoint_dir=folder, checkpoint_every=3,
                       callback=remove_folder)
    report = "".join(traceback.TracebackException.from_exception(info.value, capture_locals=True).format())
    assert "could not write" in report
    assert noise.seed_secret(resolve_seed(11)).hex() not in report


def test_a_folder_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    """A folder another user owns (root given a user's folder, say) lets that user swap its files between two
    writes: refused before anything is written, even where chmod would succeed."""
    model, data = _data()
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid + 1)
    with pytest.raises(InvalidParameterError, match="owned by"):
        certun.unlearn(model, data, _gc(), backend="numpy", checkpoint_dir=folder, checkpoint_every=3)


def test_a_checkpoint_that_is_a_link_to_a_valid_one_is_refused(tmp_path):
    """The checkpoint replaced by a symbolic link (to a valid checkpoint moved elsewhere) is not followed.
    (Regression test: already refused; the open without following links must keep it so.)"""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder, seed=11)
    (folder / CHECKPOINT).rename(tmp_path / "elsewhere.bin")
    os.symlink(tmp_path / "elsewhere.bin", folder / CHECKPOINT)
    with pytest.raises(UnlearningRunError, match="not a plain file"):
        certun.unlearn(model, data, _gc(), backend="numpy", seed=11, checkpoint_dir=folder, checkpoint_every=3)


def test_nfs_leftovers_do_not_make_the_folder_foreign(tmp_path):
    """NFS keeps a deleted-but-open checkpoint as a .nfsXXXX file; that is certun's own leftover, not the user's
    files, and the resume goes on."""
    model, data = _data()
    folder = tmp_path / "ckpt"
    _interrupted(model, data, _gc(), folder, seed=11)
    (folder / ".nfs0000000000123456").write_bytes(b"old")
    resumed = certun.unlearn(model, data, _gc(), backend="numpy", seed=11, checkpoint_dir=folder, checkpoint_every=3)
    assert resumed.resumed_from == 6
