"""Resumable runs: a checkpoint of the noisy phase every ``k`` steps, bound to its run, deleted at the end.

A checkpoint holds what the next step depends on and nothing else: the number of steps done, the
float64 master iterate, the running retain hash (:func:`~certun.backends.run_key.chain_batch`), the
run's secret key, the backend's auxiliary RNG state (dropout), the noise source's position, and the
per-step statistics so far. A run given the same ``checkpoint_dir`` and the same inputs picks it up,
re-reads (and re-hashes) the retain batches the checkpointed steps consumed, and goes on from there,
so it ends bit-identical to a run never interrupted (docs/theory.md#floating-point-and-randomness).

A checkpoint is bound to its run: the header holds a digest of each run input (the key's context,
the fine-tuning and noise options, the previous certificate, the kind of seed) and a resume with any
other is refused before any step; the file's tag is an HMAC under a key derived from the run key, so
a file made for other inputs never passes. Since the owner can re-tag an edited file, the restored
state is also checked against the run (step count, iterate length, finite numbers). The writing
process holds the folder's lock (:mod:`._checkpoint_folder`) for the whole run, so no two processes
continue one checkpoint at once. The checkpoint is deleted when the run ends, by success
or by a failure certun raises; after a crash (a killed process, an exception from the caller's
callback) it is left for the resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from certun.backends import _checkpoint_file as files
from certun.backends import _checkpoint_folder as folders
from certun.backends import noise
from certun.backends._options import RunOptions
from certun.backends.run_key import RETAIN_PREFIX_START, RunKey, chain_batch, run_key
from certun.errors import CertunError, InvalidParameterError, UnlearningRunError

__all__ = ["Resume", "begin", "owned"]

_MAC_DOMAIN = b"certun.checkpoint.v1"
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
#: what each bound input is called in a refusal
_NAMES = {"model_before": "starting model", "center": "centre", "retain": "retain identifiers",
          "forget": "forget identifiers", "options": "clip/postprocess/noise/loss/model options",
          "unlearned_parameters": "unlearned parameters", "run_options": "fine-tuning or noise options",
          "previous": "previous certificate", "seed": "kind of seed (OS key, integer seed, opening)",
          "versions": "library versions (certun, python, backend packages; the certificate records one set)",
          "device": "kind of device (the certificate records one)",
          "layout": "distributed layout or world size",
          "rank": "rank (each rank resumes only the checkpoint it wrote itself; never rename or copy one)"}


@dataclass(repr=False)
class Resume:
    """The checkpoints of one run: where they go, how often, what binds them, and the state read back.

    Its repr names the folder and the step only: the state read back holds the run's secret and an
    iterate no certificate covers, and a crash report with local variables must print neither.
    """

    folder: Path
    every: int
    key: RunKey
    binding: dict[str, str]
    saved: dict[str, Any] | None = None
    blobs: list[bytes] = field(default_factory=list)
    values: list[tuple[float, float, float]] = field(default_factory=list)
    converted: int = 0
    keep: bool = False
    #: this process writes and deletes the checkpoints (every process reads them)
    writer: bool = True
    #: when the run began (the checkpointed run's time, for a resumed run): the certificate's started_at
    started_at: str | None = None
    #: the open folder that holds the writer's lock until the run ends (:mod:`._checkpoint_folder`)
    lock: int | None = None
    #: a distributed run: the folder above this rank's own (removed once empty), and the agreement of the
    #: ranks, so that a restore or a write that fails on one rank stops every rank (:mod:`._rank_checkpoints`)
    root: Path | None = None
    agree: Callable[[BaseException | None, str], None] | None = None

    def __repr__(self) -> str:
        return f"Resume(folder={str(self.folder)!r}, every={self.every}, resumed_from={self.resumed_from})"

    @property
    def resumed_from(self) -> int | None:
        """The noisy steps the checkpoint had done (``None``: the run started afresh)."""
        return None if self.saved is None else int(self.saved["done"])

    def restore(self, hooks: Any, noise_source: Any, batches: Iterator[Any], x: Any,
                T: int) -> tuple[int, bytes, Any, list]:
        """``(steps done, running retain hash, master, wall times)`` to go on from; re-reads the consumed batches.

        Refuses (keeping the checkpoint) a state no step of this run leaves, and re-read batches that do not
        hash to the checkpoint's chain: the retain data or its order is not what the checkpointed steps read.
        """
        if self.saved is None:
            return 0, RETAIN_PREFIX_START, x, []
        self.keep = True  # a refusal here keeps the checkpoint: the caller can fix the inputs and resume
        self._agreed(lambda: _check_state(self.saved, self.blobs, len(hooks.to_host(x)), T, self.folder),
                     "checking the restored state")
        done, running = int(self.saved["done"]), RETAIN_PREFIX_START
        for _ in range(done):
            running = chain_batch(running, next(batches)[1])
        if not hmac.compare_digest(running, bytes.fromhex(self.saved["running"])):
            raise UnlearningRunError(
                f"the retain data read again up to step {done} is not what the checkpointed run read (other batches "
                f"or another order); the checkpoint in {self.folder} was left as it was and nothing was run. Resume "
                "with the same data in the same order (a deterministic loader), or delete the checkpoint")
        x_blob, first_blob, rng_blob = self.blobs
        noise_source.count = int(self.saved["draws"])
        if first_blob:
            noise_source.first = hooks.from_host(_array(first_blob))
        self._agreed(lambda: hooks.set_rng_state(rng_blob), "restoring the dropout state")
        self.values, self.converted, self.keep = [tuple(v) for v in self.saved["values"]], done, False
        return done, running, hooks.from_host(_array(x_blob)), list(self.saved["times"])

    def _agreed(self, work: Callable[[], Any], what: str) -> None:
        """``work()``; in a distributed run every rank then learns whether it failed on any rank, and all raise."""
        error = None
        try:
            work()
        except Exception as exc:
            if self.agree is None:
                raise
            error = exc
        if self.agree is not None:
            self.agree(error, what)

    def began(self, now: str) -> str:
        """When the run began: the checkpoint's time for a resumed run (its first steps ran then), else ``now``.

        Checked once: a distributed rank asks first when it reads its checkpoint, before the ranks agree; asking
        again later could raise on that rank alone, outside any agreement.
        """
        if self.started_at is not None:
            return self.started_at
        stored = None if self.saved is None else self.saved.get("started_at")
        if stored is not None and not (isinstance(stored, str) and _TIMESTAMP.fullmatch(stored) and stored <= now):
            self.keep = True
            raise UnlearningRunError(f"the checkpoint in {self.folder} holds no valid start time; nothing was run. "
                                     "Delete it")
        self.started_at = stored or now
        return self.started_at

    def due(self, done: int) -> bool:
        """Whether a checkpoint is written after ``done`` noisy steps."""
        return done % self.every == 0

    def save(self, done: int, hooks: Any, x: Any, running: bytes, stats: list, times: list,
             noise_source: Any) -> None:
        """Write the checkpoint after ``done`` steps (the statistics of ``stats`` up to there are finite).

        Every rank first writes its new file beside its current one, then, once all did, puts it in place: a
        rank failing to write (a full disk) leaves every rank on the previous checkpoint, resumable together.
        """
        self.values.extend(hooks.values(stats[self.converted:done]))
        self.converted, first = done, noise_source.first
        if not self.writer:
            return
        staged: list[Path] = []

        def stage() -> None:
            blobs = [_bytes(hooks.to_host(x)), b"" if first is None else _bytes(hooks.to_host(first)),
                     bytes(hooks.rng_state())]
            staged.append(self._refusing(done, lambda: self._stage(done, running, blobs, times, noise_source.count)))

        try:  # a failure keeps every rank's checkpoint: they all resume from the last one written everywhere
            self._agreed(stage, f"writing the checkpoints of step {done}")
            self._agreed(lambda: self._refusing(done, lambda: files.commit(self.folder, staged[0])),
                         f"putting the checkpoints of step {done} in place")
        except BaseException as exc:
            for path in staged:
                path.unlink(missing_ok=True)
            if isinstance(exc, CertunError):
                self.keep = True
            raise

    def _refusing(self, done: int, work: Callable[[], Any]) -> Any:
        """``work()``, its ``OSError`` (the folder gone, the disk full) told as certun's refusal."""
        try:
            return work()
        except OSError as e:  # the last checkpoint written (if any) stays
            raise UnlearningRunError(f"could not write the checkpoint of step {done} in {self.folder} ({e}); the run "
                                     "stopped and nothing was issued. Free the folder and run again to resume from "
                                     "the last checkpoint written") from None

    def _stage(self, done: int, running: bytes, blobs: list[bytes], times: list, draws: int) -> Path:
        """Build the header (it holds the secret: only this frame, which a failure leaves behind, sees it) and
        write the new file beside the current one."""
        header = {"format": "certun.checkpoint", "done": done, "running": running.hex(),
                  "secret": self.key.secret.hex(), "origin": self.key.origin, "started_at": self.started_at,
                  "binding": self.binding, "draws": draws, "values": [list(v) for v in self.values],
                  "times": list(times)}
        return files.stage(self.folder, header, blobs, _mac_key(self.key))

    def all_values(self, hooks: Any, stats: list) -> list[tuple[float, float, float]]:
        """The statistics of every step as floats: those read back or saved, then the rest."""
        return self.values + hooks.values(stats[self.converted:])

    def close(self) -> None:
        """Delete the checkpoint (and the folder when empty), unless a refusal left another state to resume."""
        if self.writer and not self.keep:
            files.remove(self.folder)
            if self.root is not None:
                with contextlib.suppress(OSError):  # the other ranks' subfolders (a shared folder) are still there
                    self.root.rmdir()

    def release(self) -> None:
        """Let another process use the folder (after :meth:`close`, or after a crash that keeps the checkpoint)."""
        folders.release(self.lock)
        self.lock = None


