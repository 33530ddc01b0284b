"""Issue a certificate from a schedule and a run record, and write it atomically.

:func:`issue` refuses to produce a certificate that its own verifier would reject: it recomputes
the guarantee (the claim must hold), checks internal consistency, the absence of any raw seed and the
schema, and only then computes the content digest and, optionally, signs. :func:`write_certificate`
writes through a temporary file and a rename, so a crash never leaves a partial certificate behind.
Source: docs/certificates.md (the format field by field).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from certun.accountant import Guarantee, Schedule, Variant, mechanism
from certun.certificates._canonical import content_digest
from certun.certificates._consistency import consistency_problems, raw_seed_paths
from certun.certificates._digest import DIGEST_ALGORITHM
from certun.certificates._merkle import TREE_SCHEMES
from certun.certificates._parse import format_problem, json_value_problems
from certun.certificates._recompute import decide_claim
from certun.certificates._record import ModelDigest, RunRecord
from certun.certificates._schema import CERTIFICATE_FORMAT, FORMAT_VERSION, schema_errors
from certun.certificates._signing import KeySource, sign_document
from certun.certificates.noise_check import TAIL_SLACK, noise_problems
from certun.certificates.provenance import load_previous, released_root, utc_timestamp, versions
from certun.errors import CertificateFormatError, InvalidParameterError

__all__ = ["CLAIM_DEFINITION", "CONVERSIONS", "issue", "utc_timestamp", "write_certificate"]

#: What the claim means: (ε, δ)-unlearning in both directions, docs/theory.md#definition.
CLAIM_DEFINITION = "certun:eps-delta-unlearning:v1"

#: How the accountant turns each variant's mechanism into (ε, δ), as the mechanism's registry entry says
#: (docs/theory.md#gradient-clipping, #model-clipping, #output-perturbation): one table, the accountant's.
CONVERSIONS = {v: mechanism(v).conversion for v in Variant}

def _model(digest: ModelDigest | None) -> dict[str, Any] | None:
    if digest is None:
        return None
    return {"algorithm": DIGEST_ALGORITHM, **digest.to_dict()}


def _id_set(root: str | None, size: int | None, id_scheme: str | None, scheme: str) -> dict[str, Any] | None:
    if root is None:
        return None
    if scheme not in TREE_SCHEMES:
        raise InvalidParameterError("record.tree_scheme", scheme, f"one of {TREE_SCHEMES}")
    return {"scheme": scheme, "merkle_root": root, "size": size, "id_scheme": id_scheme}


def _shapes(record: RunRecord) -> dict[str, list[int]]:
    for digest in (record.model_after, record.model_before):
        if digest is not None and set(record.unlearned_parameters) <= set(digest.shapes):
            return {n: [int(d) for d in digest.shapes[n]] for n in sorted(record.unlearned_parameters)}
    return {}


def _previous_link(prev: Mapping[str, Any] | None) -> dict[str, Any]:
    if prev is None:
        return {"sequence": 0, "previous": None}
    return {"sequence": int(prev["chain"]["sequence"]) + 1, "previous": content_digest(prev)}


def _model_before(record: RunRecord, prev: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``artifacts.model_before``: a salted commitment, or a plain digest of a model already public.

    A plain digest is accepted only when it is the model the previous certificate released: the
    starting model of a first request was trained on the forget set, and a plain hash of it would let
    anyone who can retrain test membership (docs/certificates.md, ``artifacts.model_before``).
    """
    plain, commitment = record.model_before, record.model_before_commitment
    if plain is not None and commitment is not None:
        raise InvalidParameterError("record.model_before", "<plain digest and commitment>",
                                    "a plain digest or a commitment, not both")
    if commitment is not None:
        return dict(commitment)
    if plain is None:
        return None
    if released_root(prev) != plain.root:
        where = ("this is the first request: its starting model was trained on the forget set"
                 if prev is None else "it is not the model the previous certificate released")
        raise InvalidParameterError(
            "record.model_before", plain.root, "a salted commitment (record.model_before_commitment) unless it is "
            "the model the previous certificate released",
            hint=f"{where}, and a plain digest of it reveals whether a record was in the training data; build "
                 "one with certun.certificates._commitment.model_commitment(digest) and keep the opening private")
    return _model(plain)


