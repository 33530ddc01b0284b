"""The request ledger: sequential deletion requests as a hash chain of certificates.

Each certificate after the first records ``chain.previous``, the content digest of the certificate
before it, and ``chain.sequence``, its position (0 for the first). :func:`check_chain` walks the links
back through a folder of certificate files and passes only if the walk ends at sequence 0. Links use
*recomputed* digests, so a modified predecessor breaks the chain. Every predecessor is itself verified
in full (:func:`certun.certificates.verify` without model or chain, with the same pinned keys,
``require_signature`` and ``strict``): any FAIL, or a guarantee that does not recompute, breaks the link.
Two certificates with the same predecessor are a fork: two histories of one ledger, reported as a
FAIL. Only regular ``*.json`` files of at most :data:`~certun.certificates._parse.MAX_CERTIFICATE_BYTES`
are read, at most :data:`MAX_CHAIN_FILES` of them and :data:`MAX_CHAIN_BYTES` in all; symbolic links
are skipped, and a file (or identical bytes) reached twice is read, parsed and hashed once.
See docs/theory.md#sequential-requests.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from certun.certificates._canonical import content_digest
from certun.certificates._consistency import EXACT_VARIANTS
from certun.certificates._parse import load_certificate, read_bytes
from certun.certificates._verification_report import Status, printable

__all__ = ["MAX_CHAIN_BYTES", "MAX_CHAIN_FILES", "MAX_CHAIN_T", "check_chain", "index_certificates"]

#: Most ``*.json`` files a chain folder may hold (bounds the work of one verification).
MAX_CHAIN_FILES = 4096
#: Most bytes the ``*.json`` files of a chain folder may hold together (a ledger of a thousand
#: requests with constant schedules is a few MB; each byte may cost parsing and hashing).
MAX_CHAIN_BYTES = 16 * 1024 * 1024
#: Most noisy steps the predecessors of one walk may record together: each predecessor's guarantee is
#: recomputed (the exact accountant runs once per step), so this bounds the work of the walk the way
#: ``MAX_VERIFY_T`` bounds one certificate's.
MAX_CHAIN_T = 1_000_000


def _json_files(folder: Path) -> tuple[list[Path], list[str]]:
    files, notes, total = [], [], 0
    seen: set[tuple[int, int]] = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(".json"):
                continue
            try:
                if entry.is_symlink():
                    notes.append(f"{printable(entry.name)}: a symbolic link, skipped (copy the certificate in)")
                    continue
                info = os.stat(entry.path, follow_symlinks=False)  # never opens
                regular = stat.S_ISREG(info.st_mode)
            except OSError as exc:
                notes.append(f"{printable(entry.name)}: cannot stat ({exc.strerror})")
                continue
            if not regular:
                notes.append(f"{printable(entry.name)}: not a regular file, skipped")
                continue
            if (info.st_dev, info.st_ino) in seen:
                continue  # a hard link to a file already listed: read it once
            seen.add((info.st_dev, info.st_ino))
            files.append(Path(entry.path))
            total += info.st_size
            if total > MAX_CHAIN_BYTES:
                raise ValueError(f"the *.json files of the chain folder hold more than {MAX_CHAIN_BYTES} bytes, "
                                 "more than one verification reads")
    return sorted(files), notes


def index_certificates(folder: str | os.PathLike) -> tuple[dict[str, tuple[Path, dict[str, Any]]], list[str]]:
    """``(recomputed content digest -> (path, certificate), notes)`` for the ``*.json`` files of a folder.

    Files that are not valid certun certificates (or not regular files) are left out, each with a
    note saying why; nothing in the folder raises.

    Raises:
        ValueError: the folder holds more than :data:`MAX_CHAIN_FILES` ``*.json`` files or
            :data:`MAX_CHAIN_BYTES` bytes in them.
    """
    files, notes = _json_files(Path(folder))
    if len(files) > MAX_CHAIN_FILES:
        raise ValueError(f"the chain folder holds {len(files)} *.json files, more than the {MAX_CHAIN_FILES} "
                         "one verification reads")
    index: dict[str, tuple[Path, dict[str, Any]]] = {}
    by_bytes: set[bytes] = set()
    for path in files:
        try:
            data = read_bytes(path)
            raw = hashlib.sha256(data).digest()
            if raw in by_bytes:
                continue  # identical bytes: the same certificate, parsed and hashed once
            by_bytes.add(raw)
            cert = load_certificate(data)
            digest = content_digest(cert)
        except Exception as exc:  # any unreadable file is a note, never an escape
            notes.append(f"{printable(path.name)}: not a valid certificate ({printable(str(exc))[:200]})")
            continue
        index.setdefault(digest, (path, cert))
    return index, notes


def _predecessor_problem(name: str, cert: Mapping[str, Any], link: str, trusted: Collection[str],
                         require_signature: bool, strict: bool) -> str | None:
    """Why a predecessor is not a valid link: its stored digest, or any FAIL of its own full verification."""
    from certun.certificates._verify import verify

    if cert.get("content_digest") != link:
        return f"{name}: stored content_digest does not match its content {link}"
    report = verify(dict(cert), trusted_keys=tuple(trusted), require_signature=require_signature, strict=strict)
    failed = [f"{c.name}: {c.detail}" for c in report.failures]
    if failed:
        return f"{name} does not verify: {'; '.join(failed)}"
    if not report.ok:
        return f"{name} does not verify: its guarantee was not recomputed"
    return None


def _forks(index: Mapping[str, tuple[Path, dict[str, Any]]], doc: Mapping[str, Any], doc_digest: str,
           walked: list[str]) -> list[str]:
    successors: dict[str, set[str]] = {}
    for digest, (_, cert) in index.items():
        if cert["chain"]["previous"] is not None:
            successors.setdefault(cert["chain"]["previous"], set()).add(digest)
    if doc["chain"]["previous"] is not None:
        successors.setdefault(doc["chain"]["previous"], set()).add(doc_digest)
    out = []
    for digest in walked:
        children = successors.get(digest, set())
        if len(children) > 1:
            names = sorted(printable(index[c][0].name) if c in index else "the verified certificate"
                           for c in children)
            out.append(f"fork: {len(children)} certificates ({', '.join(names)}) have the same predecessor {digest}")
    return out


def _start_problem(current: Mapping[str, Any], previous: Mapping[str, Any], sequence: int) -> str | None:
    """Why ``current`` did not start from the model ``previous`` released, or ``None`` if it did."""
    before, after = current["artifacts"]["model_before"], previous["artifacts"]["unlearned_model"]
    if after is None:
        return f"sequence {sequence - 1} records no released model to start from"
    if before is None:
        return f"sequence {sequence} records no starting model"
    if "commitment" in before:
        return (f"sequence {sequence} did not start from the model released at sequence {sequence - 1} (it commits "
                "to its starting model; certun publishes that digest only when it is the previously released one)")
    if before["root"] != after["root"]:
        return f"sequence {sequence} did not start from the model released at sequence {sequence - 1}"
    return None


def _untouched_problem(current: Mapping[str, Any], previous: Mapping[str, Any], sequence: int) -> str | None:
    """Why a SISA certificate changed a shard it calls untouched since its predecessor, or ``None``.

    Only when both carry ``execution.sisa`` with the same number of shards: every tensor of an untouched
    shard ``s`` (named ``shards.{s}.…``) must keep its digest, since serving a deletion never trains it.
    """
    now, before = current["execution"].get("sisa"), previous["execution"].get("sisa")
    if now is None or before is None or now["shards"] != before["shards"]:
        return None
    after_now = (current["artifacts"]["unlearned_model"] or {}).get("tensors", {})
    after_before = (previous["artifacts"]["unlearned_model"] or {}).get("tensors", {})
    for state in now["shard_states"]:
        if state["status"] != "untouched":
            continue
        prefix = f"shards.{state['shard']}."
        names = {n for n in (*after_now, *after_before) if n.startswith(prefix)}
        changed = sorted(n for n in names if after_now.get(n) != after_before.get(n))
        if changed:
            return (f"untouched shard {state['shard']} changed between sequence {sequence - 1} and {sequence} "
                    f"(tensors {changed[:5]}): a SISA deletion never trains a shard that held none of its records")
    return None


def check_chain(doc: Mapping[str, Any], folder: str | os.PathLike, *,
                trusted_keys: Collection[str] = (), require_signature: bool = False,
                strict: bool = False) -> tuple[Status, str]:
    """Follow ``chain.previous`` links from ``doc`` back to sequence 0; ``(Status, detail)``.

    Args:
        doc: the (schema-valid) certificate being verified.
        folder: the folder holding the ledger's earlier certificates.
        trusted_keys: pinned keys (``z6Mk...``); when given, every predecessor must be signed by one.
        require_signature: every predecessor must be signed (validly) even when no key is pinned.
        strict: a predecessor's WARN fails its link too (as ``verify(strict=True)``).
    """
    name = printable(os.fspath(folder))
    if not Path(folder).is_dir():
        return Status.FAIL, f"chain folder {name} is not a directory"
    try:
        index, notes = index_certificates(folder)
    except (OSError, ValueError) as exc:
        return Status.FAIL, printable(str(exc))
    warnings: list[str] = []
    doc_digest = content_digest(doc)
    current, walked, steps = doc, [doc_digest], 0
    while current["chain"]["previous"] is not None:
        link, sequence = current["chain"]["previous"], current["chain"]["sequence"]
        if link in walked:
            return Status.FAIL, f"the chain loops back to {link}"
        if link not in index:
            hint = f" ({len(notes)} file(s) skipped: {'; '.join(notes[:2])})" if notes else ""
            return Status.FAIL, (f"previous certificate {link} (sequence {sequence - 1}) is not in "
                                 f"{name} with unchanged content{hint}")
        path, previous = index[link]
        label = printable(path.name)
        if previous["chain"]["sequence"] != sequence - 1:
            return Status.FAIL, f"{label} has sequence {previous['chain']['sequence']}, expected {sequence - 1}"
        steps += previous["mechanism"]["T"]
        if steps > MAX_CHAIN_T:
            return Status.FAIL, (f"the predecessors up to {label} record {steps} noisy steps, more than the "
                                 f"{MAX_CHAIN_T} one verification recomputes")
        problem = _predecessor_problem(label, previous, link, trusted_keys, require_signature, strict)
        if problem:
            return Status.FAIL, problem
        if previous["issued_at"] > current["issued_at"]:
            warnings.append(f"{label} was issued after its successor ({previous['issued_at']} > "
                            f"{current['issued_at']})")
        problem = _successor_problem(current, previous, sequence, warnings)
        if problem:
            return Status.FAIL, problem
        walked.append(link)
        current = previous
    return _walk_end(index, doc, doc_digest, walked, current, warnings)


def _successor_problem(current: Mapping[str, Any], previous: Mapping[str, Any], sequence: int,
                       warnings: list[str]) -> str | None:
    """Why ``current`` does not follow on from ``previous`` (a start mismatch of an exact route only warns)."""
    problem = _start_problem(current, previous, sequence)
    if problem and current["mechanism"]["variant"] in EXACT_VARIANTS:
        warnings.append(problem)  # an exact route does not start from its model: nothing composes
    elif problem:
        return problem + (" — a noisy request must start from the model the ledger released "
                          "before it, or the two releases compose and the later certificate "
                          "understates the privacy loss (docs/theory.md#sequential-requests)")
    return _untouched_problem(current, previous, sequence)


def _walk_end(index: Mapping[str, tuple[Path, dict[str, Any]]], doc: Mapping[str, Any], doc_digest: str,
              walked: list[str], current: Mapping[str, Any], warnings: list[str]) -> tuple[Status, str]:
    """The verdict once the walk stops: it must stop at sequence 0, with no fork in the folder."""
    if current["chain"]["sequence"] != 0:
        return Status.FAIL, (f"the walk stops at sequence {current['chain']['sequence']} (a certificate with no "
                             f"previous link but not the first of its ledger): the ledger is truncated")
    forks = _forks(index, doc, doc_digest, walked)
    if forks:
        return Status.FAIL, "; ".join(forks)
    detail = f"{len(walked)} certificate(s) linked back to sequence 0, each predecessor checked"
    if warnings:
        return Status.WARN, detail + "; " + "; ".join(warnings)
    return Status.PASS, detail
