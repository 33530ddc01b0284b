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

from certun.backends._checkpoint_file import sweep_temporary
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
            sweep_temporary(path)
            return path, None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:  # a link (O_NOFOLLOW), a file, or no permission
        raise InvalidParameterError("checkpoint_dir", folder, "a folder (not a file or a link) this process can "
                                    "create and write", hint=str(e)) from None
    try:
        _own(fd, folder)
        sweep_temporary(path)
    except BaseException:
        os.close(fd)
        raise
    return path, fd


def _own(fd: int, folder: str) -> None:
    """Check the opened folder, make it ``0o700`` and take the lock (refusing a folder another run holds)."""
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise InvalidParameterError("checkpoint_dir", folder, "a folder, not a file or a link")
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o700)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InvalidParameterError(
            "checkpoint_dir", folder, "a folder no other process is running a checkpointed run in",
            hint="another process is running with this checkpoint_dir now; wait for it to end (or stop it) before "
            "resuming, and never run two processes on one checkpoint") from None
    except OSError as e:
        raise InvalidParameterError("checkpoint_dir", folder, "a folder this process owns and can write",
                                    hint=str(e)) from None


def release(fd: int | None) -> None:
    """Let go of the folder's lock (closing the descriptor releases it)."""
    if fd is not None:
        os.close(fd)