def issue(schedule: Schedule, record: RunRecord, *, previous: Mapping[str, Any] | bytes | str | os.PathLike
          | None = None, signing_key: KeySource | None = None,
          created: _dt.datetime | str | None = None) -> dict[str, Any]:
    """Build (and optionally sign) the certificate of an unlearning run.

    Args:
        schedule: the schedule that was run (its ``to_dict()`` becomes ``mechanism``).
        record: what the backend reports about the run.
        previous: the previous certificate of this model's request ledger (dict, bytes or path);
            the new certificate links to its content digest.
        signing_key: Ed25519 key (see :func:`certun.certificates._signing.load_signing_key`) for an
            ``eddsa-jcs-2022`` proof; unsigned when omitted.
        created: issue time (datetime, RFC 3339 string, default now).

    Returns:
        The certificate as a JSON-ready dict.

    Raises:
        InvalidParameterError: the schedule does not meet its own target, the record contains a raw
            seed or reused noise, the record is inconsistent with the schedule, or it gives a plain
            digest of a starting model that is not the previous certificate's released model.
        CertificateFormatError: the record does not fit the certificate schema.
    """
    _check_inputs(schedule, record)
    rec = _recomputed(schedule, noisy=record.noise is not None)
    issued_at = utc_timestamp(created)
    prev = load_previous(previous)
    document = _document(schedule, record, rec, _model_before(record, prev), prev, issued_at)
    document = _json_round_trip(document)
    _check_document(document)
    document["content_digest"] = content_digest(document)
    if signing_key is not None:
        document = sign_document(document, signing_key, created=issued_at)
    return document


def _check_inputs(schedule: Schedule, record: RunRecord) -> None:
    """Reject a non-Schedule, a non-RunRecord, reused noise, or a record that names no released model."""
    if not isinstance(schedule, Schedule):
        raise InvalidParameterError("schedule", type(schedule).__name__, "a certun Schedule")
    if not isinstance(record, RunRecord):
        raise InvalidParameterError("record", type(record).__name__, "a certun RunRecord")
    noise_mode = record.extra.get("noise_mode", "fresh")
    if noise_mode != "fresh":
        raise InvalidParameterError("record.extra['noise_mode']", noise_mode,
                                    "'fresh' (a run that reused noise draws is never certified)")

    if record.model_after is None:
        raise InvalidParameterError("record.model_after", None, "the digest of the released (unlearned) model",
                                    hint="a certificate that names no model certifies nothing a verifier can check; "
                                         "build it with certun.certificates.model_digest(unlearned parameters)")


def _recomputed(schedule: Schedule, *, noisy: bool) -> Guarantee:
    """The recomputed guarantee of ``schedule``; raises unless it meets the schedule's own target with the
    noise sampler's share of δ (``TAIL_SLACK·δ``, when the run drew noise) set aside."""
    reserved = TAIL_SLACK * schedule.target.delta if noisy else 0.0
    decision = decide_claim(schedule, schedule.target.eps, schedule.target.delta, reserved_delta=reserved)
    if not decision.holds:
        raise InvalidParameterError("schedule", f"target ({schedule.target.eps}, {schedule.target.delta})",
                                    "a target the recomputed guarantee meets", hint=decision.detail)
    return decision.recomputed


