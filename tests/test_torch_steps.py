"""The torch step functions, each alone: projection, clipping, noise, and each variant's update.

Every formula is checked against an independent float64 recomputation (``numpy_steps`` or an inline
expression); float32 radii are checked on the safe side (``<=``), not only for closeness.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from certun.backends import numpy_steps as ref
from certun.backends.torch import _steps as ts
from certun.errors import InvalidParameterError

torch.set_num_threads(1)

scales = st.sampled_from([1e-6, 1e-2, 1.0, 1e3, 1e6])
dims = st.integers(min_value=1, max_value=3000)
radii = st.floats(min_value=1e-3, max_value=1e3)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _vector(seed: int, d: int, scale: float, dtype=torch.float32, k: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (d,) if k is None else (k, d)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


@given(seed=seeds, d=dims, scale=scales, C=radii)
def test_clip_never_exceeds_radius_in_float32(seed, d, scale, C):
    """A clipped float32 vector has norm <= C, computed exactly in float64 (the safety margin works)."""
    g = ts.clip(_vector(seed, d, scale), C)
    assert np.linalg.norm(g.double().numpy()) <= C


@given(seed=seeds, d=dims, scale=scales, C=radii)
def test_clip_matches_reference_and_keeps_direction(seed, d, scale, C):
    """torch clip equals the numpy reference and only rescales (cosine with the input is 1)."""
    g0 = _vector(seed, d, scale, dtype=torch.float64)
    out = ts.clip(g0.clone(), C).numpy()
    np.testing.assert_allclose(out, ref.clip(g0.numpy(), C), rtol=1e-12, atol=0)
    cos = out @ g0.numpy() / (np.linalg.norm(out) * np.linalg.norm(g0.numpy()))
    assert cos == pytest.approx(1.0, abs=1e-12)


def test_clip_leaves_short_vectors_bit_identical():
    """A vector inside the ball is returned unchanged, bit for bit."""
    g = torch.tensor([0.3, -0.4], dtype=torch.float32)
    before = g.clone()
    ts.clip(g, 1.0)
    assert torch.equal(g, before)


def test_clip_zero_vector_stays_zero():
    """The zero gradient is not turned into NaN (0/0) by clipping."""
    g = ts.clip(torch.zeros(5), 1.0)
    assert torch.equal(g, torch.zeros(5))


@given(seed=seeds, d=dims, scale=scales, C=radii, centred=st.booleans())
def test_project_ball_lands_in_ball_around_center(seed, d, scale, C, centred):
    """After projection ``‖x − c‖ <= C`` (float64 check) and the result equals the numpy reference."""
    x0 = _vector(seed, d, scale, dtype=torch.float64)
    c = _vector(seed + 1, d, 1.0, dtype=torch.float64) if centred else None
    x = ts.project_ball(x0.clone(), C, c)
    v = x.numpy() - (0.0 if c is None else c.numpy())
    assert np.linalg.norm(v) <= C * (1 + 1e-12)
    np.testing.assert_allclose(x.numpy(), ref.project_ball(x0.numpy(), C, None if c is None else c.numpy()),
                               rtol=1e-10, atol=1e-10 * max(1.0, scale))


@pytest.mark.parametrize("C", [1e-2, 1e-3, 1e-4])
@pytest.mark.parametrize("centre_scale", [1.0, 5.0])
def test_float32_projection_around_a_far_centre_lands_inside(C, centre_scale):
    """Around a centre with large coordinates, adding c back rounds by ~|c_i|·2^-24 per coordinate; the
    projected float32 point is still within C of c (measured in float64) and not needlessly shrunk."""
    d = 100_000
    c = _vector(0, d, centre_scale)
    x = c + _vector(1, d, 1.0)
    y = ts.project_ball(x.clone(), C, c)
    dist = np.linalg.norm(y.double().numpy() - c.double().numpy())
    assert dist <= C
    assert dist >= 0.5 * C or np.array_equal(y.numpy(), c.numpy())
    rows = ts.project_ball(torch.stack([x, x]), C, c)
    assert all(np.linalg.norm(r.double().numpy() - c.double().numpy()) <= C for r in rows)


def test_projection_falls_back_to_the_centre_when_float32_cannot_do_better():
    """When the radius is below float32's spacing around c, the only representable point inside is c itself."""
    c = torch.full((1000,), 1e4)
    y = ts.project_ball(c + 1.0, 1e-9, c)
    assert torch.equal(y, c)


def test_project_ball_is_global_not_per_tensor():
    """Projection scales the whole vector by one factor, even if every part alone is inside the ball."""
    x = torch.tensor([0.8, 0.0, 0.0, 0.8], dtype=torch.float64)  # two "tensors" of norm 0.8 each
    out = ts.project_ball(x.clone(), 1.0)
    ratio = out / x
    assert torch.linalg.vector_norm(out).item() <= 1.0
    assert ratio[0].item() == pytest.approx(ratio[3].item(), rel=1e-15)
    assert ratio[0].item() < 1.0


@given(seed=seeds, d=st.integers(1, 200), k=st.integers(1, 6), C=radii)
def test_batched_rows_equal_separate_calls(seed, d, k, C):
    """With a leading batch axis each row is projected/clipped as if alone (auditors run K chains at once)."""
    X = _vector(seed, d, 10.0, dtype=torch.float64, k=k)
    P = ts.project_ball(X.clone(), C)
    G = ts.clip(X.clone(), C)
    for i in range(k):
        torch.testing.assert_close(P[i], ts.project_ball(X[i].clone(), C), rtol=1e-14, atol=0)
        torch.testing.assert_close(G[i], ts.clip(X[i].clone(), C), rtol=1e-14, atol=0)


