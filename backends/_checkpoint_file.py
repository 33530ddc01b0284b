"""The checkpoint file of a resumable run: a private folder, one file written atomically, checked when read.

The file is, in order: a magic line, a warning line (what the file is and that it must be deleted),
one line of JSON (the header), the binary blobs the header sizes, the SHA-256 of all of that (a torn
or corrupted file is refused) and an HMAC-SHA256 tag under a key derived from the run key
(:mod:`certun.backends._resume` checks it once it knows the run's inputs). The folder is made
``0o700`` (:mod:`._checkpoint_folder`) and the file ``0o600``, and a file is read only if it is a plain
file of this user's that nobody else can read; a write goes to a temporary file that is synced and renamed over
the old one, so a crash leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certun._validation import integer
from certun.errors import InvalidParameterError, UnlearningRunError

__all__ = ["NAME", "Stored", "check_options", "commit", "is_ours", "read", "remove", "stage", "sweep_temporary",
           "write"]

NAME = "certun-checkpoint.bin"
MAGIC = b"CERTUN-CHECKPOINT v1\n"
WARNING = (b"# certun: an intermediate iterate of an unlearning run, not covered by any certificate; contains "
           b"secret key material (the run's noise key) - delete it once the run is over, never share it\n")
_TMP = "." + NAME + ".tmp-"
_DIGEST = 32


@dataclass(frozen=True, repr=False)
class Stored:
    """A checkpoint file read back: its header, its blobs, and what its tag covers (never printed: it holds the
    run's secret)."""

    header: dict[str, Any]
    blobs: list[bytes]
    body: bytes
    tag: bytes
    #: the run's secret, taken out of the header so that the header can be kept and shown
    secret: bytes = b""

    def __repr__(self) -> str:
        return f"Stored(<checkpoint of {self.header.get('done')} steps>)"


def check_options(folder: Any, every: Any) -> tuple[str | None, int | None]:
    """``(checkpoint_dir, checkpoint_every)`` checked before any work: both or neither, a folder (or a path
    to create) that is not a link or a file, and a period of at least one step."""
    if folder is None:
        if every is not None:
            raise InvalidParameterError("checkpoint_every", every, "None without a checkpoint_dir",
                                        hint="pass checkpoint_dir= too, a private folder for this run")
        return None, None
    try:
        text = os.fspath(folder)
    except TypeError:
        raise InvalidParameterError("checkpoint_dir", type(folder).__name__, "a folder path or None") from None
    if not isinstance(text, str) or "\x00" in text:
        raise InvalidParameterError("checkpoint_dir", repr(text), "a folder path as text (str or a pathlib.Path), "
                                    "without NUL characters")
    path = os.path.abspath(text)
    if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
        raise InvalidParameterError("checkpoint_dir", path, "a folder (or a path to create), not a file or a link")
    if every is None:
        raise InvalidParameterError("checkpoint_every", every, "an integer >= 1 (noisy steps between checkpoints) "
                                    "when checkpoint_dir is given")
    return path, integer("checkpoint_every", every, "an integer >= 1 (noisy steps between checkpoints)", low=1)


def is_ours(name: str) -> bool:
    """Whether a file name in a checkpoint folder is one certun leaves there: the checkpoint, a temporary, or the
    ``.nfs*`` file NFS keeps of a checkpoint deleted while still open."""
    return name == NAME or name.startswith((_TMP, ".nfs"))


def sweep_temporary(folder: Path) -> None:
    """Delete the temporary files a crash left in ``folder`` (the caller holds the folder's lock)."""
    for stale in folder.glob(_TMP + "*"):
        stale.unlink(missing_ok=True)


def write(folder: Path, header: dict[str, Any], blobs: list[bytes], mac_key: bytes) -> None:
    """Write the checkpoint atomically: temporary file (``0o600``), fsync, rename, fsync of the folder."""
    commit(folder, stage(folder, header, blobs, mac_key))


def stage(folder: Path, header: dict[str, Any], blobs: list[bytes], mac_key: bytes) -> Path:
    """The new checkpoint written and synced to a temporary file beside the current one (which stays in force
    until :func:`commit`); its path. A failure removes it."""
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}, sort_keys=True, separators=(",", ":"))
    body = b"".join([MAGIC, WARNING, head.encode("ascii"), b"\n", *blobs])
    body += hashlib.sha256(body).digest()
    data = body + hmac.new(mac_key, body, hashlib.sha256).digest()
    tmp = folder / f"{_TMP}{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def commit(folder: Path, tmp: Path) -> None:
    """Put the staged file ``tmp`` in place of the checkpoint (one atomic rename), then sync the folder."""
    try:
        os.replace(tmp, folder / NAME)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders (Windows): the rename is what it offers
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(folder: Path) -> Stored | None:
    """The checkpoint in ``folder`` (``None`` if there is none), refused if it is torn, corrupt or not one.

    The parsing runs in a frame of its own that a refusal leaves behind (``from None``), so a crash report
    with local variables never prints the file's bytes (they hold the secret).
    """
    path = folder / NAME
    if not os.path.lexists(path):
        return None
    try:
        return _parse(path)
    except _RefusedError as e:
        raise _corrupt(path, str(e)) from None


