"""The torch backend's arithmetic and randomness: each step equals the formula, noise is fresh and of
the planned scale, runs reproduce from a seed, and each variant does what docs/theory.md#gradient-clipping,
#model-clipping, #output-perturbation say."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import certun
from certun.backends import UnsafeNoiseWarning, get_backend
from certun.backends.torch._steps import SAFETY
from certun.certificates import load_certificate, open_seed_commitment, verify
from certun.errors import InvalidParameterError

torch.set_num_threads(1)
BACKEND = get_backend("torch")
# Statistical checks use 5-sigma bands: each has a false-alarm rate of at most 5.7e-7 (two-sided normal
# tail at 5) under the null hypothesis that the backend is right; seeds are fixed, so results are stable.
Z5 = 5.0


def _zero_grad_loss(output, target, reduction="none"):
    """A loss with gradient exactly zero, so that parameter increments are pure noise."""
    return (output * 0.0).sum(dim=1)


def _mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def _data(n=24, batch=6, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return [(X[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _gc(T=3, **kw):
    args = dict(C0=3.0, C1=0.05, gamma=0.1, lam=0.5, T=T)
    args.update(kw)
    return certun.plan(1.0, 1e-5, **args)


def _with_sigmas(schedule, sigmas):
    s = dataclasses.replace(schedule, sigmas=tuple(sigmas))
    g = certun.guarantee(s)
    return dataclasses.replace(s, target=g, achieved=g)


def _reference_gc(model, data, s, *, clip, center, noise):
    """Slow oracle: per-sample gradients by a loop of single-sample backward passes, then
    docs/theory.md#gradient-clipping."""
    model = copy.deepcopy(model)
    params = list(model.parameters())
    sizes = [p.numel() for p in params]
    x = _flat(model).clone()
    c = center.clone()
    v = x - c
    x = c + v * min(1.0, s.C0 * (1 - SAFETY) / v.norm().item())
    iterates = []
    for t in range(s.T):
        X, y = data[t % len(data)]
        with torch.no_grad():
            for p, piece in zip(params, torch.split(x, sizes), strict=True):
                p.copy_(piece.view_as(p))
        rows = []
        for i in range(len(X)):
            loss = F.cross_entropy(model(X[i:i + 1]), y[i:i + 1])
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        G = torch.stack(rows)
        if clip in ("per_sample", "ghost"):
            G = G * torch.clamp(s.C1 * (1 - SAFETY) / G.norm(dim=1, keepdim=True), max=1.0)
        g = G.mean(dim=0)
        g = g * min(1.0, s.C1 * (1 - SAFETY) / g.norm().item())
        x = x - s.gammas[t] * (g + s.lam * (x - c)) + s.sigmas[t] * noise[t]
        iterates.append(x.clone())
    return iterates


class _InplaceLinear(nn.Module):
    """Linear layers with in-place ops on a layer's output (handled by certun's own linear path)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h = self.a(x)
        h.mul_(3.0)
        h += x
        return self.out(torch.tanh(h))


def _conv():
    """A model with a 2-d convolution: certun's own per-sample path."""
    return nn.Sequential(nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(2, 3))


def _conv1d():
    """A model with a 1-d convolution, a layer certun has no rule for: per-sample clipping goes through Opacus."""
    return nn.Sequential(nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4, 3))


