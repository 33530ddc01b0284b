"""Verify a certificate: an ordered tuple of small checks, each returning a :class:`CheckResult`.

Order (a check whose prerequisite did not pass is SKIP; nothing is skipped silently):

1. ``strict_parse``   — strict JSON: no NaN/Infinity, duplicate keys, 1e400, unsafe integers
2. ``format``         — ``format`` and a known ``format_version``
3. ``no_raw_seed``    — no key anywhere looks like a raw seed or key (``seed``, ``rng``, ``noise_key``,
   ``secret``, ...), no value writes one out, no 64-hex string outside the hash fields (only the
   key's commitment is allowed)
4. ``schema``         — the shipped JSON Schema of that version (integers must be integers)
5. ``content_digest`` — RFC 8785 digest of everything but the proof matches ``content_digest``
6. ``signature``      — eddsa-jcs-2022 proof valid; PASS if the key is pinned, WARN if not (after the schema)
7. ``consistency``    — the certificate agrees with itself (claim = target, T, d, clipping, ...),
   ``execution.extra`` holds only the backends' keys, no record identifiers in free-form fields or notes
8. ``noise``          — the noise record names a known source (generator, sampler, key derivation)
   with that source's key bits and tail mass; draws and tail residual ≤ 1e-13·δ recomputed from d,
   T and the known tail mass; a key commitment of the right scheme; WARN when the key came from a
   user seed (testing/audit only)
9. ``recompute``      — the accountant's guarantee of ``mechanism`` supports the claim
10. ``stored_accounting`` — stored "achieved" numbers agree with the recomputation (WARN only)
11. ``model``         — a model file's tensors hash to the recorded digests, and their shapes are
   ``parameter_shapes`` and add up to ``d`` (with ``model=``)
12. ``chain``         — links to previous certificates (with ``chain_dir=``), each predecessor
   verified in full (every check above, same pinned keys, ``require_signature`` and ``strict``)
13. ``policy``        — claimed ε, δ within the verifier's limits (with ``max_eps=``/``max_delta=``)

``Report.ok`` requires no FAIL **and** a ``recompute`` that actually PASSed, so a report of SKIPs
never passes. Any exception inside a check becomes that check's FAIL with a one-line reason, so
``verify`` never raises on a bad certificate, model file or chain folder; it raises
:class:`~certun.errors.InvalidParameterError` only on bad arguments. With ``strict=True`` every WARN
is a FAIL. What each check defends against: docs/certificates.md#threat-model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from certun.accountant import Schedule
from certun.certificates._canonical import content_digest
from certun.certificates._consistency import consistency_problems, raw_seed_paths
from certun.certificates._parse import format_problem, json_value_problems, read_bytes, strict_loads
from certun.certificates._recompute import ClaimDecision, decide_claim
from certun.certificates._schema import schema_errors
from certun.certificates._signing import load_public_key, load_public_key_file, verify_document
from certun.certificates._verification_report import CheckResult, Report, Status, printable
from certun.certificates.noise_check import TAIL_SLACK, USER_SEED_NOTE, noise_problems
from certun.errors import CertificateFormatError, CertunError, InvalidParameterError

__all__ = ["CHECK_NAMES", "MAX_VERIFY_T", "CheckResult", "Report", "Status", "verify"]

#: Largest number of noisy steps a certificate may record: the exact (mpmath) accountant runs once
#: per step, so this bounds the work of one verification to seconds (docs/certificates.md#threat-model).
MAX_VERIFY_T = 200_000


@dataclass
class _Context:
    source: Any
    model: str | os.PathLike | Mapping[str, Any] | None
    trusted_keys: tuple[Any, ...]
    trusted_key_files: tuple[Any, ...]
    chain_dir: str | os.PathLike | None
    max_eps: float | None
    max_delta: float | None
    require_signature: bool = False
    allow_uncovered: bool = False
    strict: bool = False
    pinned: tuple[str, ...] = ()
    doc: Any = None
    decision: ClaimDecision | None = None
    results: dict[str, Status] = field(default_factory=dict)


# -------------------------------------------------------------------------------------------- checks
def _strict_parse(ctx: _Context) -> tuple[Status, str]:
    if isinstance(ctx.source, Mapping):
        problems = json_value_problems(dict(ctx.source))
        if problems:
            return Status.FAIL, "; ".join(problems)
        ctx.doc = ctx.source
        return Status.PASS, "in-memory certificate holds only strict JSON values"
    try:
        data = read_bytes(ctx.source)
        ctx.doc = strict_loads(data)
    except CertificateFormatError as exc:
        return Status.FAIL, str(exc)
    return Status.PASS, f"{len(data)} bytes of strict JSON"


def _format(ctx: _Context) -> tuple[Status, str]:
    problem = format_problem(ctx.doc)
    if problem:
        return Status.FAIL, problem
    return Status.PASS, f"{ctx.doc['format']} format_version {ctx.doc['format_version']}"


def _no_raw_seed(ctx: _Context) -> tuple[Status, str]:
    found = raw_seed_paths(ctx.doc)
    if found:
        return Status.FAIL, (f"raw seed-like keys {found}: anyone with the seed, the retain data and the "
                             f"model can regenerate and strip the noise; only a seed commitment is allowed")
    randomness = ctx.doc.get("randomness") if isinstance(ctx.doc, Mapping) else None
    commitment = randomness.get("seed_commitment") if isinstance(randomness, Mapping) else None
    return Status.PASS, "no raw seed; " + ("seed committed" if commitment else "no seed commitment recorded")


def _schema(ctx: _Context) -> tuple[Status, str]:
    errors = schema_errors(ctx.doc, ctx.doc["format_version"])
    if errors:
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        return Status.FAIL, "; ".join(errors[:5]) + more
    return Status.PASS, f"matches the format_version {ctx.doc['format_version']} schema"


def _content_digest(ctx: _Context) -> tuple[Status, str]:
    try:
        got = content_digest(ctx.doc)
    except CertificateFormatError as exc:
        return Status.FAIL, str(exc)
    stored = ctx.doc.get("content_digest")
    if stored != got:
        return Status.FAIL, f"content_digest is {stored!r} but the content hashes to {got}"
    return Status.PASS, got


def _pinned_keys(ctx: _Context) -> tuple[str, ...]:
    keys = [load_public_key(k) for k in ctx.trusted_keys]
    keys += [load_public_key_file(f) for f in ctx.trusted_key_files]
    return tuple(dict.fromkeys(keys))


def _signature(ctx: _Context) -> tuple[Status, str]:
    try:
        ctx.pinned = _pinned_keys(ctx)
    except (CertificateFormatError, ValueError) as exc:
        return Status.FAIL, f"unreadable trusted key: {exc}"
    trusted = ctx.pinned
    if "proof" not in ctx.doc:
        if trusted:
            return Status.FAIL, "certificate is unsigned, but a trusted key was given: authenticity cannot be shown"
        if ctx.require_signature:
            return Status.FAIL, "certificate is unsigned, but a signature is required"
        return Status.SKIP, "unsigned: the content digest shows integrity only, nothing shows who issued it"
    check = verify_document(ctx.doc)
    if not check.valid:
        return Status.FAIL, check.detail
    if trusted:
        if check.key in trusted:
            return Status.PASS, (f"{check.detail}; key is pinned (trusted): matches pinned key "
                                 f"{trusted.index(check.key) + 1} of {len(trusted)}, {check.key}")
        return Status.FAIL, f"signed by {check.key}, which is not among the trusted keys {list(trusted)}"
    return Status.WARN, (f"{check.detail}, but the key is embedded in the certificate and NOT pinned: this proves "
                         f"integrity only, not who issued it (pass a trusted key)")


def _consistency(ctx: _Context) -> tuple[Status, str]:
    problems = consistency_problems(ctx.doc)
    if problems:
        return Status.FAIL, "; ".join(problems)
    ex = ctx.doc["execution"]
    detail = (f"claim = mechanism target; T = noisy_steps = {ex['noisy_steps']}; "
              f"d = {ex['d']} over {len(ex['unlearned_parameters'])} tensors; clipping {ex['clipping']}")
    if ctx.doc["artifacts"]["forget_set"] is None:
        return Status.WARN, (f"{detail}; but the certificate records no forget set: nothing shows which records "
                             "were unlearned, and no data subject can check a receipt against it")
    return Status.PASS, detail


def _noise(ctx: _Context) -> tuple[Status, str]:
    problems = noise_problems(ctx.doc)
    if problems:
        return Status.FAIL, "; ".join(problems)
    noise = ctx.doc["execution"].get("noise")
    if noise is None:
        return Status.PASS, "retraining adds no noise"
    detail = (f"{noise['generator']} ({noise['key_bits']}-bit key), sampler {noise['sampler']}; tail residual "
              f"{noise['tail_residual']:.3g} <= {TAIL_SLACK:g}·delta over {noise['pairs']} pairs")
    if noise["key_origin"] == "user_seed":
        return Status.WARN, f"{USER_SEED_NOTE}; {detail}"
    return Status.PASS, f"key from the OS; {detail}"


def _recompute(ctx: _Context) -> tuple[Status, str]:
    T = ctx.doc["mechanism"]["T"]
    if T > MAX_VERIFY_T:
        return Status.FAIL, (f"mechanism.T={T} is more noisy steps than the {MAX_VERIFY_T} a certificate may record "
                             "(the exact accountant runs once per step; the limit keeps verification to seconds)")
    try:
        schedule = Schedule.from_dict(ctx.doc["mechanism"])
    except CertunError as exc:
        return Status.FAIL, f"the accountant cannot rebuild the mechanism: {exc}"
    claim = ctx.doc["claim"]
    try:
        # the noise check lets the sampler misplace up to TAIL_SLACK·δ: the mechanism gets the rest
        reserved = TAIL_SLACK * float(claim["delta"]) if ctx.doc["execution"].get("noise") is not None else 0.0
        ctx.decision = decide_claim(schedule, float(claim["eps"]), float(claim["delta"]), reserved_delta=reserved)
    except CertunError as exc:
        return Status.FAIL, f"the accountant cannot evaluate the mechanism: {exc}"
    return (Status.PASS if ctx.decision.holds else Status.FAIL), ctx.decision.detail


def _differs(stored: Any, recomputed: float | None) -> bool:
    if stored is None or recomputed is None:
        return (stored is None) != (recomputed is None)
    return not math.isclose(stored, recomputed, rel_tol=1e-6, abs_tol=0.0)


def _stored_accounting(ctx: _Context) -> tuple[Status, str]:
    assert ctx.decision is not None, "runs only after the recompute check decided the claim"
    rec = ctx.decision.recomputed
    m, acc = ctx.doc["mechanism"], ctx.doc["accounting"]
    pairs = [("mechanism.achieved_eps", m["achieved_eps"], rec.eps),
             ("mechanism.achieved_delta", m["achieved_delta"], rec.delta),
             ("accounting.eps", acc["eps"], rec.eps), ("accounting.delta", acc["delta"], rec.delta)]
    off = [f"{name} {stored!r} vs recomputed {value!r}" for name, stored, value in pairs if _differs(stored, value)]
    if off:
        return Status.WARN, ("stored numbers differ from the recomputation (they are never trusted; the "
                             "recomputed values decide): " + "; ".join(off))
    return Status.PASS, "stored achieved (eps, delta) agree with the recomputation (informational)"


def _model(ctx: _Context) -> tuple[Status, str]:
    if ctx.model is None:
        return Status.SKIP, "no model given (pass the model file to check its digests)"
    from certun.certificates._modelfile import check_model

    return check_model(ctx.doc, ctx.model, allow_uncovered=ctx.allow_uncovered)


def _chain(ctx: _Context) -> tuple[Status, str]:
    previous = ctx.doc["chain"]["previous"]
    if ctx.chain_dir is None:
        if previous is None:
            return Status.PASS, "first certificate of its ledger (no previous link)"
        return Status.SKIP, f"links to previous certificate {previous}; pass the ledger folder to check the chain"
    from certun.certificates._chain import check_chain

    return check_chain(ctx.doc, ctx.chain_dir, trusted_keys=ctx.pinned, require_signature=ctx.require_signature,
                       strict=ctx.strict)


def _policy(ctx: _Context) -> tuple[Status, str]:
    if ctx.max_eps is None and ctx.max_delta is None:
        return Status.SKIP, "no policy limits given"
    claim = ctx.doc["claim"]
    problems = []
    if ctx.max_eps is not None and not claim["eps"] <= ctx.max_eps:
        problems.append(f"claimed eps {claim['eps']!r} > policy max_eps {ctx.max_eps!r}")
    if ctx.max_delta is not None and not claim["delta"] <= ctx.max_delta:
        problems.append(f"claimed delta {claim['delta']!r} > policy max_delta {ctx.max_delta!r}")
    if problems:
        return Status.FAIL, "; ".join(problems)
    return Status.PASS, f"claimed (eps {claim['eps']!r}, delta {claim['delta']!r}) within the policy limits"


# name, prerequisites (each must have PASSed or WARNed), function
_CHECKS: tuple[tuple[str, tuple[str, ...], Callable[[_Context], tuple[Status, str]]], ...] = (
    ("strict_parse", (), _strict_parse),
    ("format", ("strict_parse",), _format),
    ("no_raw_seed", ("strict_parse",), _no_raw_seed),
    ("schema", ("format",), _schema),
    ("content_digest", ("format",), _content_digest),
    ("signature", ("schema",), _signature),
    ("consistency", ("schema",), _consistency),
    ("noise", ("schema",), _noise),
    ("recompute", ("schema",), _recompute),
    ("stored_accounting", ("recompute",), _stored_accounting),
    ("model", ("schema",), _model),
    ("chain", ("schema", "content_digest"), _chain),
    ("policy", ("schema",), _policy),
)
CHECK_NAMES = tuple(name for name, _, _ in _CHECKS)


#: Longest detail a check reports (a certificate with 200 000 parameter names must not print them all).
MAX_DETAIL_CHARS = 2000


def _shorten(detail: str) -> str:
    if len(detail) <= MAX_DETAIL_CHARS:
        return detail
    return f"{detail[:MAX_DETAIL_CHARS]}... (+{len(detail) - MAX_DETAIL_CHARS} more characters)"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _validate_arguments(cert: Any, model: Any, trusted_keys: Any, trusted_key_files: Any, chain_dir: Any,
                        max_eps: Any, max_delta: Any) -> None:
    if cert is None or not isinstance(cert, (Mapping, bytes, bytearray, str, os.PathLike)):
        raise InvalidParameterError("cert", type(cert).__name__, "a certificate path, its bytes or a parsed dict")
    if model is not None and not isinstance(model, (Mapping, str, os.PathLike)):
        hint = "pass model.state_dict(), or the path of a saved state_dict" if hasattr(model, "state_dict") else None
        raise InvalidParameterError("model", type(model).__name__,
                                    "a model file path (.pt, .pth, .npz, .safetensors) or a mapping name -> tensor",
                                    hint=hint)
    for name, value in (("trusted_keys", trusted_keys), ("trusted_key_files", trusted_key_files)):
        if isinstance(value, (str, bytes, bytearray, os.PathLike)) or not isinstance(value, Iterable):
            raise InvalidParameterError(name, value if isinstance(value, str) else type(value).__name__,
                                        "a list (or other iterable) of keys" if name == "trusted_keys"
                                        else "a list (or other iterable) of key file paths",
                                        hint=f"wrap a single one in a list: {name}=[...]")
    if chain_dir is not None and not isinstance(chain_dir, (str, os.PathLike)):
        raise InvalidParameterError("chain_dir", type(chain_dir).__name__, "a folder path or None")
    for name, value, top in (("max_eps", max_eps, math.inf), ("max_delta", max_delta, 1.0)):
        if value is None:
            continue
        if not _is_number(value):
            raise InvalidParameterError(name, value, "a number (float), not a " + type(value).__name__)
        if not (math.isfinite(value) and 0 <= value <= top):
            raise InvalidParameterError(name, value, "finite and >= 0" if top == math.inf else "in [0, 1]")


def verify(cert: Mapping[str, Any] | bytes | str | os.PathLike, *,
           model: str | os.PathLike | Mapping[str, Any] | None = None, trusted_keys: Iterable[Any] = (),
           trusted_key_files: Iterable[str | os.PathLike] = (), chain_dir: str | os.PathLike | None = None,
           max_eps: float | None = None, max_delta: float | None = None, require_signature: bool = False,
           strict: bool = False, allow_uncovered: bool = False) -> Report:
    """Run every check the inputs allow, in order, and return the :class:`Report`.

    Args:
        cert: the certificate: a path (``str`` or path-like), its bytes, or a parsed dict.
        model: the released model: a ``.pt``/``.pth`` state_dict, ``.npz`` or ``.safetensors`` file, or
            a mapping ``name -> array/tensor``; every tensor in it must hash to a recorded digest.
        trusted_keys: pinned Ed25519 public keys (``z6Mk...``, ``did:key:...``, PEM text or key
            objects); a string is always a key, never a file name. With none, a valid signature is
            only a WARN.
        trusted_key_files: files each holding one pinned key (the only way a key is read from a file).
        chain_dir: folder holding the previous certificates of the ledger.
        max_eps, max_delta: policy limits on the claim.
        require_signature: FAIL an unsigned certificate even when no key is pinned.
        strict: every WARN becomes a FAIL.
        allow_uncovered: the model file may hold tensors the certificate does not cover (WARN, not FAIL).

    Raises:
        InvalidParameterError: an argument has the wrong type or range (never for a bad certificate:
            every problem with the certificate, model file or chain folder is a FAIL in the report).
    """
    trusted_keys = tuple(trusted_keys) if isinstance(trusted_keys, Iterable) and not isinstance(
        trusted_keys, (str, bytes, bytearray)) else trusted_keys
    trusted_key_files = tuple(trusted_key_files) if isinstance(trusted_key_files, Iterable) and not isinstance(
        trusted_key_files, (str, bytes, bytearray, os.PathLike)) else trusted_key_files
    _validate_arguments(cert, model, trusted_keys, trusted_key_files, chain_dir, max_eps, max_delta)
    ctx = _Context(source=cert, model=model, trusted_keys=tuple(trusted_keys),
                   trusted_key_files=tuple(trusted_key_files),
                   chain_dir=chain_dir, max_eps=max_eps, max_delta=max_delta,
                   require_signature=bool(require_signature), allow_uncovered=bool(allow_uncovered),
                   strict=bool(strict))
    results = []
    for name, requires, fn in _CHECKS:
        blocked = [r for r in requires if ctx.results[r] not in (Status.PASS, Status.WARN)]
        if blocked:
            status = Status.SKIP
            detail = "needs " + ", ".join(f"{r} (it was {ctx.results[r].value})" for r in blocked)
        else:
            try:
                status, detail = fn(ctx)
            except Exception as exc:  # a check that breaks is that check's FAIL, never an escape
                reason = str(exc).splitlines()[0] if str(exc) else ""
                status, detail = Status.FAIL, f"the check could not run: {type(exc).__name__}: {reason}"[:500]
        if strict and status is Status.WARN:
            status, detail = Status.FAIL, f"(strict: warnings fail) {detail}"
        ctx.results[name] = status
        results.append(CheckResult(name, status, _shorten(printable(detail))))
    return Report(tuple(results))