def _check_private(st: os.stat_result) -> None:
    """Refuse a file that is not a plain file of this user's that only this user can read or write: someone
    else could have read its secret, or planted a secret of their own choosing (docs/backends.md)."""
    if not stat.S_ISREG(st.st_mode):
        raise _RefusedError("it is not a plain file")
    if os.name == "nt":  # no POSIX owner or mode bits to check
        return
    if st.st_uid != os.geteuid():
        raise _RefusedError(f"it is owned by user {st.st_uid}, not by this user: another user could have chosen "
                            "its secret")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise _RefusedError(f"its permissions are {stat.S_IMODE(st.st_mode):o}, not 600: its secret may have been "
                            "read by others, and a run on it would release a model whose noise they know")


class _RefusedError(Exception):
    """Why a checkpoint file cannot be used (turned into an UnlearningRunError by :func:`read`)."""


def _parse(path: Path) -> Stored:
    if not stat.S_ISREG(os.lstat(path).st_mode):  # a link, a folder, a named pipe (whose open would block)
        raise _RefusedError("it is not a plain file")
    try:  # non-blocking and not following links: the path may have changed since the check above
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        raise _RefusedError("it is not a plain file this process can read") from None
    with os.fdopen(fd, "rb") as f:
        _check_private(os.fstat(f.fileno()))
        data = f.read()
    body, tag = data[:-_DIGEST], data[-_DIGEST:]
    if len(data) < len(MAGIC) + 2 * _DIGEST or not data.startswith(MAGIC + WARNING):
        raise _RefusedError("it does not start as a certun checkpoint")
    if not hmac.compare_digest(hashlib.sha256(body[:-_DIGEST]).digest(), body[-_DIGEST:]):
        raise _RefusedError("its checksum does not match (a torn or modified file)")
    start = len(MAGIC) + len(WARNING)
    end = body.find(b"\n", start)
    try:
        header = json.loads(body[start:end].decode("ascii"))
        sizes = [int(n) for n in header["blobs"]]
        secret = bytes.fromhex(header.pop("secret"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _RefusedError("its header is unreadable") from None
    blobs, at = [], end + 1
    for n in sizes:
        blobs.append(body[at:at + n])
        at += n
    if at != len(body) - _DIGEST or min(sizes, default=0) < 0:
        raise _RefusedError("its sizes do not add up")
    return Stored(header=header, blobs=blobs, body=body, tag=tag, secret=secret)


def check_tag(folder: Path, stored: Stored, mac_key: bytes) -> None:
    """Refuse a checkpoint whose tag is not the run key's over its content (modified, or made for other inputs)."""
    if not hmac.compare_digest(hmac.new(mac_key, stored.body, hashlib.sha256).digest(), stored.tag):
        raise _corrupt(folder / NAME, "its integrity tag does not match this run's key (a modified file)")


def _corrupt(path: Path, why: str) -> UnlearningRunError:
    return UnlearningRunError(f"the checkpoint {path} cannot be used: {why}. Nothing was run; delete it (it holds "
                              "secret key material) to start the run afresh")


def remove(folder: Path) -> None:
    """Delete the checkpoint and any temporary file; then the folder, if nothing else is in it."""
    for path in [folder / NAME, *folder.glob(_TMP + "*")]:
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # the user's own files are there: keep them (and the folder)
        pass
