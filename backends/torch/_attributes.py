"""Arrays a model keeps outside its parameters and buffers (``self.mu = X.mean(0)``), found by path.

Such state is neither unlearned nor recorded, so if it was computed from the training data the
released model still carries D and no guarantee holds (docs/theory.md#definition). The torch backend
refuses a model holding any unless ``attributes="public"`` declares it independent of D; then it is
digested and checked unchanged like public buffers. Found: torch tensors, numpy arrays, and
lists/tuples/sets/dicts holding them, in any module's ``__dict__``; modules kept in a plain container
(not registered, so their weights are not parameters of the model); and tensors hidden inside objects:
``functools.partial`` arguments, a function's closure cells and defaults, a bound method's object,
any other object's ``__dict__``/``__slots__``, and (for opaque objects) whatever the garbage collector
says they reference. Not found: Python scalars (``self.scale = float(X.std())``), which cannot be
told from configuration; those written during the run are refused by :mod:`certun.backends.torch._state`.
"""

from __future__ import annotations

import functools
import gc
import itertools
import sys
import types
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["digestible", "unregistered_arrays"]

#: Attributes every ``nn.Module`` has (its registries, hooks and flags): never user state.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_MAX_DEPTH = 6


def composable(key: str) -> bool:
    """Whether a module attribute is one of the two under which torch's composable APIs (``fully_shard``)
    keep their state: only their exact (per-process random) names, never a look-alike name."""
    contract = sys.modules.get("torch.distributed._composable.contract")
    return contract is not None and key in (getattr(contract, "STATE_KEY", None),
                                            getattr(contract, "REGISTRY_KEY", None))


def internal(key: str) -> bool:
    """Whether a module attribute is torch's own machinery rather than user state: ``nn.Module``'s own
    registries, or the composable APIs' state (whose tensors :func:`unregistered_arrays` still checks)."""
    return key in _MODULE_INTERNALS or composable(key)


def _machinery(model: nn.Module) -> tuple[list[torch.Tensor], set[int]]:
    """The device meshes' rank maps and the storages of the parameters' local shards: the only tensors with
    data that ``fully_shard``'s state may hold (its gathered buffers are freed: empty storage)."""
    meshes: list[torch.Tensor] = []
    storages: set[int] = set()
    for p in model.parameters():
        mesh = getattr(p, "device_mesh", None)
        rank_map = vars(mesh).get("_rank_map") if mesh is not None else None
        if isinstance(rank_map, torch.Tensor) and not rank_map.is_floating_point():
            meshes.append(rank_map)
        local = p.to_local() if hasattr(p, "to_local") else p
        storages.add(local.untyped_storage().data_ptr())
    return meshes, storages


def _user_state(value: Any, meshes: list[torch.Tensor], storages: set[int]) -> bool:
    """Whether a tensor found in a composable API's state is not that API's own (data kept there by a user);
    a copy of a rank map (the ranks' numbers, nothing of D) counts as the API's own."""
    if not isinstance(value, torch.Tensor):
        return True
    storage = value.untyped_storage()
    if storage.nbytes() == 0 or storage.data_ptr() in storages:
        return False
    return not any(value.dtype == m.dtype and value.shape == m.shape and torch.equal(value.cpu(), m.cpu())
                   for m in meshes)


def unregistered_arrays(model: nn.Module) -> dict[str, Any]:
    """``path -> array`` for every tensor or numpy array reachable from a module's attributes that is not
    one of the model's parameters or buffers (``"enc.stats['mean']"``, ``"net._cache[0]"``).

    Registered tensors referenced again (``nn.LSTM._flat_weights``) are not reported; an unregistered
    module found in a plain container is reported once, at its own path, if it holds any tensor.
    """
    registered = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    modules = {id(m) for m in model.modules()}
    found: dict[str, Any] = {}
    machinery, hidden = _machinery(model), {}
    for path, module in model.named_modules():
        for key, value in vars(module).items():
            if key in _MODULE_INTERNALS:
                continue
            into = hidden if composable(key) else found
            _walk(f"{path}.{key}" if path else key, value, registered, modules, into, set(), 0)
    found.update((p, v) for p, v in hidden.items() if _user_state(v, *machinery))
    return found


