"""Retraining from scratch (``variant="retrain"``): the unlearned parameters re-initialised, nothing trained kept."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from certun.backends.torch._model import ModelParts
from certun.errors import InvalidParameterError, UnsupportedModelError

__all__ = ["reinitialise"]


def reinitialise(model: nn.Module, parts: ModelParts, model_factory: Callable[[], nn.Module] | None,
                 center: torch.Tensor | None) -> None:
    """Retrain from scratch: unlearned parameters from the factory, else the centre, else reset_parameters()."""
    named = dict(zip(parts.names, parts.params, strict=True))
    frozen_values = {n: p.detach().clone() for n, p in parts.frozen.items()}
    with torch.no_grad():
        if model_factory is not None:
            fresh = dict(model_factory().named_parameters())
            wrong = [n for n, p in named.items() if n not in fresh or fresh[n].shape != p.shape]
            if wrong:
                raise InvalidParameterError("model_factory", f"<model without matching {wrong[:5]}>",
                                            "a factory building the same architecture")
            for name, p in named.items():
                p.copy_(fresh[name].detach().to(device=p.device, dtype=p.dtype))
        elif center is not None:
            pieces = torch.split(center, [q.numel() for q in named.values()])
            for p, piece in zip(named.values(), pieces, strict=True):
                p.copy_(piece.view_as(p))
        else:
            _reset_parameters(model, named)
        for name, value in frozen_values.items():
            parts.frozen[name].copy_(value)



def _reset_parameters(model: nn.Module, named: dict[str, nn.Parameter]) -> None:
    """Re-initialise with each owning module's ``reset_parameters()``; refuse if any value survives.

    Every unlearned parameter is first filled with NaN, so a parameter that ``reset_parameters()``
    does not know about (a subclass' extra parameter), or re-initialises from its old value, is
    caught: retraining from scratch must not keep anything trained on D (docs/theory.md#retrain).
    """
    ids = {id(p) for p in named.values()}
    problems = []
    for p in named.values():
        p.fill_(float("nan"))
    for path, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) in ids]
        if not own:
            continue
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
        else:
            problems.append((path, f"{type(module).__name__} has no reset_parameters() to re-initialise "
                             "it for retraining", "pass model_factory= (or center=) to unlearn"))
    without_reset = bool(problems)
    for name, p in named.items():
        if not without_reset and bool(torch.isnan(p).any()):
            problems.append((name, "reset_parameters() of its module did not re-initialise this parameter (or "
                             "re-initialised it from its trained value), so retraining would keep values "
                             "trained on D", "pass model_factory= (a function building a freshly initialised "
                             "model) or center="))
    if problems:
        raise UnsupportedModelError(problems)
