"""certun's own per-sample paths (Linear, Conv2d, Embedding, LayerNorm, GroupNorm) against a naive loop.

Each model is run in float64 through the gradient computer (``clip="per_sample"`` and ``"ghost"``);
the per-sample squared norms and the clipped mean must equal those of one autograd call per example.
The radius C1 is the median norm, so some samples are clipped and some are not.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from certun.backends.torch._grad import GradientComputer
from certun.backends.torch._layers import LayerPerSample
from certun.backends.torch._model import FlatParameters
from certun.backends.torch._steps import SAFETY
from certun.errors import UnsupportedModelError


class _Tokens(nn.Module):
    """Embedding (padding_idx) -> LayerNorm -> token Linear, mean over tokens, and the embedding called twice."""

    def __init__(self, vocab=7, dim=5, affine=True, padding_idx=0):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=padding_idx)
        self.ln = nn.LayerNorm(dim, elementwise_affine=affine)
        self.lin = nn.Linear(dim, 4)

    def forward(self, ids):
        h = self.ln(self.emb(ids)) + 0.5 * self.emb(ids.flip(1))
        return self.lin(torch.tanh(h)).mean(dim=1)


def _conv(**kw):
    cout = kw.pop("cout", 4)
    return nn.Sequential(nn.Conv2d(2, cout, 3, **kw), nn.Tanh(), nn.Flatten(), nn.LazyLinear(3))


def _mixed():
    """Conv2d, GroupNorm (affine), Conv2d reused twice, LayerNorm over (C, H, W) with bias=False."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
            self.gn = nn.GroupNorm(2, 4)
            self.c2 = nn.Conv2d(4, 4, 1)
            self.ln = nn.LayerNorm((4, 5, 5), bias=False)
            self.fc = nn.Linear(100, 3)

        def forward(self, x):
            h = torch.tanh(self.gn(self.c1(x)))
            h = self.c2(torch.tanh(self.c2(h)))
            return self.fc(self.ln(h).flatten(1))

    return M()


class _InplaceResidual(nn.Module):
    """In-place ops on a layer's output and input after the layer ran (torchvision ResNet style)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.gn = nn.GroupNorm(1, 2)
        self.fc = nn.Linear(50, 3)

    def forward(self, x):
        h = self.conv(x)
        h += x
        h = self.gn(h)
        h.mul_(2.0)
        return self.fc(torch.relu_(h).flatten(1))


CASES = {
    "inplace_residual": (_InplaceResidual, "image"),
    "conv_plain": (lambda: _conv(), "image"),
    "conv_stride_pad_dil": (lambda: _conv(stride=2, padding=2, dilation=2), "image"),
    "conv_groups_nobias": (lambda: _conv(cout=4, groups=2, bias=False), "image"),
    "conv_groups_bias_stride": (lambda: _conv(cout=6, groups=2, stride=(2, 1), padding=(0, 1)), "image"),
    "conv_same_reflect": (lambda: _conv(padding="same", padding_mode="reflect"), "image"),
    "conv_valid_circular": (lambda: _conv(padding=1, padding_mode="circular", stride=(1, 2)), "image"),
    "mixed_gn_ln_reuse": (_mixed, "image"),
    "conv_wide_ghost_norms": (lambda: nn.Sequential(nn.Conv2d(16, 32, 3), nn.Tanh(), nn.Flatten(),
                                                    nn.Linear(288, 3)), "image16"),
    "tokens": (lambda: _Tokens(), "tokens"),
    "tokens_wide_ghost_norms": (lambda: nn.Sequential(nn.Embedding(7, 40), nn.Linear(40, 40), nn.Tanh(),
                                                      nn.Flatten(), nn.Linear(240, 3)), "tokens"),
    "tokens_no_affine_no_pad": (lambda: _Tokens(affine=False, padding_idx=None), "tokens"),
}


def _data(kind, batch=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if kind.startswith("image"):
        channels, side = (16, 5) if kind == "image16" else (2, 5)
        x = torch.randn(batch, channels, side, side, generator=gen, dtype=torch.float64)
    else:
        x = torch.randint(0, 4, (batch, 6), generator=gen)  # small vocabulary: repeated ids and padding
        x[0] = 2  # one sample made of a single repeated id
    return x, torch.randint(0, 3, (batch,), generator=gen)


def _setup(name):
    build, kind = CASES[name]
    torch.manual_seed(0)
    model = build().double()
    x, y = _data(kind)
    model(x)  # materialise lazy layers
    names = tuple(n for n, _ in model.named_parameters())
    params = [p for _, p in model.named_parameters()]
    return model, names, params, x, y


def _naive(model, params, x, y, C1):
    rows = []
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, allow_unused=True)]))
    per = torch.stack(rows)
    norms = per.norm(dim=1)
    C1 = float(norms.median()) if C1 is None else C1
    coef = torch.clamp(C1 * (1 - SAFETY) / norms, max=1.0)
    return norms, (coef[:, None] * per).mean(dim=0), C1


@pytest.mark.parametrize("mode", ["per_sample", "ghost"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_clipped_mean_matches_a_per_example_loop(name, mode):
    model, names, params, x, y = _setup(name)
    norms, expected, C1 = _naive(model, params, x, y, None)
    flat = FlatParameters(names, params, device=torch.device("cpu"), dtype=torch.float64)
    computer = GradientComputer(model, flat, F.cross_entropy, mode=mode, C1=C1)
    try:
        assert computer.layers is not None, computer.implementation
        computer.compute(x, y)
        assert computer.sums_checked
        torch.testing.assert_close(flat.g, expected, rtol=1e-10, atol=1e-12)
        flat.g.fill_(float("nan"))
        computer.compute(x, y)  # later steps: gradients at the layers' outputs only (no weight gradients)
        torch.testing.assert_close(flat.g, expected, rtol=1e-10, atol=1e-12)
        # the norms themselves
        flat.point_grads()
        F.cross_entropy(model(x), y, reduction="sum").backward()
        torch.testing.assert_close(computer.layers.sq_norms(len(y)).sqrt(), norms, rtol=1e-10, atol=1e-12)
    finally:
        computer.close()
        flat.release()


def test_norms_are_float64_for_float32_models():
    """A float32 model still gets float64 squared norms (a float32 sum rounds low at large d)."""
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(32, 3))
    params = list(model.parameters())
    flat = FlatParameters(("0.weight", "2.weight", "2.bias"), params, device=torch.device("cpu"), dtype=torch.float32)
    layers = LayerPerSample(model, flat)
    x = torch.randint(0, 50, (5, 4))
    F.cross_entropy(model(x), torch.zeros(5, dtype=torch.long), reduction="sum").backward()
    assert layers.sq_norms(5).dtype == torch.float64
    layers.close()
    flat.release()


@pytest.mark.parametrize("layer", [nn.Embedding(5, 3, max_norm=1.0), nn.Embedding(5, 3, scale_grad_by_freq=True),
                                   nn.Conv2d(1, 1, 2, padding="same"), nn.Conv1d(1, 1, 2)])
def test_layers_without_a_rule_fall_back(layer):
    """Batch-mixing or in-place embeddings, asymmetric 'same' padding, unknown layers: not certun's path."""
    flat = FlatParameters(tuple(n for n, _ in layer.named_parameters()), list(layer.parameters()),
                          device=torch.device("cpu"), dtype=torch.float32)
    assert not LayerPerSample.applies(layer, flat)
    flat.release()