def _walk(path: str, value: Any, registered: set[int], modules: set[int], found: dict[str, Any],
          seen: set[int], depth: int) -> None:
    if isinstance(value, torch.Tensor):
        if id(value) not in registered:
            found[path] = value
        return
    if isinstance(value, np.ndarray):
        if value.dtype != object:
            found[path] = value
            return
        value = value.tolist()
    if isinstance(value, nn.Module):
        if id(value) not in modules and any(True for _ in itertools.chain(value.parameters(), value.buffers())):
            found[path] = value
        return
    if depth >= _MAX_DEPTH or id(value) in seen:
        return
    if isinstance(value, dict):
        seen.add(id(value))
        for k, v in value.items():
            _walk(f"{path}[{k!r}]", v, registered, modules, found, seen, depth + 1)
    elif isinstance(value, (list, tuple)):
        seen.add(id(value))
        for i, v in enumerate(value):
            _walk(f"{path}[{i}]", v, registered, modules, found, seen, depth + 1)
    elif isinstance(value, (set, frozenset)):
        seen.add(id(value))
        for i, v in enumerate(sorted(value, key=repr)):
            _walk(f"{path}{{{i}}}", v, registered, modules, found, seen, depth + 1)
    else:
        seen.add(id(value))
        for suffix, v in _members(value):
            _walk(f"{path}{suffix}", v, registered, modules, found, seen, depth + 1)


#: Values that cannot hold a tensor (or whose contents are never user state): not walked.
_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), type, types.ModuleType,
           types.BuiltinFunctionType, types.BuiltinMethodType, weakref.ref, torch.dtype, torch.device,
           torch.Size, np.dtype, range, slice, type(Ellipsis), type(NotImplemented))


def _members(value: Any) -> list[tuple[str, Any]]:
    """The named values an object holds: partial arguments, closure cells and defaults, a bound method's
    object, ``__dict__``/``__slots__``; for an opaque object, what the garbage collector says it references."""
    if isinstance(value, _LEAVES):
        return []
    if isinstance(value, functools.partial):
        return [(".func", value.func), *((f".args[{i}]", a) for i, a in enumerate(value.args)),
                *((f".keywords[{k!r}]", v) for k, v in value.keywords.items())]
    if isinstance(value, types.MethodType):
        return [(".__self__", value.__self__), (".__func__", value.__func__)]
    if isinstance(value, types.FunctionType):
        out: list[tuple[str, Any]] = []
        names = value.__code__.co_freevars
        for i, cell in enumerate(value.__closure__ or ()):
            try:
                out.append((f".<closure {names[i] if i < len(names) else i}>", cell.cell_contents))
            except ValueError:  # an empty cell
                continue
        out += [(f".__defaults__[{i}]", v) for i, v in enumerate(value.__defaults__ or ())]
        out += [(f".__kwdefaults__[{k!r}]", v) for k, v in (value.__kwdefaults__ or {}).items()]
        return out
    members: list[tuple[str, Any]] = []
    named = False
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        named = True
        members += [(f".{k}", v) for k, v in attrs.items()]
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            named = True
            try:
                members.append((f".{slot}", object.__getattribute__(value, slot)))
            except AttributeError:
                continue
    if named:
        return members
    # opaque (implemented in C, no __dict__ or __slots__): a tensor it references is refused all the same
    return [(f".<ref {i}>", v) for i, v in enumerate(gc.get_referents(value))
            if isinstance(v, (torch.Tensor, np.ndarray, nn.Module, list, tuple, dict))]


def digestible(found: dict[str, Any]) -> dict[str, Any]:
    """The found arrays as CPU copies for a digest; an unregistered module contributes its state dict."""
    out: dict[str, Any] = {}
    for path, value in found.items():
        if isinstance(value, nn.Module):
            for name, tensor in value.state_dict().items():
                out[f"{path}.{name}"] = tensor.detach().to("cpu", copy=True)
        elif isinstance(value, torch.Tensor):
            out[path] = value.detach().to("cpu", copy=True)
        else:
            out[path] = np.array(value, copy=True)
    return out
