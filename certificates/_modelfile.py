"""Check a released model against the digests in its certificate (``certun verify --model FILE``).

The file is read as tensors, never hashed as bytes: an ``.npz`` archive (numpy, no pickles), a
``.safetensors`` file (read with numpy by :mod:`certun.certificates._safetensors_reader`, no extra
package), or a ``.pt``/``.pth`` state_dict (torch, imported only here and loaded with
``weights_only=True``). Every tensor in the file must be
covered by the certificate: unlearned parameters by ``artifacts.unlearned_model``, frozen parameters
by ``execution.frozen_parameters`` (bit-identical before and after), public tensors (buffers rebuilt
from public or retain data) by ``artifacts.public_tensors``. A tensor the certificate does not cover
(a new layer, BatchNorm statistics computed on D) FAILs unless the verifier explicitly allows it.
Only dense real tensors are read (bool, integer, float16/32/64, bfloat16): anything else is a FAIL
with a one-line reason. See docs/certificates.md#threat-model.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from certun.certificates._digest import root_digest, tensor_digest
from certun.certificates._npz_reader import read_npz
from certun.certificates._safetensors_reader import read_safetensors
from certun.certificates._verification_report import Status, printable
from certun.errors import CertificateFormatError

__all__ = ["check_model", "load_model_tensors"]

#: numpy dtype kinds a model tensor may have (bool, signed/unsigned integer, float).
_NUMPY_KINDS = frozenset("biuf")
_TORCH_DTYPES = frozenset({"torch.float16", "torch.float32", "torch.float64", "torch.bfloat16", "torch.int8",
                           "torch.int16", "torch.int32", "torch.int64", "torch.uint8", "torch.bool"})


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return printable(text[0] if text else type(exc).__name__)[:300]


def _tensor_problem(name: Any, value: Any) -> str | None:
    """Why ``value`` is not a tensor a certificate can cover, or ``None``."""
    if not isinstance(name, str) or not name:
        return f"entry {printable(repr(name))} is not a named tensor"
    label = printable(repr(name))
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"tensor name {label} holds a lone UTF-16 surrogate (not valid Unicode text)"
    if hasattr(value, "detach") and hasattr(value, "layout"):  # a torch tensor
        if str(value.layout) != "torch.strided":
            return f"tensor {label} is {value.layout} (sparse): only dense tensors can be certified"
        if getattr(value, "is_quantized", False):
            return f"tensor {label} is quantised ({value.dtype}): certify the float model"
        if str(value.dtype) not in _TORCH_DTYPES:
            return f"tensor {label} has dtype {value.dtype}, which certun does not hash (float8, complex, ...)"
        return None
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _NUMPY_KINDS:
            return f"tensor {label} has dtype {value.dtype}, which certun does not hash (complex, object, text, ...)"
        return None
    return f"entry {label} is a {type(value).__name__}, not a tensor"


def _load_pt(path: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError as exc:
        raise CertificateFormatError(
            "reading a .pt file needs torch (pip install 'certun[torch]'); or save the state_dict as .npz or "
            ".safetensors") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, text, unsafe pickle: all one line
        if "weights only" in str(exc).lower() or "unsupported global" in str(exc).lower():
            raise CertificateFormatError(
                f"{printable(str(path))} holds pickled Python objects, not only tensors: expected a state_dict "
                "(save it with torch.save(model.state_dict(), path))") from None
        raise CertificateFormatError(f"cannot read model file {printable(str(path))}: {_one_line(exc)}") from None
    if isinstance(state, torch.nn.Module):
        raise CertificateFormatError(f"{printable(str(path))} holds a whole nn.Module: expected a state_dict "
                                     "(save model.state_dict())")
    if not isinstance(state, Mapping):
        raise CertificateFormatError(
            f"{printable(str(path))} holds a {type(state).__name__}, expected a state_dict (a mapping name -> tensor)")
    return dict(state)


def load_model_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """``name -> tensor`` from an ``.npz``, ``.safetensors`` or ``.pt``/``.pth`` (state_dict) file.

    Raises:
        CertificateFormatError: unreadable file, unknown suffix, not a flat mapping of tensors, or a
            tensor certun does not hash (sparse, quantised, complex, float8); one line, naming it.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".pt", ".pth", ".safetensors"):
        raise CertificateFormatError(f"unknown model file type {printable(repr(suffix))} for {printable(str(path))}: "
                                     "expected .npz, .safetensors, .pt or .pth")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CertificateFormatError(f"model file {printable(str(path))} is not a regular file")
        if suffix == ".npz":
            tensors = read_npz(path)
        elif suffix == ".safetensors":
            tensors = read_safetensors(path)
        else:
            tensors = _load_pt(path)
    except CertificateFormatError:
        raise
    except Exception as exc:  # numpy and zipfile raise many types on corrupt input: all one line
        raise CertificateFormatError(f"cannot read model file {printable(str(path))}: {_one_line(exc)}") from None
    for name, value in tensors.items():
        problem = _tensor_problem(name, value)
        if problem:
            raise CertificateFormatError(f"{printable(str(path))}: {problem}")
    return tensors


