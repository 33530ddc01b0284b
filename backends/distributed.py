"""Issuing the certificate of a run spread over a ``torch.distributed`` process group (docs/distributed.md).

Rank 0 alone issues and writes it; every rank then learns whether it could, so a rank-0 failure
(an unwritable path, a record the issuer refuses) raises on every rank. Imports torch only when called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["issue_on_rank_zero"]


def issue_on_rank_zero(issue: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """Run ``issue`` (issue and write the certificate) on rank 0 only; other ranks get ``(None, None)``.

    Raises:
        UnlearningRunError: on every rank, when rank 0 could not issue (rank 0 raises its own error).
    """
    from certun.backends.torch._dist_comm import Comm

    comm, error, out = Comm(), None, (None, None)
    if comm.rank == 0:
        try:
            out = issue()
        except Exception as exc:
            error = exc
    comm.agree(error, "issuing the certificate")
    return out
