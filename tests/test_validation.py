"""The shared validation vocabulary: natural inputs accepted, everything else named and refused."""

from __future__ import annotations

import enum
import fractions

import numpy as np
import pytest
import torch

from certun._validation import choice, integer, real_in_range, real_number
from certun.errors import InvalidParameterError


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


@pytest.mark.parametrize("value", [2, 2.0, np.float32(2), np.int64(2), np.array(2.0), torch.tensor(2.0),
                                   torch.tensor([2.0]), fractions.Fraction(2)])
def test_real_numbers_in_every_natural_form(value: object) -> None:
    assert real_number("x", value) == 2.0


@pytest.mark.parametrize("value", [True, "2", None, float("nan"), float("inf"), 10**400, np.array([1.0, 2.0]),
                                   complex(1, 0)])
def test_non_real_numbers_are_refused_by_name(value: object) -> None:
    with pytest.raises(InvalidParameterError, match=r"^x="):
        real_number("x", value)


def test_ranges_state_the_interval() -> None:
    assert real_in_range("eps", 1, low=0, high=100, low_open=True) == 1.0
    with pytest.raises(InvalidParameterError, match=r"\(0, 100\]"):
        real_in_range("eps", 0, low=0, high=100, low_open=True)
    with pytest.raises(InvalidParameterError, match=r"\[0, 0.5\]"):
        real_in_range("delta", 0.7, low=0, high=0.5)


def test_integers_and_choices() -> None:
    assert integer("T", np.int32(5), low=0) == 5
    for bad in (True, 5.0, "5", -1):
        with pytest.raises(InvalidParameterError, match=r"^T="):
            integer("T", bad, "an integer >= 0", low=0)
    assert choice("colour", "red", Colour) is Colour.RED
    assert choice("clip", "batch", ("per_sample", "batch")) == "batch"
    with pytest.raises(InvalidParameterError, match="one of 'red', 'blue'"):
        choice("colour", "green", Colour)
