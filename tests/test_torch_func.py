"""The torch.func per-sample path agrees with a naive per-example loop, also for a transformer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from certun.backends.torch._func import FuncPerSample, per_sample_grad_norms


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 20, dim: int = 16, classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=2, dim_feedforward=32, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.embed(tokens))).mean(dim=1))


def _conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _naive(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, C1: float):
    clipped = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(len(y)):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)
        norm = torch.sqrt(sum(g.double().pow(2).sum() for g in grads))
        scale = min(1.0, C1 * (1 - 1e-5) / float(norm))
        for acc, g in zip(clipped, grads, strict=True):
            acc += scale * g.double()
    return [c / len(y) for c in clipped]


@pytest.mark.parametrize("kind", ["transformer", "conv"])
@pytest.mark.parametrize("C1", [1e-3, 100.0])
def test_agrees_with_a_naive_loop(kind: str, C1: float) -> None:
    torch.manual_seed(0)
    if kind == "transformer":
        model = TinyTransformer()
        x, y = torch.randint(0, 20, (10, 5)), torch.randint(0, 3, (10,))
    else:
        model = _conv()
        x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 3, (10,))
    named = [(n, p) for n, p in model.named_parameters()]
    names, params = [n for n, _ in named], [p for _, p in named]
    out = [torch.empty_like(p) for p in params]
    loss = FuncPerSample(model, names, params, chunk=3).clipped_mean(F.cross_entropy, x, y, C1, out)
    expected = _naive(model, params, x, y, C1)
    for n, got, want in zip(names, out, expected, strict=True):
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-7 * max(C1, 1e-3)), n
    assert torch.isclose(loss, F.cross_entropy(model(x), y), rtol=1e-5)
    total = torch.sqrt(sum(o.double().pow(2).sum() for o in out))
    assert float(total) <= C1


def test_frozen_parameters_get_no_gradient_and_stay_out() -> None:
    torch.manual_seed(1)
    model = _conv()
    head = [("4.weight", model[4].weight), ("4.bias", model[4].bias)]
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    out = [torch.empty_like(p) for _, p in head]
    FuncPerSample(model, [n for n, _ in head], [p for _, p in head]).clipped_mean(F.cross_entropy, x, y, 1e6, out)
    full = torch.autograd.grad(F.cross_entropy(model(x), y), [p for _, p in head])
    for got, want in zip(out, full, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_norms_accumulate_in_float64() -> None:
    g = torch.full((2, 4_000_000), 1e-3, dtype=torch.float32)
    norms = per_sample_grad_norms([g])
    assert norms.dtype == torch.float64
    exact = float(g[0, 0]) * 2000.0  # float32(1e-3) squared is exact in float64
    assert abs(float(norms[0]) - exact) / exact < 1e-9
    assert abs(float(torch.linalg.vector_norm(g[0])) - exact) / exact > 1e-4  # a float32 norm is this far off


# ------------------------------------------------------------------ wired into the backend
def _backend_clipped_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, C1: float, clip: str):
    """The clipped minibatch gradient a one-step backend run used: (x0 − x1)/γ with λ = 0, zero noise, no projection."""
    import warnings

    import certun
    from certun.backends import UnsafeNoiseWarning, get_backend

    s = certun.plan(1.0, 1e-5, C0=1e6, C1=C1, gamma=1e-3, T=1)
    x0 = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        run = get_backend("torch").unlearn(model, [(x, y)], s, loss_fn=F.cross_entropy, clip=clip, progress=False,
                                           postprocess="none", noise_source=lambda k, n: torch.zeros(n),
                                           callback=lambda t, v: seen.append(v.clone()), device="cpu")
    assert s.lam == 0.0 and len(seen) == 1
    return (x0 - seen[0]) / s.gammas[0], run


@pytest.mark.parametrize("clip", ["per_sample", "ghost"])
def test_a_transformer_runs_per_sample_through_torch_func(clip: str) -> None:
    """A 2-layer TransformerEncoder classifier (Opacus refuses its attention) runs with per-sample clipping via
    torch.func, and the clipped gradient the step used is the naive per-example loop's."""
    torch.manual_seed(0)
    model = TinyTransformer().double()
    x, y = torch.randint(0, 20, (8, 5)), torch.randint(0, 3, (8,))
    C1 = 1e-2
    used, run = _backend_clipped_gradient(model, x, y, C1, clip)
    want = torch.cat([g.reshape(-1) for g in _naive(model, list(model.parameters()), x, y, C1)])
    assert torch.allclose(used, want, rtol=1e-7, atol=1e-12)
    assert run.record.clipping == "per_sample"
    assert run.record.extra["clip_implementation"].startswith("torch.func")


@pytest.mark.parametrize("clip", ["per_sample", "ghost"])
def test_a_transformer_with_dropout_passes_the_per_sample_sum_check(clip: str) -> None:
    """Dropout draws other masks under vmap than in a batch forward, so the first-step sum check is made with
    dropout off (it checks how the parameters are used, not the masks): a default transformer (dropout 0.1)
    must not be refused, and its noisy steps run."""
    import certun

    torch.manual_seed(0)
    model = TinyTransformer(dropout=0.1)
    x, y = torch.randint(0, 20, (8, 5)), torch.randint(0, 3, (8,))
    s = certun.plan(1.0, 1e-5, C0=0.1, C1=1.0, gamma=1e-3, T=2)
    run = certun.unlearn(model, [(x, y)], s, backend="torch", loss_fn=F.cross_entropy, clip=clip, seed=0,
                         progress=False)
    assert run.record.extra["clip_implementation"].startswith("torch.func")
    assert model.training  # the check's eval mode is undone


def test_a_forward_that_mixes_the_batch_is_refused_on_the_torch_func_path() -> None:
    """Attack: a forward that subtracts the batch mean makes one sample's gradient depend on the others; the
    first-step sum check (Σ_i g_i against autograd's batch gradient) refuses it instead of clipping the wrong
    gradients."""
    from certun.errors import UnsupportedModelError

    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 1, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = (x - x.mean(dim=0, keepdim=True) + 0.5 * x).unsqueeze(1)
            return self.head(self.attention(h, h, h)[0][:, 0])

    torch.manual_seed(0)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6,))
    with pytest.raises(UnsupportedModelError, match="sum to autograd's batch gradient"):
        _backend_clipped_gradient(Mixer().double(), x, y, 1e-2, "per_sample")
