"""The checkpoints of a distributed run: one per rank, and the ranks' agreement on them before any step.

Rank ``r`` of ``W`` keeps its checkpoint in the subfolder ``rank<r>-of-<W>`` of ``checkpoint_dir``
(the single-process file, lock and permissions of :mod:`._resume`, one per rank). The layout works on
one shared folder and on a local folder per node alike: a rank reads and writes only its own subfolder,
and looks at its siblings only to notice a checkpoint of another world size.

On start, each rank reads its own checkpoint and sends a summary row (found or not, its refusal if
any, its step, a digest of its run binding and of its key, its running retain hash) to every rank;
every rank then reaches the same verdict from the same rows (:func:`verdict`): all resume, all
start afresh, or all raise the same error, before any noise is drawn. One rank resuming while another
starts afresh would pair one run's iterate with another run's noise (docs/theory.md#distributed-runs,
docs/distributed.md "Resume").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certun.backends import _checkpoint_file as files
from certun.backends import _checkpoint_folder as folders
from certun.backends import _resume
from certun.backends._options import RunOptions
from certun.backends.run_key import RunKey
from certun.certificates import provenance
from certun.errors import InvalidParameterError, UnlearningRunError

__all__ = ["Row", "begin", "subfolder", "verdict"]

_SUB = re.compile(r"rank(\d{1,6})-of-(\d{1,6})")
_VALID = "a folder holding no checkpoint, or the checkpoints of this same run at one step on every rank"
_AGAIN = ("nothing was run and every checkpoint was left as it was; resume with the same world size, layout and "
          "inputs, or delete the whole folder (it holds secret key material) to start afresh")


def subfolder(root: Path, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` keeps its checkpoint."""
    return root / f"rank{rank}-of-{world}"


@dataclass(frozen=True)
class Row:
    """What one rank tells the others about its checkpoint (no secret: digests only)."""

    found: bool = False
    #: ``(error type, message)`` when this rank's checkpoint (or folder) is refused
    problem: tuple[str, str] | None = None
    #: the world sizes of checkpoints this rank sees besides its own
    others: tuple[int, ...] = ()
    done: int | None = None
    binding: str | None = None
    key: str | None = None
    running: str | None = None
    draws: int | None = None
    #: this rank's ``checkpoint_every``: the ranks write together (a collective), so at the same steps
    every: int | None = None


def verdict(rows: Sequence[Row], world: int, root: str) -> bool:
    """Whether the ranks resume (``True``) or all start afresh (``False``); raises the same error on every rank
    (each computes it from the same rows) when they cannot agree."""
    for rank, row in enumerate(rows):
        if row.problem is not None:
            kind, message = row.problem
            if kind == "InvalidParameterError":
                raise InvalidParameterError("checkpoint_dir", root, _VALID, hint=f"rank {rank}: {message}")
            raise UnlearningRunError(f"distributed run: rank {rank} cannot use its checkpoint in {root}: {message}")
    every = {rank: row.every for rank, row in enumerate(rows)}
    if len(set(every.values())) > 1:
        raise InvalidParameterError("checkpoint_every", every, "the same on every rank", hint=(
            "the ranks write their checkpoints together, so at the same steps; nothing was run"))
    others = sorted({w for row in rows for w in row.others})
    if others:
        raise InvalidParameterError("checkpoint_dir", root, _VALID, hint=(
            f"it holds the checkpoints of a run over {' or '.join(map(str, others))} ranks, and this run has {world}; "
            f"{_AGAIN}"))
    found = [rank for rank, row in enumerate(rows) if row.found]
    if not found:
        return False
    missing = [rank for rank, row in enumerate(rows) if not row.found]
    if missing:
        raise InvalidParameterError("checkpoint_dir", root, _VALID, hint=(
            f"ranks {found} found a checkpoint and ranks {missing} none (a folder lost or not passed on their "
            f"node); resuming some ranks and starting others afresh would mix two runs' noise; {_AGAIN}"))
    steps = {rank: row.done for rank, row in enumerate(rows)}
    if len(set(steps.values())) > 1:
        raise InvalidParameterError("checkpoint_dir", root, _VALID, hint=(
            f"the ranks' checkpoints are of different steps ({steps}: a crash while they were written, or a "
            f"file copied from elsewhere); {_AGAIN}"))
    shared = {(row.binding, row.key, row.running, row.draws) for row in rows}
    if len(shared) > 1:
        raise InvalidParameterError("checkpoint_dir", root, _VALID, hint=(
            f"the ranks' checkpoints belong to different runs (another key, inputs or data prefix); {_AGAIN}"))
    return True