def _check_state(saved: Mapping[str, Any], blobs: list[bytes], d: int, T: int, folder: Path) -> None:
    """Refuse a restored state that no step of this run leaves behind: a step count outside ``1..T``, an iterate
    (or σ0 draw) of another length or not finite, statistics or times that are not one finite triple (one time)
    per step. The tag already ties the file to the run's key; this keeps a file its owner edited from
    turning into a certificate of steps that never ran (docs/theory.md#soundness-rules)."""
    done, draws, values, times = saved.get("done"), saved.get("draws"), saved.get("values"), saved.get("times")
    x_blob, first_blob, _ = blobs

    def finite_floats(blob: bytes) -> bool:
        return len(blob) == 8 * d and bool(np.isfinite(_array(blob)).all())

    def numbers(row: Any, n: int) -> bool:
        return (isinstance(row, list) and len(row) == n and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in row))

    ok = (isinstance(done, int) and not isinstance(done, bool) and 1 <= done <= T
          and isinstance(draws, int) and not isinstance(draws, bool) and draws in (done, done + 1)
          and finite_floats(x_blob) and (first_blob == b"" or finite_floats(first_blob))
          and isinstance(values, list) and len(values) == done and all(numbers(v, 3) for v in values)
          and numbers(times, done))
    if not ok:
        raise UnlearningRunError(f"the checkpoint in {folder} holds a state no step of this run leaves behind (a "
                                 f"step count outside 1..{T}, an iterate not of {d} finite numbers, or statistics "
                                 "that are not one finite triple per step); nothing was run. Delete it")


