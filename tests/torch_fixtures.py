"""Small data and schedules shared by the torch backend tests (one copy, not one per file)."""

from __future__ import annotations

import torch

import certun


def small_batches(n=16, d_in=4, batch=4, seed=0, dtype=torch.float32):
    """A list of ``(X, y)`` minibatches of a seeded 2-class problem."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=dtype)
    y = torch.randint(0, 2, (n,), generator=g)
    return [(X[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def small_gc(T=2, **kw):
    """A gradient-clipping schedule at (1, 1e-5) with C0 = C1 = 1, γ = 0.1 (overridable)."""
    args = dict(C0=1.0, C1=1.0, gamma=0.1, T=T)
    args.update(kw)
    return certun.plan(1.0, 1e-5, **args)