def _document(schedule: Schedule, record: RunRecord, rec: Guarantee, model_before: dict[str, Any] | None,
              prev: Mapping[str, Any] | None, issued_at: str) -> dict[str, Any]:
    """The unsigned certificate document, before its JSON round trip and content digest."""
    after = record.model_after
    document: dict[str, Any] = {
        "format": CERTIFICATE_FORMAT,
        "format_version": FORMAT_VERSION,
        "subject": [] if after is None else [
            {"name": "unlearned_model", "digest": {"sha256": after.root.removeprefix("sha256:")}}],
        "claim": {
            "eps": schedule.target.eps,
            "delta": schedule.target.delta,
            "variant": schedule.variant.value,
            "definition": CLAIM_DEFINITION,
        },
        "mechanism": schedule.to_dict(),
        "accounting": _accounting(schedule, rec),
        "execution": _execution(record),
        "artifacts": {
            "unlearned_model": _model(after),
            "model_before": model_before,
            "center": _model(record.center),
            "retain_set": _id_set(record.retain_root, record.retain_count, record.id_scheme, record.tree_scheme),
            "forget_set": _id_set(record.forget_root, record.forget_count, record.id_scheme, record.tree_scheme),
        },
        "randomness": {
            "seed_commitment": None if record.seed_commitment is None else dict(record.seed_commitment),
            "noise_draws": "fresh_per_step",
        },
        "chain": _previous_link(prev),
        "issued_at": issued_at,
    }
    if record.public_tensors:
        document["artifacts"]["public_tensors"] = dict(sorted(record.public_tensors.items()))
    return document


def _accounting(schedule: Schedule, rec: Guarantee) -> dict[str, Any]:
    """The certificate's ``accounting`` section: the recomputed guarantee and the accountant's versions."""
    return {
        "method": schedule.method.value,
        "conversion": mechanism(schedule.variant).conversion,
        "eps": rec.eps,
        "delta": rec.delta,
        "log_delta": rec.log_delta,
        "eps_renyi": rec.eps_renyi,
        "alpha": rec.alpha,
        "versions": versions("numpy", "scipy", "mpmath", missing="unknown"),
    }


def _execution(record: RunRecord) -> dict[str, Any]:
    """The certificate's ``execution`` section, copied from the run record."""
    return {
        "backend": record.backend,
        "clipping": record.clipping,
        "unlearned_parameters": list(record.unlearned_parameters),
        "parameter_shapes": _shapes(record),
        "d": record.d,
        "frozen_parameters": dict(sorted(record.frozen_parameters.items())),
        "noisy_steps": record.noisy_steps,
        "postprocess": record.postprocess,
        "finetune": dict(record.finetune),
        "device": record.device,
        "dtype": record.dtype,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "versions": dict(record.versions),
        "extra": dict(record.extra),
        **({} if record.noise is None else {"noise": dict(record.noise)}),
        **({} if record.sisa is None else {"sisa": dict(record.sisa)}),
        **({} if record.distributed is None else {"distributed": dict(record.distributed)}),
    }


def _json_round_trip(document: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip: tuples become lists, and anything not JSON fails here rather than in a file."""
    problems = json_value_problems(document)
    if problems:
        raise CertificateFormatError("the run record is not JSON-serialisable: " + "; ".join(problems))
    return json.loads(json.dumps(document, allow_nan=False))


def _check_document(document: dict[str, Any]) -> None:
    """Reject raw seeds, schema misfits and inconsistencies; leaves a placeholder ``content_digest``."""
    seeds = raw_seed_paths(document)
    if seeds:
        raise InvalidParameterError("record", f"keys {seeds}", "free of raw seeds (record only the seed commitment)")
    document["content_digest"] = "sha256:" + "0" * 64  # placeholder so the schema sees a complete document
    errors = schema_errors(document, FORMAT_VERSION)
    if errors:
        raise CertificateFormatError("the run record does not fit the certificate format: " + "; ".join(errors))
    problems = consistency_problems(document) + noise_problems(document)
    if problems:
        raise InvalidParameterError("record", "inconsistent with the schedule", "consistent",
                                    hint="; ".join(problems))


def write_certificate(cert: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``cert`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    The certificate is checked first (format, schema, content digest), so a malformed certificate is
    never written; on any error no file is left at ``path`` or beside it.

    Returns:
        The path written.
    """
    problem = format_problem(cert)
    if problem:
        raise CertificateFormatError(problem)
    errors = schema_errors(cert, cert["format_version"])
    if errors:
        raise CertificateFormatError("refusing to write a certificate that violates the schema: " + "; ".join(errors))
    if cert.get("content_digest") != content_digest(cert):
        raise CertificateFormatError("refusing to write a certificate whose content_digest does not match it")
    text = json.dumps(cert, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o644)  # mkstemp makes 0600
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