def _array(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f8").astype(np.float64)


def _bytes(a: Any) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


def _mac_key(key: RunKey) -> bytes:
    return noise.derive_key(key.key, _MAC_DOMAIN)


def binding(context: bytes, opts: RunOptions, seed: Any, previous: Mapping[str, Any] | None,
            versions: Mapping[str, str] | None = None, device: str | None = None) -> dict[str, str]:
    """A digest of each run input: the key context's entries, the options it leaves out, the seed's kind, the
    library versions and the kind of device (the certificate records the finishing process's: every step must
    have run under them)."""
    parts: dict[str, Any] = json.loads(context)
    parts["run_options"] = {"finetune_epochs": opts.finetune_epochs, "finetune_lr": opts.finetune_lr,
                            "noise": opts.recorded_noise_mode, "noise_mode": opts.noise_mode}
    parts["previous"] = None if previous is None else previous.get("content_digest")  # checked on load
    parts["versions"] = dict(versions or {})
    parts["device"] = None if device is None else device.split(":")[0]  # cuda:0 and cuda:1 compute alike
    parts["seed"] = "os" if seed is None else "opening" if isinstance(seed, Mapping) else "user_seed"
    return {name: hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
            for name, value in parts.items()}


def begin(opts: RunOptions, seed: Any, context: bytes, previous: Mapping[str, Any] | None, *,
          writer: bool = True, versions: Mapping[str, str] | None = None, device: str | None = None,
          new_key: Callable[[Any, bytes], RunKey] = run_key) -> tuple[RunKey, Resume | None]:
    """The run key, and the run's checkpoints (``None`` without ``checkpoint_dir``), read back if there is one.

    A checkpoint of another run (other inputs, another seed, a modified file) is refused here, before any step,
    and left where it is. ``writer=False``: this process only reads (a distributed run keeps one checkpoint per
    rank instead: :mod:`._rank_checkpoints`).
    ``new_key`` makes the key of a run that does not resume (a distributed run shares rank 0's secret).
    """
    if opts.checkpoint_dir is None:
        return new_key(seed, context), None
    folder, fd = folders.lock(opts.checkpoint_dir) if writer else (Path(opts.checkpoint_dir), None)
    try:
        key, resume = _read_back(opts, seed, context, binding(context, opts, seed, previous, versions, device), folder,
                                 writer, new_key)
    except BaseException:
        folders.release(fd)
        raise
    if resume is not None:
        resume.lock = fd
    return key, resume


def _read_back(opts: RunOptions, seed: Any, context: bytes, bound: dict[str, str], folder: Path,
               writer: bool, new_key: Callable[[Any, bytes], RunKey]) -> tuple[RunKey, Resume]:
    """The run key and its checkpoints, read back from ``folder`` when it holds one of this run (else refused)."""
    stored = files.read(folder)
    if stored is None:
        key = new_key(seed, context)
        return key, Resume(folder, opts.checkpoint_every, key, bound, writer=writer)
    header = stored.header
    theirs = header.get("binding") if isinstance(header.get("binding"), dict) else {}
    differ = sorted(_NAMES.get(name, name) for name in bound.keys() | theirs.keys()
                    if bound.get(name) != theirs.get(name))
    if differ:
        raise InvalidParameterError(
            "checkpoint_dir", str(folder), "a folder without a checkpoint, or holding the checkpoint of this same run",
            hint=f"its checkpoint was made by a run with another {', '.join(differ)}; resume with the same inputs, "
            "or delete the checkpoint (it holds secret key material) to start afresh")
    key = _stored_key(seed, context, stored.secret, folder)
    files.check_tag(folder, stored, _mac_key(key))
    if len(stored.blobs) != 3 or not isinstance(header.get("done"), int):
        raise UnlearningRunError(f"the checkpoint in {folder} is not one this version of certun wrote; delete it")
    return key, Resume(folder, opts.checkpoint_every, key, bound, saved=header, blobs=stored.blobs,
                       writer=writer)


def _stored_key(seed: Any, context: bytes, secret: bytes, folder: Path) -> RunKey:
    """The run key of the checkpointed run: its stored OS secret, or the caller's seed if it gives the same secret."""
    if len(secret) < 16:
        raise UnlearningRunError(f"the checkpoint in {folder} holds no readable key; delete it")
    if seed is None:
        return RunKey(secret=secret, origin="os", key=noise.derive_key(secret, context))
    key = run_key(seed, context)
    if not hmac.compare_digest(key.secret, secret):
        raise InvalidParameterError("seed", "<seed>", f"the seed of the run that wrote the checkpoint in {folder}",
                                    hint="this checkpoint belongs to another run; delete it to start afresh")
    return key


@contextlib.contextmanager
def owned(resume: Resume | None) -> Iterator[None]:
    """Delete the run's checkpoint when the body ends or certun stops the run; keep it on any other exception
    (a crash, an interrupt, the caller's callback raising, a distributed run's peer lost): that is what a
    resume picks up."""
    if resume is None:
        yield
        return
    try:
        yield
    except CertunError as exc:
        if getattr(exc, "peer_lost", False):  # a distributed run whose peer crashed: the ranks resume together
            resume.keep = True
        resume.close()
        raise
    else:
        resume.close()
    finally:
        resume.release()
