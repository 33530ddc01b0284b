"""One validation vocabulary for every part of certun: each helper returns the clean value or raises
:class:`~certun.errors.InvalidParameterError` naming the parameter, the value and what would be valid.

Real numbers are Python ints and floats, numpy scalars and 0-d (or one-element) arrays and tensors
(duck-typed through ``.item()``, so torch is never imported); bools, strings and non-finite values
are refused. Integers are anything with ``__index__`` except bools.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable
from typing import Any, TypeVar

from certun.errors import InvalidParameterError

__all__ = ["choice", "integer", "real_number", "real_in_range"]

E = TypeVar("E")


def _one_element(x: Any) -> bool:
    size = getattr(x, "size", None)
    if callable(size):  # torch: .size() is the shape, .numel() the count
        numel = getattr(x, "numel", None)
        size = numel() if callable(numel) else None
    return size == 1


def real_number(name: str, value: Any, valid: str = "a finite real number") -> float:
    """``value`` as a finite float if it is one real number; else an error saying ``valid``."""
    x: Any = value
    if not isinstance(x, (int, float)) and callable(getattr(x, "item", None)) and _one_element(x):
        try:
            x = x.item()  # numpy scalar / 0-d array, torch 0-d or one-element tensor
        except (TypeError, ValueError, RuntimeError):
            x = value
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        if isinstance(x, numbers.Real) and not isinstance(x, bool):
            x = float(x)  # fractions.Fraction, decimal-like reals
        else:
            raise InvalidParameterError(name, value, valid)
    try:
        f = float(x)
    except OverflowError:  # an int beyond float range
        raise InvalidParameterError(name, value, valid) from None
    if not math.isfinite(f):
        raise InvalidParameterError(name, value, valid)
    return f


def real_in_range(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> float:
    """A real number in the interval given by ``low``/``high`` (closed unless ``*_open``)."""
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    text = f"a real number in {left}{lo}, {hi}{right}"
    x = real_number(name, value, text)
    if low is not None and (x < low or (low_open and x == low)):
        raise InvalidParameterError(name, value, text)
    if high is not None and (x > high or (high_open and x == high)):
        raise InvalidParameterError(name, value, text)
    return x


def integer(name: str, value: Any, valid: str = "an integer", *, low: int | None = None,
            high: int | None = None) -> int:
    """``value`` as an int (Python int, numpy integer, 0-d integer tensor; never a bool or a float) in [low, high]."""
    if isinstance(value, bool) or "bool" in str(getattr(value, "dtype", "")):
        raise InvalidParameterError(name, value, valid)
    try:
        n = operator.index(value)
    except TypeError:
        raise InvalidParameterError(name, value, valid) from None
    if (low is not None and n < low) or (high is not None and n > high):
        raise InvalidParameterError(name, value, valid)
    return n


def choice(name: str, value: Any, options: Iterable[E]) -> E:
    """``value`` if it is one of ``options`` (or the value of one, for enums); else an error listing them."""
    opts = list(options)
    for option in opts:
        if value is option or value == option or getattr(option, "value", object()) == value:
            return option
    shown = ", ".join(repr(getattr(o, "value", o)) for o in opts)
    raise InvalidParameterError(name, value, f"one of {shown}")
