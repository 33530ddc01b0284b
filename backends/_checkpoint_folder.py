"""The folder of a resumable run: created private, opened without following links, locked for one process.

The writing process holds an exclusive ``flock`` on the folder from before it reads the checkpoint
until the run ends (or crashes), so a second process given the same folder (a job relaunched while the
old one still runs) is refused before any step: two processes continuing one checkpointed iterate would
release two models from one noisy prefix, and each would sweep away the other's temporary file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from certun.backends._checkpoint_file import is_ours, sweep_temporary
from certun.errors import InvalidParameterError

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per folder is then the caller's to ensure
    fcntl = None  # type: ignore[assignment]

__all__ = ["lock", "release"]


def lock(folder: str) -> tuple[Path, int | None]:
    """Create ``folder`` if needed, make it private (``0o700``), lock it, drop temporary files a crash left.

    Returns the folder and the open descriptor that holds the lock (give it to :func:`release`).
    """
    path = Path(folder)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.name == "nt":  # folders cannot be opened there: no lock, the path checks of the options only
            _only_ours(os.listdir(path), folder)
            _sweep(path, folder)
            return path, None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:  # a link (O_NOFOLLOW), a file, or no permission
        raise InvalidParameterError("checkpoint_dir", folder, "a folder (not a file or a link) this process can "
                                    "create and write", hint=str(e)) from None
    try:
        _own(fd, folder)
        _sweep(path, folder)
    except BaseException:
        os.close(fd)
        raise
    return path, fd


def _own(fd: int, folder: str) -> None:
    """Check the opened folder, take the lock (refusing a folder another run holds), refuse a folder holding other
    files than certun's, and make it ``0o700``."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidParameterError("checkpoint_dir", folder, "a folder, not a file or a link")
        if st.st_uid != os.geteuid():  # its owner could swap the files in it between two writes
            raise InvalidParameterError("checkpoint_dir", folder, "a folder owned by this user",
                                        hint=f"it is owned by user {st.st_uid}; give a folder of your own")
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _only_ours(os.listdir(fd), folder)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o700)
    except BlockingIOError:
        raise InvalidParameterError(
            "checkpoint_dir", folder, "a folder no other process is running a checkpointed run in",
            hint="another process is running with this checkpoint_dir now; wait for it to end (or stop it) before "
            "resuming, and never run two processes on one checkpoint") from None
    except OSError as e:
        raise InvalidParameterError("checkpoint_dir", folder, "a folder this process owns and can write",
                                    hint=str(e)) from None


def _sweep(path: Path, folder: str) -> None:
    """Drop the temporary files a crash left; something that is not one (a folder of that name) is refused."""
    try:
        sweep_temporary(path)
    except OSError as e:
        raise InvalidParameterError("checkpoint_dir", folder, "a folder holding only certun's checkpoint files",
                                    hint=f"cannot remove what a crash left there: {e}") from None


def _only_ours(names: list[str], folder: str) -> None:
    """Refuse a folder holding other files than certun's: "/tmp", "." or a home folder given by mistake would be
    made private and get secret key material among the user's files."""
    others = sorted(name for name in names if not is_ours(name))
    if others:
        raise InvalidParameterError(
            "checkpoint_dir", folder, "a folder of this run's own: new, empty, or holding only its checkpoint",
            hint=f"it holds other files ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); certun "
            "would make it private and write secret key material into it. Give a new folder")


def release(fd: int | None) -> None:
    """Let go of the folder's lock: unlocked first, since a forked child (a DataLoader worker) sharing the
    descriptor would otherwise hold it until it exits."""
    if fd is None:
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
