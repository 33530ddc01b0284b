"""Provenance shared by backends and certificates: timestamps, versions, digests, identifiers, commitments,
seeds and the noise key's context.

The one place for the rules both sides apply to a run: backends describe their runs with it (and take
nothing else from :mod:`certun.certificates` but the :class:`RunRecord` and :class:`ModelDigest` types,
``canonical_bytes`` and the public noise checks), and :func:`certun.certificates.issue` uses the same
functions, so the two sides cannot drift apart. Nothing here touches torch.
Record identifiers default to dataset indices (``id_scheme="dataset-index"``): stable only as long as
the dataset's order is, which docs/certificates.md spells out. The noise key's secret enters the certificate
only as a salted commitment; its opening and the Merkle salt key go back to the caller. So does
the model a first request starts from (:func:`starting_model`): it was trained on the forget set,
and a plain digest of it would reveal membership. The noise key is derived from the run's secret and
every run input (:func:`run_context`; the derivation itself, which needs the noise generator, is
:mod:`certun.backends.run_key`), so a seed reused across requests never cancels noise.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import operator
import os
import platform
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from certun._validation import integer
from certun.accountant import Schedule
from certun.certificates._canonical import canonical_bytes, content_digest
from certun.certificates._commitment import key_commitment as _key_commitment
from certun.certificates._commitment import model_commitment
from certun.certificates._digest import model_digest
from certun.certificates._merkle import encode_id, merkle_tree
from certun.certificates._parse import load_certificate, strict_loads
from certun.certificates._record import ModelDigest
from certun.certificates._safetensors_reader import parse_safetensors, read_safetensors
from certun.errors import CertificateFormatError, InvalidParameterError, UnlearningRunError

__all__ = [
    "KEY_DERIVATION",
    "Identifiers",
    "StartingModel",
    "check_pass_count",
    "check_retain_count",
    "default_ids",
    "encode_id",
    "identifiers",
    "key_commitment",
    "load_previous",
    "model_digest",
    "now_utc",
    "parse_safetensors",
    "read_safetensors",
    "released_root",
    "resolve_seed",
    "run_context",
    "starting_model",
    "strict_loads",
    "utc_timestamp",
    "versions",
]

#: Name of the context encoding and per-step keying, recorded in the certificate
#: (``execution.noise.key_derivation``). v2: each step's draw is also keyed by the retain batches read so far.
KEY_DERIVATION = "certun.noise-key.v2"

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def utc_timestamp(when: _dt.datetime | str | None = None) -> str:
    """RFC 3339 UTC timestamp with seconds (``2025-01-31T12:00:00Z``) of ``when`` (default: now)."""
    if when is None:
        when = _dt.datetime.now(_dt.timezone.utc)
    if isinstance(when, str):
        if not _TIMESTAMP.fullmatch(when):
            raise InvalidParameterError("created", when, "an RFC 3339 timestamp like 2025-01-31T12:00:00Z")
        return when
    if not isinstance(when, _dt.datetime):
        raise InvalidParameterError("created", when, "a datetime, an RFC 3339 string or None")
    if when.tzinfo is None:
        raise InvalidParameterError("created", when, "a timezone-aware datetime")
    return when.astimezone(_dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_utc() -> str:
    """The current time as an RFC 3339 UTC timestamp with seconds (``2025-01-31T12:00:00Z``)."""
    return utc_timestamp(None)


def versions(*packages: str, missing: str | None = None) -> dict[str, str]:
    """Installed versions of certun, python and the named packages.

    A package that is not installed is left out, or recorded as ``missing`` when that is given (the
    accounting side records ``"unknown"`` so that its key set is fixed).
    """
    out = {"certun": _version("certun") or "unknown", "python": platform.python_version()}
    for name in packages:
        v = _version(name) or missing
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
    #: unsalted SHA-256 over the sorted, type-tagged retain identifiers (``b""`` when unknown). Private:
    #: it only feeds the noise key's context and never enters a record or certificate.
    retain_fingerprint: bytes = b""
    #: number of retain identifiers, or ``None`` when none are known.
    retain_size: int | None = None
    #: the same fingerprint of the forget identifiers (``b""`` when none are given). Private too.
    forget_fingerprint: bytes = b""

    @property
    def retain_root(self) -> str | None:
        """Hex root of the retain tree, if any."""
        return None if self.retain_tree is None else self.retain_tree.root

    @property
    def forget_root(self) -> str | None:
        """Hex root of the forget tree, if any."""
        return None if self.forget_tree is None else self.forget_tree.root


def _id_list(name: str, ids: Iterable[Any]) -> list[int | str]:
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise InvalidParameterError(name, ids, "an iterable of record identifiers (integers or strings)")
    out: list[int | str] = []
    for i in ids:
        if isinstance(i, str):
            out.append(str(i))
        elif isinstance(i, bool) or "bool" in str(getattr(i, "dtype", "")):
            raise InvalidParameterError(name, i, "integers or strings (record identifiers), not booleans")
        elif (index := _index(i)) is not None:
            out.append(index)
        elif callable(getattr(i, "item", None)) and type(_item(i)) is int:
            out.append(int(_item(i)))  # one-element integer arrays / tensors
        else:
            raise InvalidParameterError(name, i, "integers or strings (record identifiers)",
                                        hint="a float index such as 3.0 is refused rather than truncated")
    return out


def _index(value: Any) -> int | None:
    try:
        return operator.index(value)  # int, numpy integers, 0-d integer tensors; never a float
    except TypeError:
        return None


def _item(value: Any) -> Any:
    try:
        return value.item()
    except (TypeError, ValueError, RuntimeError):
        return None


def _index_space(data: Any) -> tuple[int | None, bool]:
    """``(size of the dataset that dataset-index identifiers index, whether the loader holds a Subset of it)``."""
    dataset: Any = getattr(data, "dataset", None)
    if getattr(dataset, "indices", None) is not None and hasattr(dataset, "dataset"):  # torch.utils.data.Subset
        dataset, subset = dataset.dataset, True
    else:
        subset = False
    try:
        return len(dataset), subset
    except TypeError:
        return None, subset


#: What to do instead, for every refused forget identifier under ``id_scheme="dataset-index"``.
_INDEX_REMEDY = ("with dataset-index identifiers pass the retain data as torch.utils.data.Subset(original, "
                 "retain_indices) and forget_ids as indices into original, or pass retain_ids= (one identifier "
                 "per retain record, e.g. the original indices) with forget_ids in the same scheme")


def _check_dataset_indices(forget: list[int | str], data: Any) -> None:
    """Forget identifiers under ``id_scheme="dataset-index"`` must be indices of records the run does not see.

    They index the dataset the loader's ``Subset`` was taken from: integers in ``[0, len(original))``.
    A loader over a plain dataset retains *every* index of it, so no index can name a forgotten record:
    the natural "rebuilt retain set plus original indices" workflow is refused with what to pass instead.
    """
    size, subset = _index_space(data)
    bad = [i for i in forget if not isinstance(i, int) or i < 0 or (size is not None and i >= size)]
    if bad:
        space = "integers >= 0" if size is None else f"integers in [0, {size})"
        where = "of the dataset the retain Subset was taken from" if subset else "of the loader's dataset"
        shown = bad[0] if len(bad) == 1 else f"<{len(bad)} ids, e.g. {bad[:5]}>"
        raise InvalidParameterError("forget_ids", shown, f"dataset indices ({space}) {where}", hint=_INDEX_REMEDY)
    if forget and not subset:
        held = "all" if size is None else f"all {size}"
        raise InvalidParameterError(
            "forget_ids", f"<{len(forget)} ids, e.g. {forget[:5]}>",
            f"indices of records the run does not use, but the loader's dataset is not a Subset and {held} of "
            "its indices are retain records", hint=_INDEX_REMEDY)


def identifiers(data: Any, retain_ids: Iterable[Any] | None, forget_ids: Iterable[Any] | None, *,
                salt_key: bytes | None = None) -> Identifiers:
    """Build the salted Merkle trees (one fresh salt key for both) of the retain and forget identifiers.

    ``retain_ids`` defaults to the loader's dataset indices (:func:`default_ids`), and then
    ``id_scheme="dataset-index"`` covers the forget identifiers too: they must be integer indices into the
    dataset the loader's ``Subset`` was taken from, in range (a loader over a plain dataset retains all of
    its indices, so forget ids are refused there, with what to pass instead). With explicit
    ``retain_ids`` the scheme is ``"user"`` (integers or strings). A record that appears in both sets is
    refused: the forget set must be disjoint from the data the run touched. ``salt_key`` (default: fresh)
    lets the ranks of a distributed run build the same trees.
    """
    retain: list[int | str] | None
    if retain_ids is None:
        retain = default_ids(data)  # type: ignore[assignment]  # list[int] is a list[int | str] here
        # forget ids are then taken to be indices of the same dataset (the caller's responsibility)
        scheme = "dataset-index" if retain is not None else ("user" if forget_ids is not None else None)
    else:
        retain = _id_list("retain_ids", retain_ids)
        scheme = "user"
    forget = None if forget_ids is None else _id_list("forget_ids", forget_ids)
    if scheme == "dataset-index" and forget is not None:
        _check_dataset_indices(forget, data)
    if retain is not None and forget is not None:
        overlap = set(retain) & set(forget)
        if overlap:
            example = sorted(overlap, key=str)[:5]
            raise InvalidParameterError("forget_ids", f"<{len(overlap)} ids also retained, e.g. {example}>",
                                        "disjoint from the retain identifiers")
    salt_key = secrets.token_bytes(32) if salt_key is None else salt_key
    return Identifiers(
        retain_tree=None if retain is None else merkle_tree(retain, salt_key=salt_key),
        forget_tree=None if forget is None else merkle_tree(forget, salt_key=salt_key),
        id_scheme=scheme,
        retain_fingerprint=b"" if retain is None else _fingerprint(retain),
        retain_size=None if retain is None else len(retain),
        forget_fingerprint=b"" if forget is None else _fingerprint(forget),
    )


def _fingerprint(ids: Iterable[int | str]) -> bytes:
    h = hashlib.sha256(b"certun.id-set.v1\x00")
    for encoded in sorted(encode_id(i) for i in ids):
        h.update(len(encoded).to_bytes(8, "little") + encoded)
    return h.digest()


def check_retain_count(ids: Identifiers, data: Any) -> bool:
    """Refuse explicit retain identifiers whose number differs from the loader's dataset size (when known).

    The certificate's retain root must describe the data the run iterates; a count that differs
    means it does not. Returns whether the count is still to be checked after a full pass over the
    data (explicit identifiers, no sized ``data.dataset``): see :func:`check_pass_count`.
    """
    if ids.id_scheme != "user" or ids.retain_size is None:
        return False
    dataset = getattr(data, "dataset", None)
    try:
        n = None if dataset is None else len(dataset)
    except TypeError:
        n = None
    if n is None:
        return True
    if n != ids.retain_size:
        raise InvalidParameterError("retain_ids", f"<{ids.retain_size} identifiers>",
                                    f"one identifier per retain record: the loader's dataset holds {n} records")
    return False


def check_pass_count(ids: Identifiers, samples: int | None) -> None:
    """After a full pass over retain data: the samples seen must match the retain identifiers.

    Only for explicit identifiers of data without a sized dataset (:func:`check_retain_count` says
    when); a loader that drops its last partial batch (``drop_last=True``) then fails this check.
    """
    if ids.retain_size is None or samples is None or samples == ids.retain_size:
        return
    raise UnlearningRunError(f"one pass over the retain data yielded {samples} samples, but {ids.retain_size} "
                             "retain identifiers were given: the certificate's retain root would not describe the "
                             "data the run used; no certificate was issued")


@dataclass(frozen=True)
class StartingModel:
    """How the certificate records the model the run started from (``artifacts.model_before``)."""

    plain: ModelDigest | None
    commitment: Mapping[str, str] | None
    opening: Mapping[str, str] | None


def load_previous(previous: Mapping[str, Any] | bytes | str | os.PathLike | None) -> Mapping[str, Any] | None:
    """The previous certificate of this model's ledger (dict, bytes or path), parsed, or ``None``.

    Refuses a certificate whose ``content_digest`` does not match its content: a chain must never be
    extended from a modified certificate.
    """
    if previous is None:
        return None
    prev = previous if isinstance(previous, Mapping) else load_certificate(previous)
    digest = content_digest(prev)
    if prev.get("content_digest") != digest:
        raise CertificateFormatError(
            f"previous certificate's content_digest {prev.get('content_digest')!r} does not match its content "
            f"({digest}); refusing to chain onto a modified certificate")
    return prev


def released_root(previous: Mapping[str, Any] | None) -> str | None:
    """Root of the model ``previous`` released (public already), or ``None`` for a first request."""
    released = None if previous is None else (previous.get("artifacts") or {}).get("unlearned_model")
    return None if not isinstance(released, Mapping) else released.get("root")


def starting_model(before: ModelDigest, previous: Mapping[str, Any] | None) -> StartingModel:
    """A plain digest if ``before`` is the model ``previous`` released (public already), else a salted commitment.

    The first request starts from ``A(D)``, trained on the forget set: a plain digest of it would let
    anyone who can retrain test whether a record was in D (docs/certificates.md). The opening goes
    back to the caller (``RunResult.model_before_opening``), private, for a trusted auditor.
    """
    if released_root(previous) == before.root:
        return StartingModel(plain=before, commitment=None, opening=None)
    public, private = model_commitment(before)
    return StartingModel(plain=None, commitment=public, opening=private)


def resolve_seed(seed: int | None) -> int:
    """``seed`` checked to be an integer in ``[0, 2**63)``, or a fresh one from the OS's secure source."""
    if seed is None:
        return secrets.randbits(63)
    return integer("seed", seed, "an integer in [0, 2**63) or None", low=0, high=2**63 - 1)


def run_context(*, model_before: str, center: str | None, retain_fingerprint: bytes, forget_fingerprint: bytes,
                schedule: Schedule, options: Mapping[str, Any], unlearned_parameters: tuple[str, ...] | list[str],
                dtype: str, backend: str) -> bytes:
    """Canonical bytes (RFC 8785) of every input of the run, the context the key is derived with."""
    return canonical_bytes({
        "derivation": KEY_DERIVATION,
        "backend": backend,
        "model_before": model_before,
        "center": center,
        "retain": retain_fingerprint.hex(),
        "forget": forget_fingerprint.hex(),
        "schedule": schedule.to_dict(),
        "options": dict(options),
        "unlearned_parameters": list(unlearned_parameters),
        "dtype": dtype,
    })


def key_commitment(key: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """``(public commitment, private opening)`` of a run's secret key material
    (:func:`certun.certificates.key_commitment`); the opening records where the secret came from
    (``origin``: ``"os"`` or ``"user_seed"``, with the ``seed``) and is private to the run's owner."""
    extra: dict[str, Any] = {"origin": key.origin}
    if key.seed is not None:
        extra["seed"] = key.seed
    return _key_commitment(key.secret, **extra)