def test_add_noise_draws_fresh_and_reproducible_noise():
    """Two calls on one generator add different noise; the same seed reproduces the same draws."""
    g1 = torch.Generator().manual_seed(7)
    a = ts.add_noise(torch.zeros(1000), 2.0, g1).clone()
    b = ts.add_noise(torch.zeros(1000), 2.0, g1).clone()
    assert not torch.equal(a, b)
    g2 = torch.Generator().manual_seed(7)
    torch.testing.assert_close(ts.add_noise(torch.zeros(1000), 2.0, g2), a, rtol=0, atol=0)


def test_add_noise_uses_injected_noise_exactly():
    """``noise=`` is scaled by σ and added, the generator untouched."""
    z = torch.arange(4, dtype=torch.float64)
    out = ts.add_noise(torch.ones(4, dtype=torch.float64), 0.5, None, noise=z)
    torch.testing.assert_close(out, 1 + 0.5 * z, rtol=0, atol=0)


@given(seed=seeds, d=st.integers(1, 500), gamma=st.floats(1e-4, 0.5), lam=st.floats(0.0, 1.9),
       C1=radii, centred=st.booleans())
def test_gc_step_equals_formula(seed, d, gamma, lam, C1, centred):
    """``gc_step`` computes ``x − γ(clip(g, C1) + λ(x − c))`` (docs/theory.md#gradient-clipping) to float64 rounding."""
    x = _vector(seed, d, 3.0, dtype=torch.float64)
    g = _vector(seed + 1, d, 3.0, dtype=torch.float64)
    c = _vector(seed + 2, d, 1.0, dtype=torch.float64) if centred else None
    out = ts.gc_step(x.clone(), g.clone(), gamma=gamma, lam=lam, C1=C1, center=c).numpy()
    xn, gn, cn = x.numpy(), g.numpy(), (0.0 if c is None else c.numpy())
    gc = gn * min(1.0, C1 * (1 - ts.SAFETY) / np.linalg.norm(gn))
    expected = xn - gamma * (gc + lam * (xn - cn))
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)


def test_weight_decay_is_not_clipped():
    """With zero gradient the step is exactly ``−γλ(x − c)``, even when ``‖λ(x − c)‖ ≫ C1``."""
    x = torch.full((10,), 5.0, dtype=torch.float64)
    c = torch.ones(10, dtype=torch.float64)
    out = ts.gc_step(x.clone(), torch.zeros(10, dtype=torch.float64), gamma=0.1, lam=2.0, C1=0.01, center=c)
    step = out - x
    torch.testing.assert_close(step, -0.1 * 2.0 * (x - c), rtol=1e-15, atol=0)
    assert torch.linalg.vector_norm(step).item() > 0.1 * 0.01 * 100


@pytest.mark.parametrize("mode", ["noise_after_projection", "clip_noise_before_projection"])
@given(seed=seeds, d=st.integers(1, 300), k=st.integers(1, 4), centred=st.booleans())
def test_mc_step_matches_reference_batched(mode, seed, d, k, centred):
    """``mc_step`` (both modes, K chains at once) equals the independent numpy reference
    (docs/theory.md#model-clipping)."""
    x = _vector(seed, d, 2.0, dtype=torch.float64, k=k)
    g = _vector(seed + 1, d, 2.0, dtype=torch.float64, k=k)
    z = _vector(seed + 2, d, 1.0, dtype=torch.float64, k=k)
    c = _vector(seed + 3, d, 1.0, dtype=torch.float64) if centred else None
    kw = dict(gamma=0.2, lam=0.3, C2=1.5, sigma=0.7, mode=mode, C1=0.8)
    out = ts.mc_step(x.clone(), g.clone(), center=c, noise=z, **kw).numpy()
    expected = ref.mc_step(x.numpy(), g.numpy(), center=None if c is None else c.numpy(), noise=z.numpy(), **kw)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)


def test_mc_step_pre_noise_point_is_in_C2_ball():
    """Mode noise_after_projection: subtracting the injected noise leaves a point inside ``B(c, C2)``."""
    x = torch.full((50,), 3.0, dtype=torch.float64)
    z = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = torch.full((50,), 0.5, dtype=torch.float64)
    out = ts.mc_step(x.clone(), torch.ones(50, dtype=torch.float64), gamma=0.1, lam=0.0, C2=1.0, sigma=2.0,
                     center=c, noise=z)
    assert torch.linalg.vector_norm(out - 2.0 * z - c).item() <= 1.0


def test_mc_step_rejects_unknown_mode_and_missing_C1():
    """A misspelt mode or a missing C1 raises InvalidParameterError naming the value."""
    x, g = torch.zeros(3), torch.zeros(3)
    with pytest.raises(InvalidParameterError, match="mode"):
        ts.mc_step(x, g, gamma=0.1, lam=0.0, C2=1.0, sigma=1.0, mode="after", noise=torch.zeros(3))
    with pytest.raises(InvalidParameterError, match="C1"):
        ts.mc_step(x, g, gamma=0.1, lam=0.0, C2=1.0, sigma=1.0, mode="clip_noise_before_projection",
                   noise=torch.zeros(3))


def test_output_perturbation_projects_then_adds_noise():
    """Output perturbation is ``Π_C0(x) + σ0 z`` (docs/theory.md#output-perturbation)."""
    x = torch.full((4,), 10.0, dtype=torch.float64)
    z = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    out = ts.output_perturbation(x.clone(), C0=1.0, sigma0=3.0, noise=z)
    expected = torch.tensor(ref.project_ball(x.numpy(), 1.0)) + 3.0 * z
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=0)
