"""The numpy reference backend: its step functions, its hand-derived gradients, and whole runs."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import certun
from certun.backends import UnsafeNoiseWarning, get_backend
from certun.backends import numpy_steps as ns
from certun.backends.numpy_backend import LinearModel, batches, gradient
from certun.certificates import open_seed_commitment, verify
from certun.errors import InvalidParameterError, UnlearningRunError

seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _data(seed=0, n=48, d_in=4, k=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d_in))
    y = rng.integers(0, k, n)
    model = LinearModel(rng.normal(size=(k, d_in)), rng.normal(size=k))
    return model, batches(X, y, 8)


def _gc(T=6, **kw):
    args = dict(C0=2.0, C1=0.5, gamma=0.05, T=T)
    args.update(kw)
    return certun.plan(1.0, 1e-5, **args)


# ---------------------------------------------------------------- step functions
@given(seed=seeds, d=st.integers(1, 500), C=st.floats(1e-3, 1e3), scale=st.sampled_from([1e-3, 1.0, 1e4]))
def test_numpy_clip_and_project_stay_inside(seed, d, C, scale):
    """numpy clip/projection results have norm <= C (the reference keeps the same safety margin)."""
    v = np.random.default_rng(seed).normal(size=d) * scale
    assert np.linalg.norm(ns.clip(v, C)) <= C
    c = np.random.default_rng(seed + 1).normal(size=d)
    assert np.linalg.norm(ns.project_ball(v, C, c) - c) <= C * (1 + 1e-12)


def test_numpy_steps_are_functional():
    """numpy step functions never modify their inputs."""
    x, g = np.ones(5), np.full(5, 3.0)
    x0, g0 = x.copy(), g.copy()
    ns.gc_step(x, g, gamma=0.1, lam=0.5, C1=0.1)
    ns.mc_step(x, g, gamma=0.1, lam=0.5, C2=0.5, sigma=1.0, mode="clip_noise_before_projection", C1=0.1,
               noise=np.zeros(5))
    ns.project_ball(x, 0.1)
    assert np.array_equal(x, x0) and np.array_equal(g, g0)


def test_numpy_add_noise_requires_a_source():
    """Without a generator or injected noise, add_noise refuses instead of adding nothing."""
    with pytest.raises(InvalidParameterError, match="rng"):
        ns.add_noise(np.zeros(3), 1.0)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("loss", ["cross_entropy", "logistic", "squared"])
def test_gradient_matches_finite_differences(loss):
    """The hand-derived minibatch gradient equals central finite differences of the mean loss."""
    rng = np.random.default_rng(3)
    k = 1 if loss == "logistic" else 3
    model = LinearModel(rng.normal(size=(k, 4)), rng.normal(size=k), loss)
    X = rng.normal(size=(7, 4))
    y = {"cross_entropy": rng.integers(0, 3, 7), "logistic": rng.integers(0, 2, (7, 1)).astype(float),
         "squared": rng.normal(size=(7, 3))}[loss]
    _, g = gradient(model, X, y, clip=None, C1=None)
    x0, h = model.flat(), 1e-6
    fd = np.empty_like(x0)
    for i in range(x0.size):
        e = np.zeros_like(x0)
        e[i] = h
        plus = model.with_flat(x0 + e).losses_and_residuals(X, y)[0].mean()
        minus = model.with_flat(x0 - e).losses_and_residuals(X, y)[0].mean()
        fd[i] = (plus - minus) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


def test_per_sample_clipping_equals_explicit_loop():
    """Per-sample clipped mean gradient equals a loop over single-sample gradients clipped one by one."""
    model, data = _data()
    X, y = data[0]
    _, g = gradient(model, X, y, clip="per_sample", C1=0.3)
    loop = np.mean([ns.clip(gradient(model, X[i:i + 1], y[i:i + 1], clip=None, C1=None)[1], 0.3)
                    for i in range(len(X))], axis=0)
    np.testing.assert_allclose(g, loop, rtol=1e-12, atol=1e-15)
    assert np.linalg.norm(gradient(model, X, y, clip=None, C1=None)[1]) > 0.3  # clipping was active


# ---------------------------------------------------------------- runs
def test_run_issues_a_verifiable_certificate_without_the_seed():
    """A numpy run returns a certificate that verifies, holds only a seed commitment, and opens with it."""
    model, data = _data()
    seed = 987654321123
    result = certun.unlearn(model, data, _gc(), backend="numpy", seed=seed, forget_ids=["a", "b"],
                                          retain_ids=range(48))
    report = verify(result.certificate, model=result.model.named())
    assert report.ok, [c for c in report.checks if c.status.value == "FAIL"]
    assert str(seed) not in json.dumps(result.certificate)
    assert open_seed_commitment(result.record.seed_commitment, result.seed_opening)
    assert result.record.noisy_steps == 6 and result.record.d == model.d
    assert result.record.forget_count == 2 and result.record.retain_count == 48


def test_same_seed_reproduces_and_other_seed_differs():
    """Runs with one seed are bit-identical; another seed gives other noise."""
    model, data = _data()
    s = _gc()
    a = certun.unlearn(model, data, s, backend="numpy", seed=5)
    b = certun.unlearn(model, data, s, backend="numpy", seed=5)
    c = certun.unlearn(model, data, s, backend="numpy", seed=6)
    assert np.array_equal(a.model.flat(), b.model.flat())
    assert not np.array_equal(a.model.flat(), c.model.flat())


def test_starting_model_is_committed_and_a_reused_seed_repeats_no_noise():
    """The certificate commits to the trained model (the private opening opens it), a chained request records
    the released model in plain, and the same seed on a second request draws other noise (zero gradients)."""
    from certun.certificates import model_digest, open_model_commitment

    rng = np.random.default_rng(0)
    model = LinearModel(rng.normal(size=(3, 4)), rng.normal(size=3))
    data = batches(rng.normal(size=(8, 4)), np.zeros(8, dtype=int), 8)
    s = certun.plan(1.0, 1e-5, C0=1e6, C1=1.0, gamma=1e-9, T=1)
    first = certun.unlearn(model, data, s, backend="numpy", seed=5, postprocess="none")
    before = first.certificate["artifacts"]["model_before"]
    assert "root" not in before and open_model_commitment(before, first.model_before_opening)
    assert first.model_before_opening["root"] == model_digest(model.named()).root
    second = certun.unlearn(first.model, data, s, backend="numpy", seed=5, postprocess="none",
                            previous=first.certificate)
    released = first.certificate["artifacts"]["unlearned_model"]["root"]
    assert second.certificate["artifacts"]["model_before"]["root"] == released
    n1, n2 = first.model.flat() - model.flat(), second.model.flat() - first.model.flat()
    assert not np.allclose(n1, n2, rtol=1e-3)


def test_no_seed_draws_a_fresh_os_key():
    """Without a seed the key comes from the OS, fresh per run: no seed is returned, the openings differ."""
    model, data = _data()
    r1 = certun.unlearn(model, data, _gc(T=1), backend="numpy")
    r2 = certun.unlearn(model, data, _gc(T=1), backend="numpy")
    assert r1.seed is None and r1.seed_opening["origin"] == "os"
    assert r1.seed_opening["secret"] != r2.seed_opening["secret"]
    assert r1.record.noise["key_origin"] == "os" and r1.record.noise["key_bits"] >= 128


def test_postprocess_projects_back_into_C0_ball():
    """With postprocess='project_C0' the result is in the C0 ball around the centre; with 'none' it is not."""
    model, data = _data()
    s = _gc()
    c = np.full(model.d, 0.25)
    inside = certun.unlearn(model, data, s, backend="numpy", seed=1, center=c)
    outside = certun.unlearn(model, data, s, backend="numpy", seed=1, center=c, postprocess="none")
    assert np.linalg.norm(inside.model.flat() - c) <= s.C0
    assert np.linalg.norm(outside.model.flat() - c) > s.C0


def test_output_perturbation_noise_has_planned_scale():
    """Output perturbation adds noise of standard deviation σ0 to the projected model (5-sigma band)."""
    rng = np.random.default_rng(0)
    model = LinearModel(rng.normal(size=(50, 100)), rng.normal(size=50))
    s = certun.plan(1.0, 1e-5, C0=1.0, variant="output_perturbation")
    r = certun.unlearn(model, [(np.zeros((1, 100)), np.zeros(1, int))], s, backend="numpy", seed=3,
                                     postprocess="none")
    dev = r.model.flat() - ns.project_ball(model.flat(), 1.0)
    d = dev.size
    assert abs(dev.var() / s.sigma0**2 - 1) < 5 * np.sqrt(2 / d)


def test_retrain_starts_from_zero_or_center_and_claims_exactness():
    """Retrain trains from zeros (or the centre) on retain data only; its certificate claims eps = delta = 0."""
    model, data = _data()
    s = certun.Schedule(variant="retrain", T=0, target=certun.Guarantee(0.0, 0.0),
                        achieved=certun.Guarantee(0.0, 0.0))
    r = certun.unlearn(model, data, s, backend="numpy", finetune_epochs=1, finetune_lr=0.1)
    manual = np.zeros(model.d)
    for X, y in data:
        manual = manual - 0.1 * gradient(model.with_flat(manual), X, y, clip=None, C1=None)[1]
    np.testing.assert_allclose(r.model.flat(), manual, rtol=1e-12, atol=1e-15)
    assert r.certificate["claim"]["eps"] == 0.0 and r.certificate["claim"]["delta"] == 0.0
    with pytest.raises(InvalidParameterError, match="finetune_epochs"):
        certun.unlearn(model, data, s, backend="numpy")


def _recovered_noise(model, data, s, iterates):
    """z_t = (x_{t+1} − gc_step(x_t, g_t)) / σ_t, recovered from the recorded iterates (λ = 0, no centre)."""
    x = ns.project_ball(model.flat(), s.C0)
    out = []
    for t, x_next in enumerate(iterates):
        X, y = data[t % len(data)]
        g = gradient(model.with_flat(x), X, y, clip="per_sample", C1=s.C1)[1]
        out.append((x_next - ns.gc_step(x, g, gamma=s.gammas[t], lam=0.0, C1=s.C1)) / s.sigmas[t])
        x = x_next
    return out


def test_unsafe_noise_mode_warns_reuses_one_draw_and_issues_no_certificate():
    """The audit control adds the same draw every step, warns, and never issues a certificate."""
    model, data = _data()
    s = _gc(T=4, lam=0.0)
    for mode in ("fresh", "reuse_first_draw_UNSAFE"):
        iterates: list[np.ndarray] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = certun.unlearn(model, data, s, backend="numpy", seed=1, noise_mode=mode,
                                             callback=lambda t, x, acc=iterates: acc.append(x.copy()))
        z = _recovered_noise(model, data, s, iterates)
        same = all(np.allclose(z[0], zt, atol=1e-9) for zt in z[1:])
        unsafe = mode != "fresh"
        assert same is unsafe
        assert (r.certificate is None) is unsafe
        assert any(issubclass(w.category, UnsafeNoiseWarning) for w in caught) is unsafe


def test_bad_inputs_raise_clear_errors(tmp_path):
    """Empty data, wrong shapes, NaN losses and bad options raise and write no certificate."""
    model, data = _data()
    s = _gc()
    path = tmp_path / "c.json"
    backend = get_backend("numpy")
    with pytest.raises(UnlearningRunError, match="empty"):
        certun.unlearn(model, [], s, backend=backend, certificate_path=path)
    with pytest.raises(UnlearningRunError, match="inputs of shape"):
        certun.unlearn(model, [(np.zeros((4, 9)), np.zeros(4, int))], s, backend=backend, certificate_path=path)
    nan_data = [(np.full((4, 4), np.nan), np.zeros(4, int))]
    with pytest.raises(UnlearningRunError, match="non-finite"):
        certun.unlearn(model, nan_data, s, backend=backend, certificate_path=path)
    assert not path.exists()
    for kwargs, name in [({"clip": "ghost"}, "clip"), ({"clip": "sample"}, "clip"), ({"seed": -1}, "seed"),
                         ({"finetune_lr": 0.0}, "finetune_lr"), ({"postprocess": "project"}, "postprocess"),
                         ({"center": np.zeros(3)}, "center")]:
        with pytest.raises(InvalidParameterError, match=name):
            certun.unlearn(model, data, s, backend=backend, **kwargs)
    with pytest.raises(InvalidParameterError, match="schedule"):
        certun.unlearn(model, data, s.to_dict(), backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        with pytest.raises(InvalidParameterError, match="certificate_path"):
            certun.unlearn(model, data, s, backend=backend, noise_mode="reuse_first_draw_UNSAFE", certificate_path=path)


def test_certificate_written_atomically_and_matches(tmp_path):
    """certificate_path receives exactly the returned certificate."""
    from certun.certificates import load_certificate

    model, data = _data()
    path = tmp_path / "cert.json"
    r = certun.unlearn(model, data, _gc(), backend="numpy", seed=2, certificate_path=path)
    assert r.certificate_path == path
    assert load_certificate(path) == r.certificate
    assert [p.name for p in tmp_path.iterdir()] == ["cert.json"]


def test_varying_schedule_uses_each_steps_sigma_and_gamma():
    """A schedule with per-step σ_t, γ_t is run step by step with those values (recorded in history)."""
    model, data = _data()
    s = _gc(T=3)
    s = dataclasses.replace(s, sigmas=(1.0, 2.0, 3.0), gammas=(0.01, 0.02, 0.03))
    s = dataclasses.replace(s, achieved=certun.guarantee(s), target=certun.guarantee(s))
    r = certun.unlearn(model, data, s, backend="numpy", seed=0)
    assert r.history["sigma"] == [1.0, 2.0, 3.0] and r.history["gamma"] == [0.01, 0.02, 0.03]
