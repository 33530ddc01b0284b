"""The certificate of one SISA deletion: an exact route, checked by the same verifier as every other.

A SISA deletion retrains the affected shards from checkpoints that never saw the records, so it is
(0, 0)-unlearning (docs/theory.md#exact-routes) and certifies as a ``retrain`` schedule with no noisy
step. Besides the usual digests and salted Merkle roots, the certificate records ``execution.sisa``:
per shard whether it was retrained (and from which stage and checkpoint) or left untouched, with salted
Merkle roots of its identifiers before and after, all under the salt key of the retain and forget
trees. Which shard held which identifier stays private: only the owner holds the salt key.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certun.errors import InvalidParameterError

if TYPE_CHECKING:
    from os import PathLike

    from certun.backends.sisa import Sisa, SisaUnlearning

__all__ = ["ASSIGNMENT_SCHEME", "SisaCertificate", "certify"]

#: How identifiers go to shards and slices (:func:`certun.backends.sisa.assign`).
ASSIGNMENT_SCHEME = "certun.sisa-assign.hmac-sha256.v1"


@dataclass(frozen=True)
class SisaCertificate:
    """A SISA deletion's certificate and the owner's private material behind it.

    Attributes:
        certificate: the issued certificate (JSON-ready dict).
        path: where it was written, or ``None``.
        model_before_opening: opening of the salted commitment to the pre-deletion ensemble (private,
            for a trusted auditor), ``None`` when the certificate gives a plain digest (the previous
            certificate released that ensemble).
        retain_tree / forget_tree: salted Merkle trees of the retained and forgotten identifiers
            (``.receipt_for(id)`` hands a data subject the proof of their deletion).
        shard_trees_before / shard_trees_after: per-shard trees behind ``execution.sisa``'s roots.
        salt_key: the trees' salt key (private: with it, anyone could tell which shard held an id).
    """

    certificate: dict[str, Any]
    path: Path | None
    model_before_opening: Mapping[str, str] | None
    retain_tree: Any
    forget_tree: Any
    shard_trees_before: Mapping[int, Any]
    shard_trees_after: Mapping[int, Any]
    salt_key: bytes
    #: shard -> opening of the salted commitment in ``restarted_from`` (private): the checkpoint was trained
    #: on records a later request may delete, so a plain digest of it would let anyone test membership.
    checkpoint_openings: Mapping[int, Mapping[str, str]] = field(default_factory=dict)


def _encoded(ids: Iterable[Any]) -> set[bytes]:
    from certun.certificates import encode_id

    return {encode_id(i) for i in ids}


def _forget_list(report: SisaUnlearning, forget_ids: Iterable[Any]) -> list[Any]:
    """The request's identifiers, refused unless they are exactly the records ``report`` deleted."""
    if isinstance(forget_ids, (str, bytes)) or not isinstance(forget_ids, Iterable):
        raise InvalidParameterError("forget_ids", forget_ids, "an iterable of the identifiers that were deleted")
    forget = list(forget_ids)
    before = _encoded(i for ids in report.shard_ids_before.values() for i in ids)
    after = _encoded(i for ids in report.shard_ids_after.values() for i in ids)
    if len(_encoded(forget)) != len(forget) or _encoded(forget) != before - after:
        raise InvalidParameterError("forget_ids", f"<{len(forget)} ids>",
                                    f"exactly the {len(before - after)} distinct identifiers this deletion removed")
    return forget


def _check_continues(previous: Mapping[str, Any] | None, report: SisaUnlearning) -> None:
    """Refuse to chain onto a SISA certificate whose released ensemble is not the one this deletion started from.

    Otherwise a folder restored from before a certified deletion (the owner still holding its records)
    would extend the ledger: the chain says the records are gone, the ensemble still depends on them.
    """
    from certun.certificates.provenance import released_root

    execution = None if previous is None else previous.get("execution")
    if not isinstance(execution, Mapping) or "sisa" not in execution or report.model_before is None:
        return
    if released_root(previous) != report.model_before.root:
        chain = previous.get("chain")
        sequence = chain.get("sequence") if isinstance(chain, Mapping) else None
        raise InvalidParameterError(
            "previous", f"<certificate sequence {sequence}>",
            "the certificate of the deletion served just before this one, whose released ensemble it started from",
            hint="this ensemble is not the one that certificate released: the checkpoint folder was restored or "
            "rolled back, an older folder was reloaded, or a deletion in between went uncertified (certify each "
            "deletion right after it, chained to the one before)")


def _checkpoint_commitments(report: SisaUnlearning) -> tuple[dict[int, str], dict[int, Mapping[str, str]]]:
    """Salted commitments to the checkpoints restarted from, and their private openings."""
    from certun.certificates import model_commitment

    public, private = {}, {}
    for s, root in report.restarted_from.items():
        if root is not None:
            commitment, opening = model_commitment(root)
            public[s], private[s] = commitment["commitment"], opening
    return public, private