class _ReusedLinear(nn.Module):
    """One linear layer called twice, plus a layer on token sequences: per-sample gradients materialised."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.tok = nn.Linear(2, 3)
        self.out = nn.Linear(7, 3)

    def forward(self, x):
        h = self.a(torch.tanh(self.a(x)))
        t = torch.tanh(self.tok(x.view(-1, 2, 2))).mean(dim=1)
        return self.out(torch.cat([h, t], dim=1))


MODELS = {"mlp": _mlp, "reused_linear": lambda: _ReusedLinear().double(),
          "inplace_linear": lambda: _InplaceLinear().double(), "conv": lambda: _conv().double(),
          "conv1d": lambda: _conv1d().double()}
FORMULA_CASES = [("mlp", "per_sample"), ("mlp", "ghost"), ("mlp", "batch"), ("inplace_linear", "per_sample"),
                 ("reused_linear", "per_sample"),
                 ("conv", "per_sample"), ("conv", "ghost"), ("conv1d", "per_sample"), ("conv1d", "ghost")]


@pytest.mark.parametrize(("kind", "clip"), FORMULA_CASES)
def test_each_noisy_step_equals_the_formula(kind, clip):
    """Every iterate equals a slow single-sample-loop reference of docs/theory.md#gradient-clipping to float64
    rounding."""
    torch.manual_seed(0)
    model, data = MODELS[kind](), _data()
    s = _gc(T=4)
    d = sum(p.numel() for p in model.parameters())
    noise = torch.randn(s.T, d, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    center = torch.full((d,), 0.1, dtype=torch.float64)
    got = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        r = certun.unlearn(model, data, s, backend=BACKEND, loss_fn=F.cross_entropy, clip=clip, center=center,
                           progress=False,
                            noise_source=lambda k, n: noise[k], callback=lambda t, x: got.append(x.clone()))
    expected = _reference_gc(model, data, s, clip=clip, center=center, noise=noise)
    assert len(got) == s.T
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    uses_opacus = kind == "conv1d" and clip != "batch"
    assert ("opacus" in r.record.extra["clip_implementation"]) == uses_opacus


def test_per_sample_clipping_differs_from_batch_clipping():
    """The clip granularities are really different computations (otherwise the formula test proves little)."""
    model, data = _mlp(), _data()
    s = _gc(T=2)
    out = {}
    for clip in ("per_sample", "batch"):
        out[clip] = _flat(certun.unlearn(model, data, s, backend=BACKEND, loss_fn=F.cross_entropy, clip=clip, seed=3,
                                          progress=False).model)
    assert not torch.allclose(out["per_sample"], out["batch"])


def _noise_increments(noise_mode="fresh", sigmas=(0.5, 1.0, 2.0), seed=11):
    torch.manual_seed(0)
    model = nn.Linear(100, 100)  # d = 10100, float32
    data = [(torch.randn(4, 100), torch.zeros(4, dtype=torch.long))]
    s = _with_sigmas(certun.plan(1.0, 1e-5, C0=1e6, C1=1.0, gamma=0.01, T=len(sigmas)), sigmas)
    xs = [_flat(model).double()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        certun.unlearn(model, data, s, backend=BACKEND, loss_fn=_zero_grad_loss, clip="batch", seed=seed,
                       progress=False,
                        noise_mode=noise_mode, callback=lambda t, x: xs.append(x.double().clone()))
    return [(b - a).numpy() for a, b in itertools.pairwise(xs)], s


def test_noise_is_fresh_iid_and_of_the_planned_scale():
    """With zero gradients each step adds N(0, σ_t² I): planned variance, zero mean, steps uncorrelated.

    Checks (d = 10100): variance ratio within 5·sqrt(2/d) of 1, mean within 5σ/sqrt(d) of 0, and every
    pairwise correlation within 5/sqrt(d) of 0 -- each a 5-sigma band (false alarm <= 5.7e-7 each).
    """
    increments, s = _noise_increments()
    d = increments[0].size
    for n, sigma in zip(increments, s.sigmas, strict=True):
        assert abs(n.var() / sigma**2 - 1) < Z5 * np.sqrt(2 / d)
        assert abs(n.mean()) < Z5 * sigma / np.sqrt(d)
    for i in range(len(increments)):
        for j in range(i + 1, len(increments)):
            assert abs(np.corrcoef(increments[i], increments[j])[0, 1]) < Z5 / np.sqrt(d)


def test_noise_check_detects_a_reused_draw():
    """The audit control (one draw reused) fails the uncorrelatedness check: correlation 1 between steps."""
    increments, _ = _noise_increments("reuse_first_draw_UNSAFE")
    assert np.corrcoef(increments[0], increments[2])[0, 1] == pytest.approx(1.0, abs=1e-6)


def test_unsafe_mode_warns_and_issues_no_certificate():
    """noise_mode='reuse_first_draw_UNSAFE' warns loudly and returns no certificate."""
    with pytest.warns(UnsafeNoiseWarning, match="voids"):
        r = certun.unlearn(_mlp(), _data(), _gc(T=1), backend=BACKEND, loss_fn=F.cross_entropy, progress=False,
                            noise_mode="reuse_first_draw_UNSAFE")
    assert r.certificate is None


def test_seed_reproduces_bit_for_bit_and_leaves_global_rng_alone():
    """Same seed -> identical model (shuffling loader included); other seed differs; caller's RNG untouched."""
    ds = TensorDataset(torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,)))
    loader = DataLoader(ds, batch_size=8, shuffle=True)
    model = _mlp()
    s = _gc(T=6)
    state = torch.random.get_rng_state()
    runs = [certun.unlearn(model, loader, s, backend=BACKEND, loss_fn=F.cross_entropy, seed=seed, progress=False,
                           finetune_epochs=1)
            for seed in (21, 21, 22)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(_flat(runs[0].model), _flat(runs[1].model))
    assert not torch.equal(_flat(runs[0].model), _flat(runs[2].model))
    assert runs[0].seed == 21


def test_certificate_verifies_and_keeps_the_seed_private(tmp_path):
    """The certificate verifies against the returned model, is the written file, and holds no raw seed."""
    seed = 918273645546372
    ds = TensorDataset(torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,)))
    retain = Subset(ds, list(range(25)))
    path = tmp_path / "certificate.json"
    r = certun.unlearn(_mlp(), DataLoader(retain, batch_size=5), _gc(T=3), backend=BACKEND, loss_fn=F.cross_entropy,
                       seed=seed,
                        progress=False, forget_ids=range(25, 30), certificate_path=path)
    report = verify(r.certificate, model=dict(r.model.named_parameters()))
    assert report.ok, [c for c in report.checks if c.status.value == "FAIL"]
    assert load_certificate(path) == r.certificate and r.certificate_path == path
    assert str(seed) not in json.dumps(r.certificate)
    assert open_seed_commitment(r.record.seed_commitment, r.seed_opening)
    rec = r.record
    assert (rec.retain_count, rec.forget_count, rec.id_scheme) == (25, 5, "dataset-index")
    assert rec.noisy_steps == 3 and rec.clipping == "per_sample" and rec.device == "cpu" and rec.dtype == "float64"
    receipt = r.forget_tree.receipt_for(27)
    assert receipt.root == rec.forget_root


