"""A user seed never repeats noise across runs whose inputs differ, the retain data included.

Attack: two releases under the same seed whose runs differ only outside the key context (retain
batches given without identifiers, in another content or order; another loss; other values of
public frozen parameters) used to draw the same noise, so ``x₂ − x₁`` cancelled it. Each test
compares the two releases with the noiseless bound on their difference: same start and λ = 0,
so without shared noise they may differ by at most ``Σ 2γ_t C1``; independent noise gives far more.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

import certun
from certun.backends import get_backend
from certun.backends.numpy_backend import LinearModel, batches
from certun.backends.run_key import RETAIN_PREFIX_START, chain_batch

torch.set_num_threads(1)
TORCH = get_backend("torch")


def _schedule():
    return certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, gamma=0.01, T=4)


def _batches(seed, order=None):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(32, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (32,), generator=g)
    out = [(X[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    return out if order is None else [out[i] for i in order]


def _flat(m):
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def _run(data, seed, model=None, loss_fn=F.cross_entropy, **kw):
    if model is None:
        torch.manual_seed(0)
        model = nn.Linear(8, 2).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TORCH.unlearn(model, data, _schedule(), loss_fn=loss_fn, seed=seed, clip="batch", progress=False,
                             postprocess="none", **kw)


def _noiseless_bound():
    return sum(2 * g * _schedule().C1 for g in _schedule().gammas)


def _independent(a, b):
    diff = float((a - b).norm())
    assert diff > 10 * _noiseless_bound(), f"noise cancelled: |R1 - R2| = {diff:.3g}"
    return diff


def test_same_seed_other_retain_contents_draws_independent_noise():
    _independent(_flat(_run(_batches(1), 1234).model), _flat(_run(_batches(2), 1234).model))


def test_same_seed_other_retain_order_draws_independent_noise():
    _independent(_flat(_run(_batches(1), 7).model), _flat(_run(_batches(1, order=[1, 0, 2, 3]), 7).model))


def test_same_seed_other_loss_draws_independent_noise():
    def margin(o, t, reduction="mean"):
        return F.multi_margin_loss(o, t, reduction=reduction)

    _independent(_flat(_run(_batches(1), 99).model), _flat(_run(_batches(1), 99, loss_fn=margin).model))


def _backbone(v):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)).double()
    with torch.no_grad():
        m[0].weight.fill_(v)
    for p in m[0].parameters():
        p.requires_grad_(False)
    return m


def test_same_seed_other_public_frozen_values_draws_independent_noise():
    a = _run(_batches(1), 5, model=_backbone(0.1), frozen="public").model
    b = _run(_batches(1), 5, model=_backbone(-0.3), frozen="public").model
    _independent(_flat(a[1]), _flat(b[1]))


def test_same_inputs_reproduce_the_run_bit_for_bit():
    a, b = _run(_batches(1), 3), _run(_batches(1), 3)
    assert torch.equal(_flat(a.model), _flat(b.model))
    assert a.record.noise["key_derivation"].endswith("certun.noise-key.v2")


def test_numpy_backend_keys_each_step_with_the_retain_data_too():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(32, 4)), rng.integers(0, 2, size=32)
    data = batches(X, y, 8)
    model = LinearModel(np.zeros((2, 4)), np.zeros(2))

    def run(d):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = get_backend("numpy").unlearn(model, d, _schedule(), seed=11, clip="batch", postprocess="none")
        return r.model.flat()

    base = run(data)
    assert np.array_equal(base, run(data))
    assert np.linalg.norm(base - run(data[::-1])) > 10 * _noiseless_bound()


def test_tensors_and_arrays_key_alike_and_every_byte_counts():
    """Both backends hash a batch the same way: dtype, shape and little-endian bytes."""
    X = np.arange(12, dtype=np.float64).reshape(3, 4)
    y = np.array([0, 1, 1], dtype=np.int64)
    h = chain_batch(RETAIN_PREFIX_START, (X, y))
    assert h == chain_batch(RETAIN_PREFIX_START, (torch.from_numpy(X), torch.from_numpy(y)))
    assert h == chain_batch(RETAIN_PREFIX_START, (X.astype(">f8"), y))
    changed = X.copy()
    changed[2, 3] = np.nextafter(changed[2, 3], np.inf)
    assert h != chain_batch(RETAIN_PREFIX_START, (changed, y))
    assert h != chain_batch(RETAIN_PREFIX_START, (X.reshape(4, 3), y))
    assert h != chain_batch(RETAIN_PREFIX_START, (X.astype(np.float32), y))
    assert h != chain_batch(h, (X, y))  # the running hash depends on the batches before
    assert len(h) == 32
