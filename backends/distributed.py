"""Issuing the certificate of a run spread over a ``torch.distributed`` process group (docs/distributed.md).

Rank 0 alone issues and writes it, in two agreed steps: the ranks first agree that every one of them
finished the run and that rank 0 could issue (nothing is on disk yet, so a rank lost or failed after
the run leaves no certificate behind); then rank 0 writes, and every rank learns whether it could, so
a rank-0 failure (an unwritable path) raises on every rank. Imports torch only when called.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from certun.errors import InvalidParameterError, UnlearningRunError

T = TypeVar("T")

__all__ = ["agreed", "issue_on_rank_zero", "private_to_rank_zero"]


def issue_on_rank_zero(issue: Callable[[], Any], write: Callable[[Any], Path | None]) -> tuple[Any, Path | None]:
    """``issue()`` then ``write(certificate)`` on rank 0 only; returns ``(certificate, path)`` there and
    ``(None, None)`` on the other ranks.

    Raises:
        UnlearningRunError: on every rank, when a rank failed or was lost before the certificate was issued,
            or rank 0 could not issue or write it (rank 0 raises its own error).
    """
    from certun.backends.torch._dist_comm import Comm

    comm, error, cert, path = Comm(), None, None, None
    if comm.rank == 0:
        try:
            cert = issue()
        except Exception as exc:
            error = exc
    comm.agree(error, "issuing the certificate")  # nothing written yet: a failure here leaves no file
    if comm.rank == 0:
        try:
            path = write(cert)
        except Exception as exc:
            error = exc
    try:
        comm.agree(error, "writing the certificate")
    except UnlearningRunError as exc:
        if comm.rank != 0 or error is not None:
            raise
        # every rank had agreed to the run; one lost now cannot make the written certificate false
        warnings.warn(f"the certificate was written, but a peer was lost afterwards ({exc})", RuntimeWarning,
                      stacklevel=2)
    return (cert, path) if comm.rank == 0 else (None, None)


def private_to_rank_zero(values: dict[str, Any]) -> dict[str, Any]:
    """The openings of the run's commitments kept on rank 0 only (they are ``None`` on the other ranks).

    Each rank salts its own commitments, so another rank's opening opens nothing in rank 0's certificate,
    while its key material regenerates the noise: it has no use there and would only spread the secret
    (to a rank's logs or saved results).
    """
    from certun.backends.torch._dist_comm import Comm

    if Comm().rank == 0:
        return values
    return {**values, "seed_opening": None, "model_before_opening": None}


def agreed(check: Callable[[], T], what: str) -> T:
    """``check()`` on every rank, then an agreement: a rank whose options are refused stops every rank at once
    with its error (instead of the others waiting for it in their first collective until the timeout).

    Raises:
        InvalidParameterError (and any error of ``check``): the error ``check`` raised on this rank.
        UnlearningRunError: on the other ranks, naming the rank that failed and its error.
    """
    from certun.backends.torch._dist_comm import Comm

    try:
        comm = Comm()
    except InvalidParameterError:  # no process group, nobody to agree with: the run itself refuses that
        return check()
    error = out = None
    try:
        out = check()
    except Exception as exc:
        error = exc
    comm.agree(error, what)
    return out