def test_forget_ids_overlapping_retain_ids_are_refused():
    """A forget identifier that is also a retain index is refused before any work."""
    ds = TensorDataset(torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,)))
    with pytest.raises(InvalidParameterError, match="forget_ids"):
        certun.unlearn(_mlp(), DataLoader(Subset(ds, range(8)), batch_size=4), _gc(T=1), backend=BACKEND,
                       loss_fn=F.cross_entropy,
                        forget_ids=[7, 8, 9], progress=False)


@pytest.mark.parametrize("mode", ["noise_after_projection", "clip_noise_before_projection"])
def test_model_clipping_keeps_pre_noise_iterates_in_C2_ball(mode):
    """Model clipping with zero injected noise: every iterate stays in B(c, C2) (docs/theory.md#model-clipping)."""
    s = certun.plan(1.0, 1e-5, C0=3.0, C1=0.5, C2=0.4, gamma=0.5, lam=0.1, T=5, variant="model_clipping", mode=mode)
    d = 51
    c = torch.full((d,), 0.2, dtype=torch.float64)
    dists = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        r = certun.unlearn(_mlp(), _data(), s, backend=BACKEND, loss_fn=F.cross_entropy, clip="batch", center=c,
                           progress=False,
                            noise_source=lambda k, n: torch.zeros(n), postprocess="none",
                            callback=lambda t, x: dists.append((x - c).norm().item()))
    assert len(dists) == 5 and max(dists) <= s.C2
    assert r.record.clipping == ("batch" if mode == "clip_noise_before_projection" else None)


def test_output_perturbation_is_projection_plus_planned_noise():
    """Output perturbation: the deviation from Π_C0(x̂) has standard deviation σ0 (5-sigma band)."""
    torch.manual_seed(0)
    model = nn.Linear(100, 100)
    x_hat = _flat(model).double()
    s = certun.plan(1.0, 1e-5, C0=1.0, variant="output_perturbation")
    r = certun.unlearn(model, [(torch.randn(2, 100), torch.zeros(2, dtype=torch.long))], s, backend=BACKEND,
                        loss_fn=F.cross_entropy, seed=4, postprocess="none", progress=False)
    projected = x_hat * min(1.0, (1 - SAFETY) * s.C0 / x_hat.norm().item())
    dev = (_flat(r.model).double() - projected).numpy()
    assert abs(dev.var() / s.sigma0**2 - 1) < Z5 * np.sqrt(2 / dev.size)
    assert r.history["loss"] == [] and r.record.noisy_steps == 0


def test_postprocess_projection_and_finetuning_are_recorded():
    """project_C0 puts the noisy iterate back in the C0 ball; fine-tuning runs epochs × batches SGD steps."""
    model, data = _mlp(), _data()
    s = _gc(T=3, C1=1.0, gamma=1.0)
    r = certun.unlearn(model, data, s, backend=BACKEND, loss_fn=F.cross_entropy, seed=2, progress=False)
    assert _flat(r.model).norm().item() <= s.C0
    r2 = certun.unlearn(model, data, s, backend=BACKEND, loss_fn=F.cross_entropy, seed=2, progress=False,
                        finetune_epochs=2,
                         finetune_lr=0.1)
    assert r2.record.finetune == {"epochs": 2, "lr": 0.1, "steps": 8}
    assert len(r2.history["ft_loss"]) == 8 and len(r2.history["loss"]) == 3
    assert r2.history["sigma"] == list(s.sigmas)


def test_retrain_reinitialises_and_claims_exactness():
    """Retrain re-initialises (reset_parameters or model_factory), trains on retain data, claims eps = delta = 0."""
    model, data = _mlp(), _data()
    s = certun.Schedule(variant="retrain", T=0, target=certun.Guarantee(0.0, 0.0),
                        achieved=certun.Guarantee(0.0, 0.0))
    r = certun.unlearn(model, data, s, backend=BACKEND, loss_fn=F.cross_entropy, seed=1, finetune_epochs=1,
                       progress=False)
    assert r.certificate["claim"]["eps"] == 0.0
    assert not torch.allclose(_flat(r.model), _flat(model))
    tiny = dict(finetune_epochs=1, finetune_lr=1e-300, progress=False, seed=1)
    factory_model = _mlp(seed=5)
    r2 = certun.unlearn(model, data, s, backend=BACKEND, loss_fn=F.cross_entropy, model_factory=lambda: factory_model,
                        **tiny)
    torch.testing.assert_close(_flat(r2.model), _flat(factory_model), rtol=0, atol=0)


def test_progress_false_is_silent(capsys):
    """progress=False writes nothing to stdout or stderr."""
    certun.unlearn(_mlp(), _data(), _gc(T=2), backend=BACKEND, loss_fn=F.cross_entropy, progress=False,
                   finetune_epochs=1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
