"""Module state written during the run: a fingerprint of every module's plain attributes, before and after.

A forward pass that caches something (``self.last = out.detach()``, a running maximum kept as a
Python float) writes state computed at an iterate the guarantee does not cover -- with ``T = 1`` at
the pre-noise start -- into the released object (docs/theory.md#soundness-rules). The attribute scan
of :func:`certun.backends.torch._model.check_model` runs before the run, when such a cache is still
empty, so the torch backend fingerprints every module's non-internal ``vars()`` before the run and
refuses, after it, any attribute that was added or whose value changed, whatever ``attributes`` says.
What torch itself manages (parameters, buffers, submodules, hook dictionaries, ``training``) is left
out; registered tensors referenced again (``nn.LSTM._flat_weights``) count by identity, not value.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from certun.backends.torch._attributes import _MAX_DEPTH, _members, internal

__all__ = ["changed_attributes", "state_fingerprint"]


def state_fingerprint(model: nn.Module) -> dict[str, str]:
    """``"path.attribute" -> hex digest`` of every module's plain attributes (values, not identities)."""
    registered = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    modules = {id(m) for m in model.modules()}
    out: dict[str, str] = {}
    for path, module in model.named_modules():
        for key, value in vars(module).items():
            if internal(key):
                continue
            h = hashlib.sha256()
            _feed(h, value, registered, modules, set(), 0)
            out[f"{path}.{key}" if path else key] = h.hexdigest()
    return out


def changed_attributes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Attributes added, or whose value changed, between two fingerprints (removed ones are not state)."""
    return sorted(name for name, digest in after.items() if before.get(name) != digest)


def _feed(h: Any, value: Any, registered: set[int], modules: set[int], seen: set[int], depth: int) -> None:
    h.update(type(value).__qualname__.encode() + b"\x00")
    if isinstance(value, torch.Tensor):
        if id(value) in registered:
            h.update(b"registered")
            return
        t = value.detach().to("cpu")
        h.update(f"{t.dtype}{tuple(t.shape)}{t.layout}".encode())
        try:
            h.update((t.to_dense() if t.layout != torch.strided else t).contiguous().reshape(-1)
                     .view(torch.uint8).numpy().tobytes())
        except (RuntimeError, TypeError):  # a quantized or otherwise unviewable tensor: its values as text
            h.update(repr(t.tolist() if not t.is_quantized else t.dequantize().tolist()).encode())
        return
    if isinstance(value, np.ndarray) and value.dtype != object:
        h.update(f"{value.dtype.str}{value.shape}".encode() + np.ascontiguousarray(value).tobytes())
        return
    if isinstance(value, (str, bytes, int, float, complex, bool, type(None))):
        h.update(repr(value).encode())
        return
    if isinstance(value, nn.Module):
        h.update(b"module" if id(value) in modules else repr(sorted(value.state_dict())).encode())
        return
    if depth >= _MAX_DEPTH or id(value) in seen:
        h.update(b"seen")
        return
    seen.add(id(value))
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    elif isinstance(value, (set, frozenset)):
        items = list(enumerate(sorted(value, key=repr)))
    elif isinstance(value, np.ndarray):
        items = list(enumerate(value.tolist()))
    else:
        members = _members(value)
        if not members:  # a leaf the walk does not enter (a type, a dtype, a builtin): its identity
            h.update(repr(value).encode() if isinstance(value, (torch.dtype, torch.device, torch.Size, type))
                     else str(id(value)).encode())
            return
        items = members
    for k, v in items:
        h.update(repr(k).encode() + b"=")
        _feed(h, v, registered, modules, seen, depth + 1)
