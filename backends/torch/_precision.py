"""Mixed precision: which autocast the noisy phase's forward and backward may run under, and where not.

``autocast="bf16"`` runs the model's forward pass (and so its backward) under ``torch.autocast`` with
bfloat16, for the noisy phase's gradients only. What stays at float32 or better, and why
(docs/theory.md#floating-point-and-randomness):

* the parameters (float32; autocast casts copies for the matrix products), so the gradient written
  into the flat buffer is float32;
* every clipping norm, accumulated in float64 from the very tensors that are summed (certun's own
  per-layer rules and ``torch.func`` upcast the bfloat16 activations and output gradients before any
  product; the step function re-measures the clipped mean in float64);
* the master iterate (float64), the projection and the noise (a float64 draw added in float64): none
  of them runs inside the autocast region. A bfloat16 noise draw or addition would round ``σ·z`` to 8
  significant bits and change its distribution: never allowed.

Refused: float16 autocast (gradients underflow without loss scaling, and scaling the loss scales the
per-sample gradients that clipping bounds), autocast on float64 parameters (autocast leaves float64
operations alone: the option would do nothing while the certificate said otherwise), and Opacus'
per-sample hooks (their per-sample gradients come out in bfloat16, in a layout certun does not
re-measure). The first step's per-sample sum check runs without autocast: it compares two float32
computations of the same gradient, which bfloat16 rounding would blur.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from certun.errors import InvalidParameterError

__all__ = ["autocast_context", "check_autocast", "check_autocast_dtype"]

_ACCEPTED = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, torch.bfloat16: torch.bfloat16}
_VALID = "None or 'bf16' (bfloat16 autocast of the noisy phase's forward and backward)"


def check_autocast(value: Any) -> torch.dtype | None:
    """The autocast dtype ``value`` asks for (``None``: no autocast), or an error naming what is valid."""
    if value is None:
        return None
    try:
        found = _ACCEPTED.get(value)
    except TypeError:  # unhashable
        found = None
    if found is not None:
        return found
    if value in ("fp16", "float16", "half", torch.float16):
        raise InvalidParameterError("autocast", value, _VALID, "float16 gradients underflow without loss "
                                    "scaling, and a scaled loss scales the per-sample gradients clipping bounds")
    raise InvalidParameterError("autocast", value, _VALID)


def check_autocast_dtype(autocast: torch.dtype | None, dtype: torch.dtype) -> None:
    """Refuse autocast on parameters that are not float32 (autocast leaves float64 operations alone)."""
    if autocast is not None and dtype != torch.float32:
        raise InvalidParameterError("autocast", "bf16", "None for a model whose unlearned parameters are "
                                    f"{str(dtype).replace('torch.', '')}", "bf16 autocast applies to float32 "
                                    "models only; convert with model.float() or leave autocast off")


def autocast_context(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``device`` with ``dtype``, or a context that does nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
