"""The one table from :class:`Variant` to :class:`~certun.accountant._mechanism.Mechanism`.

:func:`~certun.plan`, :func:`~certun.guarantee` and ``Schedule`` validation look a variant up here and
nowhere else, so adding a mechanism is one module plus one line in :data:`MECHANISMS` (and its
``Variant`` member). :func:`register_mechanism` adds one at run time (a plug-in, or a test's toy).
"""

from __future__ import annotations

import enum
from typing import Any

from certun.accountant._gradient_clipping import GradientClipping
from certun.accountant._mechanism import Mechanism
from certun.accountant._model_clipping import ModelClipping
from certun.accountant._output_perturbation import OutputPerturbation
from certun.accountant._retrain import Retrain
from certun.accountant._schedule import Variant, option
from certun.errors import InvalidParameterError

__all__ = ["MECHANISMS", "mechanism", "register_mechanism", "unregister_mechanism", "variant_of"]

#: Every mechanism the accountant knows, by variant (docs/accountant.md "Adding a mechanism").
MECHANISMS: dict[Variant, Mechanism] = {
    Variant.GRADIENT_CLIPPING: GradientClipping(),
    Variant.MODEL_CLIPPING: ModelClipping(),
    Variant.OUTPUT_PERTURBATION: OutputPerturbation(),
    Variant.RETRAIN: Retrain(),
}
_BUILT_IN = frozenset(MECHANISMS)


def variant_of(value: Any) -> Variant:
    """The registered variant ``value`` names (a member or its string value); else an error listing them."""
    return option("variant", value, MECHANISMS)


def mechanism(variant: Variant | str) -> Mechanism:
    """The mechanism registered for ``variant`` (a :class:`Variant` or its string value)."""
    return MECHANISMS[variant_of(variant)]


def register_mechanism(variant: Variant, mech: Mechanism) -> None:
    """Add ``mech`` under ``variant``, a member of a ``str`` enum whose value no registered variant has.

    A new library mechanism adds its member to :class:`Variant` and its line to :data:`MECHANISMS`
    instead; this is for plug-ins and tests. Refuses to replace a mechanism already registered.
    """
    if not (isinstance(variant, enum.Enum) and isinstance(variant, str)):
        raise InvalidParameterError("variant", variant, "a member of a str enum (like certun.Variant)")
    if any(variant == known for known in MECHANISMS):
        raise InvalidParameterError("variant", variant.value, "a variant not registered yet",
                                    hint="unregister_mechanism() it first to replace it")
    for name in ("inputs", "conversion", "exact", "validate", "guarantee", "plan", "noise_left"):
        if not hasattr(mech, name):
            raise InvalidParameterError("mechanism", type(mech).__name__, f"an object with {name!r} (see Mechanism)")
    MECHANISMS[variant] = mech


def unregister_mechanism(variant: Variant | str) -> None:
    """Remove a mechanism added by :func:`register_mechanism`; the built-in ones cannot be removed."""
    key = variant_of(variant)
    if key in _BUILT_IN:
        raise InvalidParameterError("variant", key.value, "a variant added with register_mechanism (not built in)")
    del MECHANISMS[key]