def begin(opts: RunOptions, seed: Any, context: bytes, previous: Mapping[str, Any] | None, *, rank: int,
          world: int, layout: str, gather: Callable[[Any, str], list[Any]],
          agree: Callable[[BaseException | None, str], None], new_key: Callable[[Any, bytes], RunKey],
          versions: Mapping[str, str], device: str) -> tuple[RunKey, _resume.Resume | None]:
    """The run key and this rank's checkpoints, once every rank agrees to resume (or all start afresh).

    ``gather`` and ``agree`` are the process group's collectives; ``new_key`` (collective too) makes the
    key of a run that starts afresh. A refusal keeps every checkpoint and releases this rank's lock.
    """
    given = gather(opts.checkpoint_dir is not None, "comparing whether checkpoint_dir is given")
    if len(set(given)) > 1:  # the ranks would enter different collectives next
        raise InvalidParameterError("checkpoint_dir", {r: "a folder" if g else None for r, g in enumerate(given)},
                                    "given on every rank or on none", hint="nothing was run")
    if opts.checkpoint_dir is None:
        return new_key(seed, context), None
    root = Path(opts.checkpoint_dir)
    # the rank is bound too (each rank's master shard and dropout state are its own): a file renamed or copied to
    # another rank's subfolder is refused, its digest left out of what the ranks compare
    bound = {**_resume.binding(context, opts, seed, previous, versions, device),
             "layout": _digest({"layout": layout, "world_size": world}), "rank": _digest({"rank": rank})}
    resume, fd, row = _read_own(opts, seed, context, bound, root, rank, world)
    try:
        rows = gather(row, "comparing the checkpoints")
        if verdict(rows, world, str(root)):
            key = resume.key
        else:
            key = new_key(seed, context)
            resume = _resume.Resume(resume.folder, opts.checkpoint_every, key, bound)
    except BaseException:
        folders.release(fd)
        if resume is not None and resume.saved is None:  # no checkpoint here: leave no empty folder behind
            _remove_empty(resume.folder, root)
        raise
    resume.lock, resume.root, resume.agree = fd, root, agree
    return key, resume


def _read_own(opts: RunOptions, seed: Any, context: bytes, bound: dict[str, str], root: Path, rank: int,
              world: int) -> tuple[Any, int | None, Row]:
    """This rank's checkpoint read back (or its refusal, as a row: never raised before the ranks have agreed)."""
    fd = None
    try:
        others = _check_root(root, world)
        folder, fd = folders.lock(str(subfolder(root, rank, world)))
        _, resume = _resume._read_back(opts, seed, context, bound, folder, True, lambda *_: None)
        if resume.saved is None:
            return resume, fd, Row(others=others, every=opts.checkpoint_every)
        resume.began(provenance.now_utc())
        saved = resume.saved
        shared = {name: value for name, value in bound.items() if name != "rank"}
        return resume, fd, Row(found=True, others=others, done=saved.get("done"), binding=_digest(shared),
                               key=hashlib.sha256(b"certun.rank-agreement" + resume.key.secret).hexdigest(),
                               running=saved.get("running"), draws=saved.get("draws"), every=opts.checkpoint_every)
    except Exception as exc:  # told to every rank first: a rank raising alone would leave the others waiting
        folders.release(fd)
        return None, None, Row(problem=(type(exc).__name__, str(exc)))


def _check_root(root: Path, world: int) -> tuple[int, ...]:
    """Create ``root`` (``0o700``) if needed; the world sizes of the checkpoints in it besides ``world``.

    Refuses a link or a file, a single-process checkpoint, and anything else that is not a rank's subfolder.
    """
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        is_dir = stat.S_ISDIR(os.lstat(root).st_mode)
        names = os.listdir(root) if is_dir else []
    except OSError as e:
        raise InvalidParameterError("checkpoint_dir", str(root), "a folder this process can create and read",
                                    hint=str(e)) from None
    if not is_dir:
        raise InvalidParameterError("checkpoint_dir", str(root), "a folder, not a file or a link")
    others, foreign = set(), []
    for name in names:
        match = _SUB.fullmatch(name)
        if match is None:
            foreign.append(name)
        elif int(match[2]) != world and os.path.lexists(root / name / files.NAME):
            others.add(int(match[2]))
    if files.NAME in foreign:
        raise InvalidParameterError("checkpoint_dir", str(root), "the folder of a distributed run's checkpoints",
                                    hint="it holds the checkpoint of a single-process run; resume that run in one "
                                    "process, or delete it")
    if foreign:
        raise InvalidParameterError("checkpoint_dir", str(root), "a folder of this run's own: new, empty, or "
                                    "holding only its ranks' subfolders",
                                    hint=f"it holds other files ({', '.join(sorted(foreign)[:3])}); give a new folder")
    return tuple(sorted(others))


def _remove_empty(*paths: Path) -> None:
    for path in paths:
        try:
            path.rmdir()
        except OSError:  # not empty (a checkpoint, another rank's subfolder) or already gone
            return


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
