"""Stub of the run's noise source (the real, cryptographic one replaces this file at merge).

Same API as the real module: keys of :data:`KEY_BYTES` bytes, a positional float64 Gaussian
generator, a description for the certificate and the sampler's tail residual. This stub draws with
numpy's PCG64 seeded from the key: NOT cryptographic, for development only.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import numpy as np

__all__ = ["KEY_BYTES", "NoiseGenerator", "derive_key", "describe", "fresh_key", "seed_secret", "tail_residual"]

KEY_BYTES = 32


def fresh_key() -> bytes:
    """A fresh secret key from the OS's secure source."""
    return secrets.token_bytes(KEY_BYTES)


def seed_secret(seed: int) -> bytes:
    """The secret of a user-given integer seed (testing and audits only)."""
    return hashlib.sha256(b"certun.stub.seed\x00" + str(int(seed)).encode()).digest()


def derive_key(secret: bytes, context: bytes) -> bytes:
    """The run key: a hash of the secret and the run's context."""
    return hashlib.sha256(b"certun.stub.derive\x00" + len(secret).to_bytes(8, "little") + secret + context).digest()


class NoiseGenerator:
    """Standard normals, positional: coordinate i of draw t depends only on (key, t, i)."""

    def __init__(self, key: bytes) -> None:
        self.key = bytes(key)

    def normal(self, draw: int, count: int, *, offset: int = 0) -> np.ndarray:
        """``count`` float64 standard normals of draw ``draw`` starting at coordinate ``offset``."""
        seq = np.random.SeedSequence(entropy=int.from_bytes(self.key, "little"), spawn_key=(int(draw),))
        return np.random.Generator(np.random.PCG64(seq)).standard_normal(offset + count)[offset:]

    def normal_torch(self, draw: int, count: int, *, offset: int = 0, device: Any = None) -> Any:
        """:meth:`normal` as a float64 torch tensor on ``device``."""
        import torch

        return torch.from_numpy(self.normal(draw, count, offset=offset)).to(device)


def describe() -> dict[str, Any]:
    """What the certificate records about the generator."""
    return {"generator": "stub-pcg64", "key_bits": 8 * KEY_BYTES, "sampler": "numpy-ziggurat-float64",
            "max_abs_z": 40.0, "tail_mass_per_pair": 2.0 ** -128, "positional": True}


def tail_residual(pairs: int) -> float:
    """Total-variation mass the sampler misplaces over ``pairs`` Box–Muller pairs."""
    return float(pairs) * 2.0 ** -128
