"""The torch backend against the numpy reference: identical inputs and injected noise, every step compared.

The numpy backend derives gradients by hand and runs the step functions of ``numpy_steps`` (written
independently of ``torch_steps``), so agreement checks autograd + Opacus + the in-place flat-buffer
arithmetic of the torch backend step by step.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

import certun
from certun.backends import UnsafeNoiseWarning, get_backend
from certun.backends.numpy_backend import LinearModel, batches

torch.set_num_threads(1)

SCHEDULES = {
    "gc": dict(C0=2.0, C1=0.5, lam=0.5, gamma=0.05, T=8),
    "mc_after": dict(C0=2.0, C2=1.5, lam=0.5, gamma=0.05, T=8, variant="model_clipping"),
    "mc_before": dict(C0=2.0, C1=0.5, C2=1.5, lam=0.5, gamma=0.05, T=8, variant="model_clipping",
                      mode="clip_noise_before_projection"),
    "mc_sigma0": dict(C0=2.0, C2=1.5, gamma=0.05, T=5, variant="model_clipping", sigma0=3.0),
    "op": dict(C0=2.0, variant="output_perturbation"),
}
TORCH_LOSSES = {
    "cross_entropy": F.cross_entropy,
    "logistic": F.binary_cross_entropy_with_logits,
    "squared": F.mse_loss,
}


def _problem(loss, seed=0, n=40, d_in=5):
    rng = np.random.default_rng(seed)
    k = 1 if loss == "logistic" else 3
    X = rng.normal(size=(n, d_in))
    y = {"cross_entropy": rng.integers(0, 3, n), "logistic": rng.integers(0, 2, (n, 1)).astype(float),
         "squared": rng.normal(size=(n, 3))}[loss]
    W, b = rng.normal(size=(k, d_in)) * 2, rng.normal(size=k)
    return X, y, W, b


def _run_both(variant, clip, loss, dtype, *, center=True, finetune_epochs=1):
    X, y, W, b = _problem(loss)
    data_np = batches(X, y, 8)
    s = certun.plan(1.0, 1e-5, **SCHEDULES[variant])
    d = W.size + b.size
    Z = np.random.default_rng(7).normal(size=(s.T + 1, d))
    c = np.random.default_rng(8).normal(size=d) * 0.3 if center else None
    xs_np, xs_t = [], []
    common = dict(noise_source=lambda k, n: Z[k], finetune_epochs=finetune_epochs, finetune_lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        r_np = get_backend("numpy").unlearn(
            LinearModel(W, b, loss), data_np, s, clip="batch" if clip == "batch" else "per_sample",
            center=c, callback=lambda t, x: xs_np.append(x.copy()), **common)
        model = nn.Linear(W.shape[1], W.shape[0]).to(dtype)
        with torch.no_grad():
            model.weight.copy_(torch.tensor(W))
            model.bias.copy_(torch.tensor(b))
        tdtype = torch.long if loss == "cross_entropy" else dtype
        data_t = [(torch.tensor(a, dtype=dtype), torch.tensor(t).to(tdtype)) for a, t in data_np]
        r_t = get_backend("torch").unlearn(
            model, data_t, s, loss_fn=TORCH_LOSSES[loss], clip=clip, progress=False,
            center=None if c is None else torch.tensor(c), callback=lambda t, x: xs_t.append(x.double().numpy().copy()),
            **common)
    return s, xs_np, xs_t, r_np, r_t


def _known(values):
    return [v for v in values if v is not None]


CASES = [(v, c) for v in SCHEDULES for c in ("per_sample", "ghost", "batch") if v not in ("op", "mc_sigma0")
         or c == "batch"]


@pytest.mark.parametrize(("variant", "clip"), CASES)
def test_torch_float64_agrees_with_numpy_every_step(variant, clip):
    """float64: every noisy iterate, the losses, the clipped-gradient norms and the final model agree to 1e-10."""
    s, xs_np, xs_t, r_np, r_t = _run_both(variant, clip, "cross_entropy", torch.float64)
    assert len(xs_np) == len(xs_t) == s.T
    for a, b in zip(xs_np, xs_t, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)
    for key in ("loss", "grad_norm"):  # None where no noise had been added yet, in both backends
        assert [v is None for v in r_t.history[key]] == [v is None for v in r_np.history[key]]
    np.testing.assert_allclose(_known(r_t.history["loss"]), _known(r_np.history["loss"]), rtol=1e-10)
    np.testing.assert_allclose(_known(r_t.history["grad_norm"]), _known(r_np.history["grad_norm"]), rtol=1e-9,
                               atol=1e-12)
    np.testing.assert_allclose(r_t.history["ft_loss"], r_np.history["ft_loss"], rtol=1e-10)
    np.testing.assert_allclose(r_t.model.weight.detach().numpy(), r_np.model.weight, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(r_t.model.bias.detach().numpy(), r_np.model.bias, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("loss", ["logistic", "squared"])
def test_other_losses_agree(loss):
    """Logistic and squared losses agree too (per-sample clipping, gradient-clipping variant)."""
    _, xs_np, xs_t, _, _ = _run_both("gc", "per_sample", loss, torch.float64)
    for a, b in zip(xs_np, xs_t, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)


def test_float32_agrees_to_float32_tolerance():
    """In float32 the torch run follows the float64 reference within float32 rounding (1e-4 relative)."""
    _, xs_np, xs_t, _, _ = _run_both("gc", "per_sample", "cross_entropy", torch.float32, finetune_epochs=0)
    for a, b in zip(xs_np, xs_t, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_clipping_was_active_in_the_comparison():
    """The comparison exercises clipping: per-sample and batch clipping give different iterates."""
    _, per_sample, _, _, _ = _run_both("gc", "per_sample", "cross_entropy", torch.float64, finetune_epochs=0)
    _, batch, _, _, _ = _run_both("gc", "batch", "cross_entropy", torch.float64, finetune_epochs=0)
    assert not np.allclose(per_sample[-1], batch[-1])
