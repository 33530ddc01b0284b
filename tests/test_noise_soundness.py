"""Attacks on the released bytes' randomness and floating point, each through a real backend.

Each test is an attack from an outside review of the noisy phase: a guessable key, noise shared by
two runs, a float32 sampler with a truncated tail, noise lost to float32 rounding, statistics
computed before the first noise, and a sampler residual larger than the δ slack.
Source: docs/theory.md#floating-point-and-randomness.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import certun
from certun.accountant import Guarantee, Schedule, Variant
from certun.backends import UnsafeNoiseWarning, get_backend
from certun.certificates import Status, open_seed_commitment, verify
from certun.errors import InvalidParameterError

TORCH = get_backend("torch")
NUMPY = get_backend("numpy")
#: Just above sqrt(48 ln 2) = 5.76818: float32 Box-Muller on 24-bit uniforms (u >= 2^-24) never puts a
#: pair outside it, float32 rounding of the radius included.
DISC = 5.7685


def _zero_loss(output, target, reduction="none"):
    """Gradient exactly zero: the parameter increments are pure noise."""
    return (output * 0.0).sum(dim=1)


def _linear(d, value=0.0, dtype=torch.float32):
    model = nn.Linear(d, 1, bias=False).to(dtype)
    with torch.no_grad():
        model.weight.fill_(value)
    return model


def _data(d, dtype=torch.float32):
    return [(torch.zeros(1, d, dtype=dtype), torch.zeros(1, dtype=torch.long))]


def _gc(T=3, **kw):
    args = dict(C0=3.0, C1=0.05, gamma=0.1, lam=0.0, T=T)
    args.update(kw)
    return certun.plan(1.0, 1e-5, **args)


def _increment(d, *, seed, center=None, clip="batch", start=0.1):
    """The noise a torch run added (zero gradient, λ = 0, start inside the ball): released − start."""
    r = certun.unlearn(_linear(d, start, torch.float64), _data(d, torch.float64), _gc(), backend=TORCH,
                       loss_fn=_zero_loss,
                      seed=seed, center=center, clip=clip, postprocess="none", progress=False, retain_ids=[0])
    return r.model.weight.detach().reshape(-1) - start


# ------------------------------------------------------------------------------- keys
def test_same_seed_with_another_centre_gives_other_noise():
    """The key binds the centre: the same seed and start with two centres must not share noise (cancel)."""
    d = 64
    a = _increment(d, seed=11, center=torch.zeros(d, dtype=torch.float64))
    b = _increment(d, seed=11, center=torch.full((d,), 0.01, dtype=torch.float64))
    assert not torch.allclose(a, b)


def test_same_seed_with_another_clip_mode_gives_other_noise():
    """The key binds the clip mode too (every run input enters the key)."""
    d = 64
    a = _increment(d, seed=11, clip="batch")
    b = _increment(d, seed=11, clip="per_sample")
    assert not torch.allclose(a, b)


def test_user_seeds_differing_above_bit_32_give_different_noise():
    """torch's CPU generator keeps 32 bits of its seed; seeds equal modulo 2^32 must still differ.

    A regression guard on the derivation (no step may truncate the secret to 32 bits); the attack on the
    old generator itself is refuted by :func:`test_noise_is_never_drawn_from_torch_generators`."""
    d = 64
    a = _increment(d, seed=5)
    b = _increment(d, seed=5 + 2**32)
    assert not torch.allclose(a, b)


def test_noise_is_never_drawn_from_torch_generators(monkeypatch):
    """No noise comes from torch.randn (32/64-bit seeds, brute-forced); the keyed float64 source draws it."""
    def refuse(*args, **kwargs):
        raise AssertionError("noise drawn from torch.randn")

    monkeypatch.setattr(torch, "randn", refuse)
    a = _increment(16, seed=None)
    assert bool((a != 0).all())


def test_os_keys_are_fresh_per_run_and_recorded():
    """seed=None: a fresh ≥128-bit OS key per run; the certificate records generator, sampler and origin."""
    d = 32
    runs = [certun.unlearn(_linear(d, 0.1, torch.float64), _data(d, torch.float64), _gc(), backend=TORCH,
                           loss_fn=_zero_loss,
                          postprocess="none", progress=False, retain_ids=[0]) for _ in range(2)]
    a, b = (r.model.weight.detach() for r in runs)
    assert not torch.equal(a, b)
    noise = runs[0].certificate["execution"]["noise"]
    assert noise["key_origin"] == "os" and noise["key_bits"] >= 128 and noise["draws"] == 3
    assert runs[0].seed is None and runs[0].seed_opening["origin"] == "os"
    assert open_seed_commitment(runs[0].certificate["randomness"]["seed_commitment"], runs[0].seed_opening)
    assert verify(runs[0].certificate)["noise"].status is Status.PASS


def test_user_seed_key_warns_in_verify():
    """A user seed is testing/audit only, not a secret key: verify says so (WARN), the claim still verifies."""
    X = np.random.default_rng(0).normal(size=(12, 3))
    y = (X[:, 0] > 0).astype(int)
    model = certun.backends.numpy_backend.LinearModel(np.zeros((2, 3)), np.zeros(2))
    r = certun.unlearn(model, certun.backends.numpy_backend.batches(X, y, 4), _gc(), backend=NUMPY, seed=3)
    report = verify(r.certificate)
    assert report["noise"].status is Status.WARN and "user seed" in report["noise"].detail
    assert report.ok and r.seed == 3 and r.seed_opening["seed"] == 3


# ------------------------------------------------------------------------------- sampler shape
def _box_muller_pairs(z: torch.Tensor) -> torch.Tensor:
    """Squared radii of the pairs (j, j+8) of each block of 16, as torch's vectorised float32 randn makes them."""
    z = z.reshape(-1, 16).double()
    return z[:, :8] ** 2 + z[:, 8:] ** 2


