"""Forwarding for the 0.1 module paths (``certun.accountant.schedule``, ``certun.accountant.planner``).

In 0.2 the accountant's implementation modules became private; their public names are importable from
:mod:`certun.accountant` itself. The old paths keep working through 0.2 with a
:class:`DeprecationWarning` and will be removed in 0.3.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def forwarder(old: str, names: dict[str, str], public: str = "certun.accountant") -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that serves each name from ``public`` (where ``names`` says it
    lives), with a warning; the values of ``names`` are modules, the ``certun._validation`` helpers included."""

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module hook has this name)
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        new = names[name]
        where = new if new == "certun._validation" else public
        warnings.warn(f"{old}.{name} is deprecated; import it from {where} instead "
                      "(the old module is removed in certun 0.3)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__
