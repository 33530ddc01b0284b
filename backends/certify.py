"""From a finished run to a certificate: identifiers, commitments, the RunRecord, issue and write.

Shared by every backend so that they describe runs the same way. Nothing here touches torch.
Record identifiers default to dataset indices (``id_scheme="dataset-index"``): stable only as long as
the dataset's order is, which docs/certificates.md spells out. The seed enters the certificate only
as a salted commitment; the seed, its opening and the Merkle salt key go back to the caller.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certun.accountant.schedule import Schedule
from certun.certificates.record import ModelDigest, RunRecord
from certun.errors import InvalidParameterError

__all__ = ["Identifiers", "default_ids", "identifiers", "issue_and_write", "now_utc", "versions"]


def now_utc() -> str:
    """The current time as an RFC 3339 UTC timestamp with seconds (``2025-01-31T12:00:00Z``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of certun, python and the named packages (those installed)."""
    out = {"certun": _version("certun") or "unknown", "python": platform.python_version()}
    for name in packages:
        v = _version(name)
        if v is not None:
            out[name] = v
    return out


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def default_ids(data: Any) -> list[int] | None:
    """Dataset indices of a loader's records: ``Subset.indices`` if its dataset is a subset, else ``range``.

    Returns ``None`` when ``data`` exposes no sized ``dataset`` (then no retain root is recorded
    unless the caller passes ``retain_ids``).
    """
    dataset = getattr(data, "dataset", None)
    if dataset is None:
        return None
    indices = getattr(dataset, "indices", None)
    if indices is not None and hasattr(dataset, "dataset"):  # torch.utils.data.Subset
        return [int(i) for i in indices]
    try:
        return list(range(len(dataset)))
    except TypeError:
        return None


@dataclass(frozen=True)
class Identifiers:
    """Merkle roots and trees of the retain and forget sets, and how their identifiers were formed."""

    retain_tree: Any
    forget_tree: Any
    id_scheme: str | None

    @property
    def retain_root(self) -> str | None:
        """Hex root of the retain tree, if any."""
        return None if self.retain_tree is None else self.retain_tree.root

    @property
    def forget_root(self) -> str | None:
        """Hex root of the forget tree, if any."""
        return None if self.forget_tree is None else self.forget_tree.root


def _id_list(name: str, ids: Iterable[Any]) -> list[int | str]:
    out: list[int | str] = []
    for i in ids:
        if isinstance(i, str):
            out.append(i)
        elif hasattr(i, "__index__") and not isinstance(i, bool):
            out.append(int(i.__index__()))
        elif hasattr(i, "item") and not isinstance(i, bool):  # numpy / torch scalars
            out.append(int(i.item()))
        else:
            raise InvalidParameterError(name, i, "integers or strings (record identifiers)")
    return out


def identifiers(data: Any, retain_ids: Iterable[Any] | None, forget_ids: Iterable[Any] | None) -> Identifiers:
    """Build the salted Merkle trees (one fresh salt key for both) of the retain and forget identifiers.

    ``retain_ids`` defaults to the loader's dataset indices (:func:`default_ids`), and then
    ``id_scheme="dataset-index"`` covers the forget identifiers too: pass forget ids as indices into the
    same dataset. With explicit ``retain_ids`` the scheme is ``"user"``. A record that appears in both
    sets is refused: the forget set must be disjoint from the data the run touched.
    """
    from certun.certificates import merkle_tree

    if retain_ids is None:
        retain = default_ids(data)
        # forget ids are then taken to be indices of the same dataset (the caller's responsibility)
        scheme = "dataset-index" if retain is not None else ("user" if forget_ids is not None else None)
    else:
        retain = _id_list("retain_ids", retain_ids)
        scheme = "user"
    forget = None if forget_ids is None else _id_list("forget_ids", forget_ids)
    if retain is not None and forget is not None:
        overlap = set(retain) & set(forget)
        if overlap:
            example = sorted(overlap, key=str)[:5]
            raise InvalidParameterError("forget_ids", f"<{len(overlap)} ids also retained, e.g. {example}>",
                                        "disjoint from the retain identifiers")
    salt_key = secrets.token_bytes(32)
    return Identifiers(
        retain_tree=None if retain is None else merkle_tree(retain, salt_key=salt_key),
        forget_tree=None if forget is None else merkle_tree(forget, salt_key=salt_key),
        id_scheme=scheme,
    )


def make_record(**fields: Any) -> RunRecord:
    """A :class:`RunRecord` (thin wrapper so backends fill it by keyword in one place)."""
    return RunRecord(**fields)


def seed_commitment(seed: int) -> tuple[dict[str, str], dict[str, Any]]:
    """``(public commitment, private opening)`` of the noise seed (:func:`certun.certificates.seed_commitment`)."""
    from certun.certificates import seed_commitment as _commit

    return _commit(seed)


def digest(named: Mapping[str, Any]) -> ModelDigest:
    """:func:`certun.certificates.model_digest` of a name -> tensor mapping."""
    from certun.certificates import model_digest

    return model_digest(named)


def issue_and_write(schedule: Schedule, record: RunRecord, path: Path | None) -> tuple[dict[str, Any], Path | None]:
    """Issue the certificate for ``record`` under ``schedule``; write it atomically when ``path`` is given."""
    from certun.certificates import issue, write_certificate

    certificate = issue(schedule, record)
    written = None if path is None else Path(write_certificate(certificate, path))
    return certificate, written