def _op_release(d: int, seed: int) -> tuple[torch.Tensor, float]:
    """(y − Π(b))/σ0 of an output-perturbation release with postprocess='none' from b = 0 (so Π(b) = 0)."""
    s = certun.plan(1.0, 1e-5, C0=1.0, variant="output_perturbation")
    r = certun.unlearn(_linear(d), _data(d), s, backend=TORCH, loss_fn=_zero_loss, seed=seed, postprocess="none",
                       progress=False,
                      retain_ids=[0], device="cpu")
    return r.model.weight.detach().reshape(-1) / s.sigma0, s.sigma0


def test_released_noise_is_not_on_the_float32_box_muller_lattice():
    """The sampler attack with power in one release: float32 Box–Muller draws u from a 24-bit grid, so every
    pair radius r satisfies 2^24·exp(−r²/2) = integer. Among pairs with r > 4.5 (≈ 84 at d = 2^22) torch.randn
    puts all on that lattice (to float32 rounding, ~1e-3); a continuous Gaussian puts ~4 % within 0.02 of it."""
    z, _ = _op_release(2**22, seed=1)
    r2 = _box_muller_pairs(z)
    m = 2.0**24 * torch.exp(-r2[r2 > 4.5**2] / 2)
    on_lattice = (m - m.round()).abs() < 0.02
    assert len(m) >= 20
    assert float(on_lattice.double().mean()) < 0.3


@pytest.mark.slow
def test_released_noise_crosses_the_float32_box_muller_disc():
    """The disc attack: float32 Box–Muller never puts a pair (j, j+8) outside radius √(48 ln 2) ≈ 5.7682.

    Over 10 output-perturbation releases of d = 2^25 a Gaussian puts ≈ 10 pairs outside (2^-24 each);
    torch.randn puts none, so a release inside the disc everywhere betrays the truncated sampler (slow: ~1 min).
    """
    outside = 0
    for seed in range(10):
        z, _ = _op_release(2**25, seed)
        outside += int((_box_muller_pairs(z) > DISC**2).sum())
        del z
    assert 1 <= outside <= 40


