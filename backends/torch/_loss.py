"""The loss of each sample of a batch, and the batch size: what every gradient path asks of ``loss_fn``."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from certun.errors import CertunError, UnlearningRunError

__all__ = ["batch_size", "per_sample_loss"]


def per_sample_loss(loss_fn: Callable[..., torch.Tensor], output: Any, targets: Any) -> torch.Tensor:
    """The loss of each sample, shape ``(B,)``: ``loss_fn(output, targets, reduction="none")``.

    ``loss_fn`` is a ``torch.nn.functional`` loss or a loss module (whose ``reduction`` attribute is
    set to ``"none"`` for the call). Extra non-batch axes (tokens) are averaged per sample.
    """
    batch = batch_size(targets)
    if hasattr(loss_fn, "reduction") and isinstance(loss_fn, nn.Module):
        saved = loss_fn.reduction
        loss_fn.reduction = "none"
        try:
            losses = _call_loss(loss_fn, output, targets)
        finally:
            loss_fn.reduction = saved
    else:
        if not _accepts_reduction(loss_fn):
            raise UnlearningRunError(
                "loss_fn must accept reduction='none' (like torch.nn.functional.cross_entropy) or be a loss "
                f"module with a .reduction attribute; {getattr(loss_fn, '__name__', type(loss_fn).__name__)} "
                "takes no reduction argument")
        losses = _call_loss(loss_fn, output, targets, reduction="none")
    if not isinstance(losses, torch.Tensor) or losses.dim() == 0 or losses.shape[0] != batch:
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise UnlearningRunError(f"loss_fn returned shape {shape} with reduction='none'; expected one loss per "
                                 f"sample, shape ({batch}, ...)")
    if losses.dim() > 1:
        losses = losses.reshape(batch, -1).mean(dim=1)
    return losses


#: ``_accepts_reduction``'s answers by the loss function's identity (``id`` -> (weak reference, answer)):
#: reading a signature costs about 0.1 ms, paid on every step otherwise (a tenth of a small model's step).
#: Identity, not ``==``: two losses that compare equal may still take different arguments (and hashing
#: user objects could raise). A loss is taken not to change its own signature while it lives. The weak
#: reference keeps no loss alive, and its entry goes when the loss does.
_ACCEPTS: dict[int, tuple[weakref.ref[Any], bool]] = {}


def _accepts_reduction(loss_fn: Callable[..., Any]) -> bool:
    """Whether ``loss_fn`` takes a ``reduction`` keyword (True when its signature cannot be read)."""
    key = id(loss_fn)
    entry = _ACCEPTS.get(key)
    if entry is not None and entry[0]() is loss_fn:
        return entry[1]
    try:
        parameters = inspect.signature(loss_fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return True
    accepts = any(p.name == "reduction" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    try:
        ref = weakref.ref(loss_fn, lambda dead, key=key: _forget(key, dead))
    except TypeError:  # not weakly referenceable: read each time
        return accepts
    _ACCEPTS[key] = (ref, accepts)
    return accepts


def _forget(key: int, dead: weakref.ref[Any]) -> None:
    """Drop a dead loss's entry (only its own: the ``id`` may already name a newer loss)."""
    entry = _ACCEPTS.get(key)
    if entry is not None and entry[0] is dead:
        del _ACCEPTS[key]


def _call_loss(loss_fn: Callable[..., Any], output: Any, targets: Any, **kwargs: Any) -> Any:
    """``loss_fn(output, targets, **kwargs)``; a failure becomes an :class:`UnlearningRunError` saying what it got."""
    try:
        return loss_fn(output, targets, **kwargs)
    except CertunError:
        raise
    except Exception as exc:  # any failure of user code on user data: re-raised, with what it was given
        got = (f"tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor)
               else f"a {type(output).__name__} (the model returned a {type(output).__name__}, not a tensor)")
        tgt = (f"tensor of shape {tuple(targets.shape)}, dtype {str(targets.dtype).replace('torch.', '')}"
               if isinstance(targets, torch.Tensor) else type(targets).__name__)
        raise UnlearningRunError(f"loss_fn failed on a retain batch (model output: {got}; targets: {tgt}): "
                                 f"{type(exc).__name__}: {exc}") from exc


def batch_size(targets: Any) -> int:
    """Number of samples in a batch of targets (its first axis); refuses a 0-d tensor or an unsized object."""
    if isinstance(targets, torch.Tensor):
        if targets.dim() == 0:
            raise UnlearningRunError("targets must have a batch axis; got a 0-d tensor (one sample needs shape (1,))")
        return int(targets.shape[0])
    try:
        return len(targets)
    except TypeError:
        raise UnlearningRunError(f"targets must be a tensor or a sized batch, got {type(targets).__name__}") from None
