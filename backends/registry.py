"""A plain registry of backends by name; built-in backends are imported on first use.

``register_backend`` refuses to overwrite a name unless ``force=True``; ``get_backend`` refuses an
unknown name and lists the names that would have worked, built from the registry itself. Nothing is
registered as an import side effect: the built-ins (``"torch"``, ``"numpy"``) are loaded the first
time they are asked for, so importing :mod:`certun.backends` never imports torch.
"""

from __future__ import annotations

import importlib
import threading

from certun.backends.base import Backend
from certun.errors import InvalidParameterError

__all__ = ["available_backends", "get_backend", "register_backend"]

# name -> "module:attribute" of a zero-argument factory; loaded lazily by get_backend.
_BUILTIN = {
    "numpy": "certun.backends.numpy_backend:NumpyBackend",
    "torch": "certun.backends.torch:TorchBackend",
}
_EXTRAS = {"torch": "pip install 'certun[torch]' (needs torch, opacus and tqdm)"}

_registry: dict[str, Backend] = {}
_lock = threading.Lock()


def register_backend(backend: Backend, *, force: bool = False) -> Backend:
    """Register ``backend`` under ``backend.name``; returns it.

    Raises:
        InvalidParameterError: the object is not a :class:`Backend`, its name is empty, or the name is
            already registered (or reserved by a built-in) and ``force`` is false.
    """
    name = getattr(backend, "name", None)
    if not isinstance(name, str) or not name:
        raise InvalidParameterError("backend.name", name, "a non-empty string")
    if not callable(getattr(backend, "unlearn", None)):
        raise InvalidParameterError("backend", type(backend).__name__, "an object with an unlearn(...) method")
    with _lock:
        taken = name in _registry or name in _BUILTIN
        if taken and not force:
            raise InvalidParameterError(
                "backend.name", name, "a name not yet registered",
                hint="pass force=True to replace the registered backend",
            )
        _registry[name] = backend
    return backend


def available_backends() -> tuple[str, ...]:
    """Every name :func:`get_backend` accepts: registered ones and the not-yet-loaded built-ins."""
    return tuple(sorted(set(_registry) | set(_BUILTIN)))


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``, loading a built-in on first use.

    Raises:
        InvalidParameterError: ``name`` is unknown (the message lists the names available), or the
            built-in's dependencies are not installed (the message says what to install).
    """
    with _lock:
        backend = _registry.get(name)
    if backend is not None:
        return backend
    target = _BUILTIN.get(name) if isinstance(name, str) else None
    if target is None:
        raise InvalidParameterError("backend", name, "one of " + ", ".join(repr(n) for n in available_backends()))
    module_name, attribute = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidParameterError(
            "backend", name, "a backend whose dependencies are installed",
            hint=f"{exc}; {_EXTRAS.get(name, 'install its dependencies')}",
        ) from exc
    with _lock:
        return _registry.setdefault(name, getattr(module, attribute)())
