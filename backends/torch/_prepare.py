"""Before a torch run: the model copied and cleaned, frozen parameters declared, a flat centre's order checked."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from certun.backends.torch._hygiene import clear_training_state, stale_state_problems
from certun.backends.torch._model import ModelParts
from certun.errors import InvalidParameterError, UnsupportedModelError

__all__ = ["check_frozen", "check_params_order", "copy_model"]


def copy_model(model: nn.Module, *, inplace: bool) -> nn.Module:
    """The model the run works on: refuses leftover training machinery, copies (unless ``inplace``), and drops
    every stale gradient and Opacus attribute (they never enter, or leave, the run)."""
    problems = stale_state_problems(model)
    if problems:
        raise UnsupportedModelError(problems)
    work = model if inplace else _deepcopy(model)
    clear_training_state(work)
    return work


def check_frozen(parts: ModelParts, frozen: str, params: Any) -> None:
    """Refuse parameters left out of the unlearned set unless ``frozen="public"`` declares them independent of D."""
    if parts.frozen and frozen != "public":
        left_out = "with requires_grad=False" if params is None else "left out of params"
        raise InvalidParameterError(
            "frozen", frozen, f"'public' to assert that the parameters {left_out} "
            f"{sorted(parts.frozen)[:5]}{' ...' if len(parts.frozen) > 5 else ''} are independent of the "
            "training data (docs/theory.md#definition); a frozen parameter trained on D voids the guarantee",
            hint="either pass frozen='public' (the certificate records them as public), or unlearn them too: "
                 + ("set requires_grad=True on every parameter trained on D" if params is None
                    else "add them to params=, or leave params out to unlearn every trainable parameter"))


def _deepcopy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, or a certun error saying how to proceed when the model cannot be copied."""
    try:
        return copy.deepcopy(model)
    except (TypeError, RuntimeError, AttributeError, ValueError, copy.Error) as exc:
        raise UnsupportedModelError([("<model>", f"copy.deepcopy(model) failed ({type(exc).__name__}: {exc})",
                                      "make the model deep-copyable (e.g. no non-leaf tensor attributes), or pass "
                                      "inplace=True to unlearn it in place")]) from exc


def check_params_order(params: Iterable[Any], parts: ModelParts) -> None:
    """A flat centre follows named_parameters() order; refuse ``params`` listed in another order with one."""
    by_id = {id(p): n for n, p in zip(parts.names, parts.params, strict=True)}
    given = [item if isinstance(item, str) else by_id.get(id(item), "") for item in params]
    given = [n for n in given if n in parts.names]
    if given != [n for n in parts.names if n in set(given)]:
        raise InvalidParameterError(
            "center", "<flat vector>", "a state dict when params are listed in another order than the model's "
            f"named_parameters() ({list(parts.names)[:5]}...): a flat centre follows named_parameters() order")


def norm_buffers(parts: Any) -> dict[str, torch.Tensor]:
    """The running-statistics buffers of the model's norm layers, by qualified name."""
    return {f"{name}.{b}" if name else b: t for name, module in parts.norms
            for b, t in module.named_buffers(recurse=False) if t is not None}


def restore_model(parts: Any, params: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor] | None) -> None:
    """Put the unlearned parameters (and the norm statistics, when given) back to their values before the run:
    a failed in-place run never leaves the caller's model holding an iterate no certificate covers."""
    with torch.no_grad():
        for name, p in zip(parts.names, parts.params, strict=True):
            p.copy_(params[name])
        for name, t in norm_buffers(parts).items():
            if buffers is not None and name in buffers:
                t.copy_(buffers[name])

