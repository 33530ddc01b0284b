"""The request ledger: sequential deletion requests as a hash chain of certificates.

Each certificate after the first records ``chain.previous``, the content digest of the certificate
before it, and ``chain.sequence``, its position (0 for the first). :func:`check_chain` walks the links
back to sequence 0 through a folder of certificate files. Links use *recomputed* digests, so a
modified predecessor breaks the chain; and since the newest certificate's digest (and signature)
covers the link, authenticating the newest certificate authenticates the whole ledger's content.
The walk checks links only: verify each predecessor on its own for its guarantee.
Source: issue 3 ("Sequential requests").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from certun.certificates.canonical import content_digest
from certun.certificates.parse import load_certificate
from certun.certificates.report import Status
from certun.errors import CertificateFormatError

__all__ = ["check_chain", "index_certificates"]


def index_certificates(folder: str | os.PathLike) -> tuple[dict[str, tuple[Path, dict[str, Any]]], list[str]]:
    """``(recomputed content digest -> (path, certificate), notes)`` for the ``*.json`` files of a folder.

    Files that are not valid certun certificates are left out, each with a note saying why.
    """
    index: dict[str, tuple[Path, dict[str, Any]]] = {}
    notes: list[str] = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            cert = load_certificate(path)
        except CertificateFormatError as exc:
            notes.append(f"{path.name}: not a valid certificate ({exc})")
            continue
        index.setdefault(content_digest(cert), (path, cert))
    return index, notes


def check_chain(doc: Mapping[str, Any], folder: str | os.PathLike) -> tuple[Status, str]:
    """Follow ``chain.previous`` links from ``doc`` back to the first certificate; ``(Status, detail)``."""
    if not Path(folder).is_dir():
        return Status.FAIL, f"chain folder {os.fspath(folder)!r} is not a directory"
    index, notes = index_certificates(folder)
    warnings: list[str] = []
    current, seen = doc, {content_digest(doc)}
    while current["chain"]["previous"] is not None:
        link, sequence = current["chain"]["previous"], current["chain"]["sequence"]
        if link in seen:
            return Status.FAIL, f"the chain loops back to {link}"
        if link not in index:
            hint = f" ({len(notes)} unreadable file(s): {'; '.join(notes[:2])})" if notes else ""
            return Status.FAIL, (f"previous certificate {link} (sequence {sequence - 1}) is not in "
                                 f"{os.fspath(folder)!r} with unchanged content{hint}")
        path, previous = index[link]
        if previous.get("content_digest") != link:
            return Status.FAIL, f"{path.name}: stored content_digest does not match its content {link}"
        if previous["chain"]["sequence"] != sequence - 1:
            return Status.FAIL, (f"{path.name} has sequence {previous['chain']['sequence']}, "
                                 f"expected {sequence - 1}")
        if previous["issued_at"] > current["issued_at"]:
            warnings.append(f"{path.name} was issued after its successor ({previous['issued_at']} > "
                            f"{current['issued_at']})")
        before, after = current["artifacts"]["model_before"], previous["artifacts"]["unlearned_model"]
        if before is not None and after is not None and "commitment" in before:
            warnings.append(f"sequence {sequence} did not start from the model released at sequence {sequence - 1} "
                            "(it commits to its starting model; certun publishes that model's digest only when it is "
                            "the previously released one)")
        elif before is not None and after is not None and before["root"] != after["root"]:
            warnings.append(f"sequence {sequence} did not start from the model released at sequence {sequence - 1}")
        seen.add(link)
        current = previous
    length = len(seen)
    detail = f"{length} certificate(s) linked back to sequence 0"
    if warnings:
        return Status.WARN, detail + "; " + "; ".join(warnings)
    return Status.PASS, detail