def _shard_states(report: SisaUnlearning, shards: int, trees_before: Mapping[int, Any],
                  trees_after: Mapping[int, Any], checkpoints: Mapping[int, str]) -> list[dict[str, Any]]:
    states = []
    for s in range(shards):
        retrained = s in report.restart_stage
        states.append({
            "shard": s,
            "status": "retrained" if retrained else "untouched",
            "restart_stage": int(report.restart_stage[s]) if retrained else None,
            "restarted_from": checkpoints.get(s) if retrained else None,
            "retain_root_before": trees_before[s].root,
            "retain_root_after": trees_after[s].root,
        })
    return states


def certify(sisa: Sisa, report: SisaUnlearning, forget_ids: Iterable[Any], *, eps: float, delta: float,
            previous: Mapping[str, Any] | bytes | str | PathLike[str] | None = None,
            certificate_path: str | PathLike[str] | None = None) -> SisaCertificate:
    """Issue (and write atomically when ``certificate_path`` is given) the certificate of ``report``.

    ``eps``/``delta`` are the claim's target (a retrain schedule meets any target: the route is exact).
    ``previous`` is the ledger's previous certificate (dict, bytes or path): the new one links to it,
    and records its starting ensemble by plain digest only when ``previous`` released exactly that
    ensemble; otherwise by a salted commitment whose opening stays in the return value.

    Raises:
        InvalidParameterError: ``forget_ids`` are not exactly the records the deletion removed, the
            target is invalid, or ``previous`` is a SISA certificate whose released ensemble is not the
            one this deletion started from (a rolled-back folder, a gap in the ledger);
            CertificateFormatError: ``previous`` was modified.
    """
    import certun
    from certun.backends.sisa import ensemble_digest
    from certun.certificates import RunRecord, issue, merkle_tree, write_certificate
    from certun.certificates.provenance import load_previous, now_utc, starting_model, versions

    forget = _forget_list(report, forget_ids)
    schedule = certun.plan(eps, delta, None, None, 0.0, variant="retrain")
    prev = load_previous(previous)
    if report.model_before is None:
        raise InvalidParameterError("report", "<SisaUnlearning without model_before>",
                                    "the report returned by Sisa.unlearn()")
    _check_continues(prev, report)
    start = starting_model(report.model_before, prev)
    salt_key = secrets.token_bytes(32)
    S = sisa.config.shards
    trees_before = {s: merkle_tree(report.shard_ids_before.get(s, ()), salt_key=salt_key) for s in range(S)}
    trees_after = {s: merkle_tree(report.shard_ids_after.get(s, ()), salt_key=salt_key) for s in range(S)}
    retain_tree = merkle_tree(sisa.retained_ids(), salt_key=salt_key)
    forget_tree = merkle_tree(forget, salt_key=salt_key)
    after = ensemble_digest(sisa.ensemble)
    names = tuple(sorted(after.tensors))
    checkpoints, checkpoint_openings = _checkpoint_commitments(report)
    record = RunRecord(
        backend="sisa", clipping=None, unlearned_parameters=names,
        d=sum(_numel(after.shapes[n]) for n in names), noisy_steps=0,
        model_before=start.plain, model_before_commitment=start.commitment, model_after=after,
        retain_root=retain_tree.root, forget_root=forget_tree.root, retain_count=retain_tree.size,
        forget_count=forget_tree.size, id_scheme="user", device=str(sisa.device.type),
        dtype=_dtype(after), finished_at=now_utc(), versions=versions("torch", "numpy"),
        sisa={"shards": S, "slices": sisa.config.slices, "cumulative": sisa.config.cumulative,
              "assignment": ASSIGNMENT_SCHEME,
              "shard_states": _shard_states(report, S, trees_before, trees_after, checkpoints)})
    path = None if certificate_path is None else Path(certificate_path)
    certificate = issue(schedule, record, previous=prev)
    written = None if path is None else Path(write_certificate(certificate, path))
    return SisaCertificate(certificate=certificate, path=written, model_before_opening=start.opening,
                           retain_tree=retain_tree, forget_tree=forget_tree, shard_trees_before=trees_before,
                           shard_trees_after=trees_after, salt_key=salt_key,
                           checkpoint_openings=checkpoint_openings)


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for dim in shape:
        n *= int(dim)
    return n


def _dtype(digest: Any) -> str:
    """The floating dtype of the ensemble's parameters (``float32`` unless all share another one)."""
    floats = {str(t).removeprefix("torch.") for t in digest.dtypes.values()} & {"float16", "bfloat16", "float32",
                                                                                 "float64"}
    return floats.pop() if len(floats) == 1 else "float32"
