"""Backends that run certified unlearning: PyTorch/Opacus (``"torch"``) and a numpy reference (``"numpy"``).

>>> from certun.backends import get_backend
>>> get_backend("numpy").name
'numpy'

Each backend reads a :class:`~certun.accountant.Schedule` and runs exactly its noisy procedure
(docs/theory.md#gradient-clipping, #model-clipping, #output-perturbation), then optional post-processing on retain
data, and returns a :class:`RunResult` with the run record (:func:`certun.unlearn` issues the certificate from it).
The noisy step itself lives in
:mod:`certun.backends.torch` and :mod:`certun.backends.numpy_steps` as small functions on flat
parameter vectors. Importing this package does not import torch. See docs/backends.md.
"""

from certun.backends._options import (
    After,
    AttributesMode,
    BufferMode,
    ClipMode,
    Clipping,
    FrozenMode,
    Noise,
    NoiseMode,
    Postprocess,
    Unlearned,
    UnsafeNoiseWarning,
)
from certun.backends.base import Backend, RunResult
from certun.backends.registry import available_backends, get_backend, register_backend

__all__ = [
    "After",
    "AttributesMode",
    "Backend",
    "BufferMode",
    "ClipMode",
    "Clipping",
    "FrozenMode",
    "Noise",
    "NoiseMode",
    "Postprocess",
    "RunResult",
    "Unlearned",
    "UnsafeNoiseWarning",
    "available_backends",
    "get_backend",
    "register_backend",
]