_DIFFERS = {"unlearned parameter": "tensor {name} differs", "frozen parameter": "frozen parameter {name} changed",
            "public tensor": "public tensor {name} differs"}


def _compare(kind: str, recorded: Mapping[str, str], tensors: Mapping[str, Any]) -> tuple[dict[str, str], str | None]:
    got: dict[str, str] = {}
    for name in sorted(recorded):
        label = printable(repr(name))
        if name not in tensors:
            return got, f"the model lacks {kind} {label}"
        got[name] = tensor_digest(name, tensors[name])
        if got[name] != recorded[name]:
            return got, f"{_DIFFERS[kind].format(name=label)}: got {got[name]}, expected {recorded[name]}"
    return got, None


def _dimension_problem(ex: Mapping[str, Any], tensors: Mapping[str, Any]) -> str | None:
    """Why the model's unlearned tensors disagree with ``execution.parameter_shapes`` or ``execution.d``
    (the noise residual and the accounting are computed from them), or ``None``."""
    shapes = ex["parameter_shapes"]
    d = 0
    for name in ex["unlearned_parameters"]:
        shape = [int(n) for n in tensors[name].shape]
        if shapes and shapes.get(name) != shape:
            return (f"tensor {printable(repr(name))} has shape {shape} but execution.parameter_shapes records "
                    f"{shapes.get(name)}")
        size = 1
        for n in shape:
            size *= n
        d += size
    if d != ex["d"]:
        return f"the model's unlearned tensors hold {d} coordinates but execution.d is {ex['d']}"
    return None


def check_model(doc: Mapping[str, Any], model: str | os.PathLike | Mapping[str, Any], *,
                allow_uncovered: bool = False) -> tuple[Status, str]:
    """Compare a model's tensors with the certificate's digests; returns ``(Status, detail)``.

    A certificate that records no unlearned-model digest FAILs: a model given to the verifier must
    be tied to the certificate, never silently skipped.
    """
    recorded = doc["artifacts"]["unlearned_model"]
    if recorded is None:
        return Status.FAIL, ("a model was given, but the certificate records no digest of the unlearned model "
                             "(artifacts.unlearned_model is null): nothing ties this model to the certificate")
    try:
        if isinstance(model, Mapping):
            tensors = dict(model)
            for name, value in tensors.items():
                problem = _tensor_problem(name, value)
                if problem:
                    raise CertificateFormatError(problem)
        else:
            tensors = load_model_tensors(model)
    except CertificateFormatError as exc:
        return Status.FAIL, str(exc)
    unlearned = {name: recorded["tensors"].get(name, "<no digest recorded>")
                 for name in doc["execution"]["unlearned_parameters"]}
    got, problem = _compare("unlearned parameter", unlearned, tensors)
    if problem:
        return Status.FAIL, problem
    root = root_digest(got)
    if root != recorded["root"]:
        return Status.FAIL, f"unlearned-model root differs: got {root}, expected {recorded['root']}"
    problem = _dimension_problem(doc["execution"], tensors)
    if problem:
        return Status.FAIL, problem
    frozen = doc["execution"]["frozen_parameters"]
    _, problem = _compare("frozen parameter", frozen, tensors)
    if problem:
        return Status.FAIL, problem
    public = doc["artifacts"].get("public_tensors") or {}
    _, problem = _compare("public tensor", public, tensors)
    if problem:
        return Status.FAIL, problem
    uncovered = sorted(set(tensors) - set(got) - set(frozen) - set(public))
    detail = (f"{len(got)} unlearned tensors match root {root}; {len(frozen)} frozen tensors unchanged; "
              f"{len(public)} public tensors match")
    if uncovered:
        shown = ", ".join(printable(repr(n)) for n in uncovered[:5]) + (
            f" (+{len(uncovered) - 5} more)" if len(uncovered) > 5 else "")
        what = (f"the model holds {len(uncovered)} tensor(s) the certificate does not cover: {shown}; such tensors "
                "(a new layer, buffers such as BatchNorm statistics computed on the forget set) are not certified")
        if allow_uncovered:
            return Status.WARN, f"{detail}; but {what} (allowed by --allow-uncovered)"
        return Status.FAIL, f"{what} (record them as frozen or public tensors, or pass --allow-uncovered)"
    return Status.PASS, detail
