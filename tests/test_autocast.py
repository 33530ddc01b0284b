"""bfloat16 autocast of the noisy phase's forward and backward: the clipping bound still holds, measured in
float64, and the combinations that would not be sound are refused with an error naming the option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import certun
from certun.backends.torch._grad import GradientComputer
from certun.backends.torch._model import FlatParameters
from certun.errors import InvalidParameterError


def _cnn():
    return nn.Sequential(nn.Conv2d(2, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 9, 16),
                         nn.LayerNorm(16), nn.Linear(16, 3))


class _Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        layer = nn.TransformerEncoderLayer(16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)).mean(dim=1))


def _inputs(kind, batch, gen):
    if kind == "cnn":
        return 30.0 * torch.randn(batch, 2, 5, 5, generator=gen)  # large gradients: clipping is active
    return torch.randint(0, 20, (batch, 5), generator=gen)


@pytest.mark.parametrize("kind", ["cnn", "transformer"])
@pytest.mark.parametrize("mode", ["per_sample", "ghost"])
def test_clipped_gradient_stays_within_C1_in_float64_under_bf16_autocast(kind, mode):
    """One sample per batch, so the gradient written is that sample's clipped gradient: its float64 norm must be
    at most C1 (bfloat16 norms, 2^-8 relative error, would overshoot the 1e-5 margin). Several batches, each
    checked, and autocast must really have run (a layer output in bfloat16)."""
    torch.manual_seed(0)
    model = _cnn() if kind == "cnn" else _Transformer()
    names = tuple(n for n, _ in model.named_parameters())
    flat = FlatParameters(names, [p for _, p in model.named_parameters()], device=torch.device("cpu"),
                          dtype=torch.float32)
    seen = []
    handle = model.get_submodule("6" if kind == "cnn" else "head").register_forward_hook(
        lambda m, i, o: seen.append(o.dtype))
    C1 = 1e-3
    computer = GradientComputer(model, flat, F.cross_entropy, mode=mode, C1=C1, autocast=torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    try:
        for _ in range(6):
            computer.compute(_inputs(kind, 1, gen), torch.randint(0, 3, (1,), generator=gen))
            norm = float(torch.linalg.vector_norm(flat.g, dtype=torch.float64))
            assert 0.0 < norm <= C1
    finally:
        handle.remove()
        computer.close()
        flat.release()
    assert seen[0] == torch.float32 or kind == "transformer"  # first step: the sum check, no autocast
    assert torch.bfloat16 in seen


def _data(batch=8, batches=2):
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 2, 5, 5, generator=gen), torch.randint(0, 3, (batch,), generator=gen))
            for _ in range(batches)]


def _plan():
    return certun.plan(1.0, 1e-5, C0=0.1, C1=1.0, gamma=1e-3, T=3)


@pytest.mark.parametrize("clip", ["per_sample", "batch"])
def test_a_bf16_run_is_certified_and_says_so(clip):
    torch.manual_seed(0)
    run = certun.unlearn(_cnn(), _data(), _plan(), backend="torch", loss_fn=F.cross_entropy, clip=clip, seed=0,
                         progress=False, autocast="bf16")
    assert "bfloat16 autocast" in run.record.extra["clip_implementation"]
    assert run.record.dtype == "float32"  # parameters, and the gradient buffer, stay float32


@pytest.mark.parametrize("value", ["fp16", "float16", torch.float16])
def test_float16_autocast_is_refused_with_the_reason(value):
    with pytest.raises(InvalidParameterError, match="underflow"):
        certun.unlearn(_cnn(), _data(), _plan(), backend="torch", loss_fn=F.cross_entropy, progress=False,
                       autocast=value)


@pytest.mark.parametrize("value", ["int8", "", True, 16, ["bf16"]])
def test_unknown_autocast_values_are_refused(value):
    with pytest.raises(InvalidParameterError, match="autocast"):
        certun.unlearn(_cnn(), _data(), _plan(), backend="torch", loss_fn=F.cross_entropy, progress=False,
                       autocast=value)


def test_autocast_on_a_float64_model_is_refused():
    """Autocast leaves float64 operations alone: the option would do nothing while the record claimed it."""
    with pytest.raises(InvalidParameterError, match="float64"):
        certun.unlearn(_cnn().double(), [(x.double(), y) for x, y in _data()], _plan(), backend="torch",
                       loss_fn=F.cross_entropy, progress=False, autocast="bf16")


def test_autocast_with_opacus_hooks_is_refused_but_batch_clipping_runs():
    """A Conv1d has no certun per-layer rule, so per-sample clipping would use Opacus' hooks (bfloat16
    per-sample gradients): refused; the same model with clip='batch' runs under autocast."""
    model = nn.Sequential(nn.Flatten(), nn.Unflatten(1, (2, 25)), nn.Conv1d(2, 4, 3), nn.Flatten(),
                          nn.Linear(92, 3))
    with pytest.raises(InvalidParameterError, match="Opacus"):
        certun.unlearn(model, _data(), _plan(), backend="torch", loss_fn=F.cross_entropy, progress=False,
                       autocast="bf16")
    run = certun.unlearn(model, _data(), _plan(), backend="torch", loss_fn=F.cross_entropy, progress=False,
                         clip="batch", autocast="bf16")
    assert "bfloat16" in run.record.extra["clip_implementation"]
