"""Norms used by clipping and projection never undershoot, even at d = 1e7 and 1e8 (float32 inputs, CPU).

A float32 ``vector_norm`` over 1e8 coordinates is about 1 % low, so a projection or clip that trusts
it leaves its radius and the accountant's C0, C1, C2 are false. Every radius here is measured again
in float64 (exact to ~1e-16 relative) on the safe side (``<=``).
"""

from __future__ import annotations

import pytest
import torch

from certun.backends.torch import _steps as ts


def _norm64(x: torch.Tensor, c: torch.Tensor | None = None) -> float:
    v = x if c is None else x.double() - c.double()
    return torch.linalg.vector_norm(v, dtype=torch.float64).item()


def _big(d: int) -> torch.Tensor:
    # positive coordinates: float32 accumulation of the squares drifts one way, its worst case
    g = torch.Generator().manual_seed(d)
    return torch.rand(d, generator=g, dtype=torch.float32).add_(0.5)


@pytest.mark.parametrize("d", [10**7, 10**8], ids=["1e7", "1e8"])
def test_projection_without_centre_stays_inside_at_large_d(d):
    """‖Π_C(x)‖ ≤ C measured in float64 for a float32 x of 1e7 / 1e8 coordinates (1.011·C before)."""
    x = _big(d)
    C = 0.5 * _norm64(x)
    ts.project_ball(x, C)
    assert _norm64(x) <= C


@pytest.mark.parametrize("d", [10**7, 10**8], ids=["1e7", "1e8"])
def test_clip_stays_inside_at_large_d(d):
    """‖clip(g, C1)‖ ≤ C1 measured in float64 for a float32 g of 1e7 / 1e8 coordinates."""
    g = _big(d)
    C1 = 0.5 * _norm64(g)
    ts.clip(g, C1)
    assert _norm64(g) <= C1


def test_projection_with_centre_stays_inside_at_large_d():
    """Around a centre too (the centre path re-measured in float64 already; kept as a regression)."""
    d = 10**7
    x = _big(d)
    c = torch.full((d,), 0.25, dtype=torch.float32)
    C = 0.5 * _norm64(x, c)
    ts.project_ball(x, C, c)
    assert _norm64(x, c) <= C


def test_norm_is_accumulated_in_float64():
    """The step functions' norm of a float32 vector is a float64 value, never the float32 one."""
    x = _big(10**6)
    assert ts.norm(x).dtype == torch.float64
