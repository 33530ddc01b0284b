"""The control noise source shared by the noise tests (one copy, not one per file)."""

from __future__ import annotations

import numpy as np
import torch


class TorchSeeded:
    """What the keyed generator replaces: float32 ``torch.randn`` seeded by 64 bits of the key.

    torch keeps only 32 bits of that seed, its values are float32 Box–Muller on 24-bit uniforms, and
    a piece is not the matching slice of the whole: each check must FAIL on it.
    """

    def __init__(self, key: bytes) -> None:
        self.seed = int.from_bytes(key[:8], "little")

    def normal(self, draw: int, count: int, *, offset: int = 0) -> np.ndarray:
        g = torch.Generator().manual_seed((self.seed + draw) % 2**63)
        return torch.randn(offset + count, generator=g)[offset:].double().numpy()
