"""The torch backend's data handling: devices, retain batches, epoch lengths, progress bars, CPU copies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from certun.backends.torch._grad import batch_size
from certun.errors import InvalidParameterError, UnlearningRunError

__all__ = ["cpu_copy", "epoch_length", "pair", "resolve_device", "to_device", "tqdm_bar"]


def tqdm_bar(iterable: Iterable[Any], *, total: int, desc: str, enabled: bool) -> Iterable[Any]:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def resolve_device(device: Any) -> torch.device:
    """``device`` as an available ``torch.device``; CUDA when available and none is given, else CPU.

    Raises:
        InvalidParameterError: not a device, a device type that holds no data (``"meta"``) or that
            this machine does not have (``"cuda"`` without CUDA, an index beyond the device count).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidParameterError("device", device, "a torch device ('cpu', 'cuda', 'cuda:1', ...)") from exc
    if dev.type not in _DEVICE_TYPES:
        raise InvalidParameterError("device", device, "a device that holds data: one of " + ", ".join(_DEVICE_TYPES))
    backend = getattr(torch, dev.type, None) if dev.type != "cpu" else None
    if backend is not None:
        available = getattr(backend, "is_available", lambda: False)()
        if not available:
            raise InvalidParameterError("device", device, f"an available device ({dev.type} is not available here; "
                                        "use 'cpu' or device=None)")
        count = getattr(backend, "device_count", lambda: 1)()
        if dev.index is not None and dev.index >= count:
            raise InvalidParameterError("device", device, f"an index below the {count} {dev.type} device(s) here")
    return dev


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def pair(batch: Any, *, batch_first: bool) -> tuple[Any, Any, int]:
    """``(inputs, targets, batch size)`` of one retain batch; refuses malformed batches with a certun error.

    With ``batch_first`` (per-sample clipping), a tensor input must have the targets' batch size on
    its first axis: per-sample gradients are split along it.
    """
    if not (isinstance(batch, (list, tuple)) and len(batch) == 2):
        raise UnlearningRunError(f"each retain batch must be an (inputs, targets) pair, got "
                                 f"{type(batch).__name__}" + (f" of length {len(batch)}"
                                                              if isinstance(batch, (list, tuple)) else ""))
    inputs, targets = batch
    size = batch_size(targets)
    if batch_first and size and isinstance(inputs, torch.Tensor) and (inputs.dim() == 0 or inputs.shape[0] != size):
        raise UnlearningRunError(f"inputs of shape {tuple(inputs.shape)} do not have the targets' batch size {size} "
                                 "on their first axis; per-sample clipping needs batch-first inputs (use clip='batch' "
                                 "for other layouts)")
    return inputs, targets, size


def epoch_length(data: Iterable[Any], why: str) -> int:
    """Batches per pass of ``data``, for phases that iterate whole passes; refuses unsized or one-shot data.

    An endless stream has no epoch: fine-tuning or recomputing statistics over it would never return.
    """
    from collections.abc import Iterator as IteratorABC

    if isinstance(data, IteratorABC):
        raise InvalidParameterError("data", f"<{type(data).__name__}>", f"a re-iterable with len() for {why} (a "
                                    "DataLoader or a list of batches): an iterator is consumed by the noisy phase")
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidParameterError("data", f"<unsized {type(data).__name__}>", f"a re-iterable with len() for {why}: "
                                    "an endless stream has no epoch") from None
    if n < 1:
        raise UnlearningRunError("the retain data is empty: no batch with at least one sample")
    return n


def cpu_copy(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: t.detach().to("cpu", copy=True) for n, t in named.items()}