# ------------------------------------------------------------------------------- float64 master iterate
def test_noise_below_one_float32_rounding_still_accumulates():
    """Per-step noise of 0.05 ulp vanishes if each step rounds to float32; the float64 master keeps it."""
    d, T, start = 256, 400, 1.0
    ulp = float(np.spacing(np.float32(start)))
    s = Schedule(variant=Variant.GRADIENT_CLIPPING, T=T, C0=100.0, C1=1.0, lam=0.0, gammas=(1e-3,) * T,
                 sigmas=(0.05 * ulp,) * T, target=Guarantee(1.0, 1e-5), achieved=Guarantee(1.0, 1e-5))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(T, d, generator=g, dtype=torch.float64).clamp(-9.0, 9.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        r = certun.unlearn(_linear(d, start), _data(d), s, backend=TORCH, loss_fn=_zero_loss, clip="batch",
                           postprocess="none",
                          progress=False, noise_source=lambda k, n: noise[k])
    released = r.model.weight.detach().reshape(-1)
    expected = (start + 0.05 * ulp * noise.sum(dim=0)).to(torch.float32)  # one rounding, at the end
    assert torch.equal(released, expected)
    assert int((released != start).sum()) > d // 2


# ------------------------------------------------------------------------------- pre-noise statistics
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_history_holds_nothing_from_before_the_first_noise(backend):
    """Two different starting models, identical injected noise: every history value at or before the first
    noise (step 0's loss and gradient norm, evaluated at Π(A(D))) is identical, so it cannot identify the start."""
    T, d = 3, 4
    s = _gc(T=T, C1=10.0)
    noise = np.random.default_rng(1).normal(size=(T, d + 1))
    X = np.random.default_rng(2).normal(size=(8, d))
    y = (X[:, 0] > 0).astype(int)
    histories = []
    for start in (0.2, -0.3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnsafeNoiseWarning)
            if backend == "numpy":
                model = certun.backends.numpy_backend.LinearModel(np.full((1, d), start), np.zeros(1), "logistic")
                r = certun.unlearn(model, certun.backends.numpy_backend.batches(X, y, 4), s, backend=NUMPY,
                                   clip="batch",
                                  noise_source=lambda k, n: noise[k][:n])
            else:
                model = nn.Linear(d, 1).double()
                with torch.no_grad():
                    model.weight.fill_(start)
                    model.bias.zero_()
                data = [(torch.tensor(X[i:i + 4]), torch.tensor(y[i:i + 4], dtype=torch.float64).reshape(-1, 1))
                        for i in range(0, 8, 4)]

                def bce(out, t, reduction="mean"):
                    return nn.functional.binary_cross_entropy_with_logits(out, t, reduction=reduction)

                r = certun.unlearn(model, data, s, backend=TORCH, loss_fn=bce, clip="batch", progress=False,
                                  noise_source=lambda k, n: noise[k][:n])
        histories.append(r.history)
    a, b = histories
    assert a["loss"][0] == b["loss"][0] and a["grad_norm"][0] == b["grad_norm"][0]
    assert a["loss"][1] != b["loss"][1]  # after the noise the statistics are kept (and differ)


# ------------------------------------------------------------------------------- tail residual
def test_backend_refuses_a_run_whose_sampler_residual_exceeds_the_delta_slack(tmp_path):
    """Before any work: with δ = 1e-30 the sampler's tail residual over d and T exceeds 1e-13·δ."""
    s = _gc()
    s = dataclasses.replace(s, target=Guarantee(s.target.eps, 1e-30))
    model = _linear(64, 0.1)
    before = model.weight.detach().clone()
    path = tmp_path / "c.json"
    with pytest.raises(InvalidParameterError, match=r"tail residual|Box-Muller"):
        certun.unlearn(model, _data(64), s, backend=TORCH, loss_fn=_zero_loss, progress=False, certificate_path=path)
    assert torch.equal(model.weight, before) and not path.exists()


def test_verify_fails_a_certificate_whose_residual_exceeds_the_delta_slack():
    """verify recomputes the residual from d and T: an understated residual or a δ too small for it FAILs."""
    import certificates_fixtures as fx

    cert = fx.certificate(fx.fixed_schedule("gradient_clipping"))
    assert verify(cert)["noise"].status is Status.PASS
    understated = fx.reseal({**cert, "execution": {**cert["execution"], "noise": {
        **cert["execution"]["noise"], "tail_residual": 0.0}}})
    report = verify(understated)
    assert report["noise"].status is Status.FAIL and "understates" in report["noise"].detail
    tiny = fx.fixed_schedule("gradient_clipping")
    small_delta = fx.reseal({**cert, "claim": {**cert["claim"], "delta": 1e-30},
                             "mechanism": {**cert["mechanism"], "delta": 1e-30}})
    report = verify(small_delta)  # d = 3, T = 100: 200 pairs x 2^-128 = 5.9e-37 > 1e-13 x 1e-30
    assert tiny.T == 100 and report["noise"].status is Status.FAIL and "exceeds" in report["noise"].detail


def test_verify_fails_a_certificate_without_a_noise_record():
    """Certificates made with the old generators (no execution.noise) FAIL, saying why."""
    import certificates_fixtures as fx

    cert = fx.certificate(fx.fixed_schedule("gradient_clipping"))
    old = fx.reseal({**cert, "execution": {k: v for k, v in cert["execution"].items() if k != "noise"}})
    report = verify(old)
    assert report["noise"].status is Status.FAIL and "brute-forced" in report["noise"].detail