def test_subclass_of_a_ruled_layer_is_not_assumed_standard():
    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(Doubled(3, 2))
    flat = FlatParameters(("0.weight", "0.bias"), list(model.parameters()), device=torch.device("cpu"),
                          dtype=torch.float32)
    assert not LayerPerSample.applies(model, flat)
    flat.release()


def test_embedding_used_functionally_is_refused():
    """A tied embedding (its weight reused as the output projection) fails the per-sample sum check."""

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(6, 4)

        def forward(self, ids):
            return F.linear(self.emb(ids).mean(dim=1), self.emb.weight)

    model = Tied().double()
    params = list(model.parameters())
    flat = FlatParameters(("emb.weight",), params, device=torch.device("cpu"), dtype=torch.float64)
    computer = GradientComputer(model, flat, F.cross_entropy, mode="per_sample", C1=1.0)
    with pytest.raises(UnsupportedModelError, match="do not sum"):
        computer.compute(torch.randint(0, 6, (4, 3)), torch.randint(0, 6, (4,)))
    computer.close()
    flat.release()


@pytest.mark.parametrize("name", ["mixed_gn_ln_reuse", "conv_wide_ghost_norms", "tokens_wide_ghost_norms", "tokens"])
def test_norms_computed_in_chunks_of_samples_agree(name, monkeypatch):
    """With tiny memory budgets every rule works a few samples at a time: same result."""
    from certun.backends.torch import _rules_other, _rules_outer

    monkeypatch.setattr(_rules_outer, "_CHUNK_ELEMENTS", 100)
    monkeypatch.setattr(_rules_outer, "KEEP_ELEMENTS", 0)
    monkeypatch.setattr(_rules_other, "_GRAM_ELEMENTS", 40)
    test_clipped_mean_matches_a_per_example_loop(name, "per_sample")


def test_layers_called_with_keyword_inputs_are_captured():
    """``layer(input=x)`` hands the forward hook no positional input: it must still be captured."""

    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.fc = nn.Linear(27, 3)

        def forward(self, x):
            return self.fc(input=torch.tanh(self.conv(input=x)).flatten(1))

    torch.manual_seed(0)
    model = Keyword().double()
    x, y = _data("image")
    params = list(model.parameters())
    _, expected, C1 = _naive(model, params, x, y, None)
    flat = FlatParameters(tuple(n for n, _ in model.named_parameters()), params, device=torch.device("cpu"),
                          dtype=torch.float64)
    computer = GradientComputer(model, flat, F.cross_entropy, mode="per_sample", C1=C1)
    try:
        for _ in range(2):
            computer.compute(x, y)
            torch.testing.assert_close(flat.g, expected, rtol=1e-10, atol=1e-12)
    finally:
        computer.close()
        flat.release()
