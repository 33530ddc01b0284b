"""Check a released model against the digests in its certificate (``certun verify --model FILE``).

The file is read as tensors, never hashed as bytes: an ``.npz`` archive (numpy, no pickles) or a
``.pt`` state_dict (torch, imported only here and loaded with ``weights_only=True``). Every unlearned
parameter must hash to its recorded digest, every frozen parameter to its recorded digest (frozen
means bit-identical before and after). The first differing tensor is named.
Source: issue 3 ("Model digests", ``--model FILE``).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from certun.certificates.digest import root_digest, tensor_digest
from certun.certificates.report import Status
from certun.errors import CertificateFormatError, CertunError

__all__ = ["check_model", "load_model_tensors"]


def load_model_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """``name -> tensor`` from an ``.npz`` file or a ``.pt``/``.pth`` state_dict.

    Raises:
        CertificateFormatError: unreadable file, unknown suffix, or not a flat mapping of tensors.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if suffix in (".pt", ".pth"):
            try:
                import torch
            except ImportError as exc:
                raise CertificateFormatError(
                    "reading a .pt file needs torch (pip install 'certun[torch]'); or save the "
                    "state_dict as .npz") from exc
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, Mapping):
                raise CertificateFormatError(
                    f"{path} holds a {type(state).__name__}, expected a state_dict (a mapping name -> tensor)")
            bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
            if bad:
                raise CertificateFormatError(
                    f"{path} is not a flat state_dict: entries {bad[:5]} are not named tensors")
            return dict(state)
    except (OSError, ValueError, RuntimeError, zipfile.BadZipFile, EOFError, pickle.UnpicklingError) as exc:
        # torch.load raises RuntimeError/UnpicklingError(ValueError-like) on corrupt or unsafe files
        raise CertificateFormatError(f"cannot read model file {path}: {exc}") from exc
    raise CertificateFormatError(f"unknown model file type {suffix!r} for {path}: expected .npz, .pt or .pth")


def check_model(doc: Mapping[str, Any], model: str | os.PathLike | Mapping[str, Any]) -> tuple[Status, str]:
    """Compare a model's tensors with the certificate's digests; returns ``(Status, detail)``."""
    recorded = doc["artifacts"]["unlearned_model"]
    if recorded is None:
        return Status.SKIP, "the certificate records no unlearned-model digest to compare with"
    try:
        tensors = dict(model) if isinstance(model, Mapping) else load_model_tensors(model)
    except CertificateFormatError as exc:
        return Status.FAIL, str(exc)
    expected = recorded["tensors"]
    got: dict[str, str] = {}
    for name in doc["execution"]["unlearned_parameters"]:
        if name not in tensors:
            return Status.FAIL, f"the model lacks unlearned parameter {name!r}"
        try:
            got[name] = tensor_digest(name, tensors[name])
        except CertunError as exc:
            return Status.FAIL, f"cannot hash {name!r}: {exc}"
        if got[name] != expected.get(name):
            return Status.FAIL, f"tensor {name!r} differs: got {got[name]}, expected {expected.get(name)}"
    root = root_digest(got)
    if root != recorded["root"]:
        return Status.FAIL, f"unlearned-model root differs: got {root}, expected {recorded['root']}"
    frozen = doc["execution"]["frozen_parameters"]
    for name, want in sorted(frozen.items()):
        if name not in tensors:
            return Status.FAIL, f"the model lacks frozen parameter {name!r}"
        have = tensor_digest(name, tensors[name])
        if have != want:
            return Status.FAIL, f"frozen parameter {name!r} changed: got {have}, expected {want}"
    uncovered = sorted(set(tensors) - set(got) - set(frozen))
    detail = f"{len(got)} unlearned tensors match root {root}; {len(frozen)} frozen tensors unchanged"
    if uncovered:
        shown = ", ".join(uncovered[:5]) + (f" (+{len(uncovered) - 5} more)" if len(uncovered) > 5 else "")
        return Status.WARN, (f"{detail}; but the model also holds tensors the certificate does not cover: "
                             f"{shown} (buffers must be rebuilt from retain data, THEORY.md §1)")
    return Status.PASS, detail
