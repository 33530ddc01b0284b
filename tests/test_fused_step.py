"""The backend's fused noisy step against the step functions it replaces: the same released bytes.

The reference below is the torch backend's noisy step as it was before the fusion (one pass per
operation, through :mod:`certun.backends.torch._steps`), kept here as a test-only implementation. Each
run uses keyed noise (the reused draw buffer included), small blocks so that a small model is cut
into many of them with a tail, and radii that make clipping and projection act, or not.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

import certun
from certun.backends import UnsafeNoiseWarning, get_backend
from certun.backends.noise import NoiseGenerator
from certun.backends.torch import _fused, _run, _steps
from certun.errors import InvalidParameterError, UnlearningRunError

torch.set_num_threads(1)


def _segment_norm(run: Any) -> Any:
    """``_steps.norm`` as the fused step measures a whole master-sized vector: with several blocks the norm of
    their float64 norms (one block, and any other vector, as before)."""
    whole, d = _steps.norm, run.flat.d
    blocks = [] if run.fused is None else run.fused.blocks

    def norm(v: torch.Tensor) -> torch.Tensor:
        if not blocks or v.shape != (d,) or len(blocks) == 1:
            return whole(v)
        parts = torch.stack([whole(v[b.start:b.stop]).reshape(()) for b in blocks])
        return torch.linalg.vector_norm(parts).reshape(1)

    return norm


def _reference_step(self: Any, x: torch.Tensor, t: int, batch: Any, draw: Any) -> tuple[torch.Tensor, tuple]:
    """The noisy step before the fusion: the gradient accumulated into the zeroed float32 buffer, the step
    functions (their norms of the master and the gradient summed by blocks, as the fused step's are), then the
    history's norms over whole vectors."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_steps, "norm", _segment_norm(self))
        return _unfused_step(self, x, t, batch, draw)


def _unfused_step(self: Any, x: torch.Tensor, t: int, batch: Any, draw: Any) -> tuple[torch.Tensor, tuple]:
    with torch.no_grad():
        self.flat.x.copy_(x)
    loss = self.computer.compute(*batch)  # into the float32 buffer, then one copy into g64
    g = self.g64.copy_(self.flat.g)
    with torch.no_grad():
        stats = self.unfused_update(x, g, draw(), self.s.gammas[t], self.s.sigmas[t])
    return x, (loss.detach().to(torch.float64), *stats)


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 17), nn.ReLU(), nn.Linear(17, 3))  # d = 275


def _data(dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(4)
    return [((torch.randn(6, 12, generator=gen) * 3).to(dtype), torch.randint(0, 3, (6,), generator=gen))
            for _ in range(3)]


def _unlearn(schedule: certun.Schedule, clip: str, dtype: torch.dtype) -> tuple[dict, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        r = get_backend("torch").unlearn(_model().to(dtype), _data(dtype), schedule, loss_fn=F.cross_entropy, clip=clip,
                                         seed=11, progress=False, postprocess="none")
    return {k: v.detach().numpy().tobytes() for k, v in r.model.state_dict().items()}, r.history


# radii: "tight" makes clipping and projection act at every step; "loose" (with eps = 100, so that the noise
# stays small) leaves them idle at some step
GC = {"tight": dict(C0=0.5, C1=0.05, lam=0.3), "loose": dict(eps=100.0, C0=0.5, C1=100.0, lam=0.0)}
MC_AFTER = {"tight": dict(C0=0.5, C2=1.0, lam=0.3), "loose": dict(eps=100.0, C0=0.5, C2=1e3, lam=0.0)}
MC_BEFORE = {"tight": dict(C0=0.5, C1=0.05, C2=1.0, lam=0.3),
             "loose": dict(eps=100.0, C0=0.5, C1=100.0, C2=1e3, lam=0.2),
             "clip_only": dict(C0=0.5, C1=0.05, C2=1e4, lam=0.0)}
CASES = ([("gc", r, clip) for r in GC for clip in ("batch", "per_sample", "ghost")]
         + [("mc_after", r, "batch") for r in MC_AFTER] + [("mc_before", r, "batch") for r in MC_BEFORE])


def _schedule(variant: str, radii: str) -> certun.Schedule:
    kw = {"gc": GC, "mc_after": MC_AFTER, "mc_before": MC_BEFORE}[variant][radii].copy()
    eps = kw.pop("eps", 1.0)
    if variant == "gc":
        return certun.plan(eps, 1e-5, **kw, gamma=0.05, T=5)
    if variant == "mc_after":
        return certun.plan(eps, 1e-5, **kw, gamma=0.05, T=5, variant="model_clipping")
    return certun.plan(eps, 1e-5, **kw, gamma=0.05, T=5, variant="model_clipping",
                       mode="clip_noise_before_projection")


@pytest.mark.parametrize("block", [64, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("variant", "radii", "clip"), CASES)
def test_fused_step_releases_the_reference_bytes(monkeypatch, variant, radii, clip, dtype, block):
    """Every variant and clipping mode: the released parameters are bit for bit the reference step's, with
    several blocks and with one (where the update pass reuses the norm pass's widened gradient)."""
    schedule = _schedule(variant, radii)
    if block is not None:  # 275 coordinates: four blocks and a tail, cutting across parameters
        monkeypatch.setattr(_fused, "BLOCK", block)
    ones: list[bool] = []
    is_one = _fused._is_one
    monkeypatch.setattr(_fused, "_is_one", lambda f: ones.append(is_one(f)) or ones[-1])
    fused, fused_history = _unlearn(schedule, clip, dtype)
    # tight radii scale (clip or project), loose ones leave the vector alone at some step: both branches are
    # compared. A mean of per-sample gradients clipped to C1 is inside C1 already: the global clip never scales.
    if radii == "tight":
        assert (False in ones) == (variant != "gc" or clip == "batch")
    else:
        assert True in ones
    monkeypatch.setattr(_run.TorchRun, "noisy_step", _reference_step)
    reference, reference_history = _unlearn(schedule, clip, dtype)
    assert fused == reference
    for key in ("grad_norm", "dist"):
        got = [v for v in fused_history[key] if v is not None]
        np.testing.assert_allclose(got, [v for v in reference_history[key] if v is not None], rtol=1e-13, atol=0)


def test_beyond_the_analytic_range_the_step_functions_run(monkeypatch):
    """Above the analytic bound's d the run takes the step functions, which scale and re-measure: the released
    bytes are the unfused step's, whole-vector norms and all (with blocks of 64, the fused step's norms differ)."""
    monkeypatch.setattr(_fused, "_ANALYTIC_D", 100)  # the test model's 275 coordinates are "beyond" it
    monkeypatch.setattr(_fused, "BLOCK", 64)
    built: list[int] = []
    monkeypatch.setattr(_run, "FusedStep", lambda sizes, device: built.append(sum(sizes)))
    for variant in ("gc", "mc_after", "mc_before"):
        schedule = _schedule(variant, "tight")
        got, _ = _unlearn(schedule, "batch", torch.float64)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_run.TorchRun, "noisy_step", _unfused_step)
            assert got == _unlearn(schedule, "batch", torch.float64)[0]
    assert built == []


def _pieces(v: torch.Tensor, sizes: list[int], dtype: torch.dtype) -> list[torch.Tensor]:
    return [p.to(dtype) for p in torch.split(v, sizes)]


@pytest.mark.parametrize("variant", ["gc", "mc_after", "mc_before"])
def test_one_float64_gradient_is_read_in_place_with_the_bits_of_widened_pieces(variant):
    """A gradient handed over as one float64 vector (per-sample paths, distributed runs) is read and scaled in
    place, with no work buffer: the update is bit for bit the one from per-parameter float32 pieces of the same
    values (λ ≠ 0, so clip-noise-before-projection's g + λx is formed once, not twice)."""
    gen = torch.Generator().manual_seed(8)
    sizes = [70, 3, 150, 17]
    g = (torch.randn(240, generator=gen) * 3).to(torch.float64)  # float32 values: widening is exact
    x0, z = torch.randn(240, dtype=torch.float64, generator=gen), torch.randn(240, dtype=torch.float64, generator=gen)
    kw = dict(gamma=0.1, lam=0.3, sigma=0.2)
    kw.update({"gc": dict(C1=0.5), "mc_after": dict(C2=0.7), "mc_before": dict(C1=0.5, C2=0.7)}[variant])
    out = []
    for pieces in ([g.clone()], _pieces(g, sizes, torch.float32), _pieces(g.clone(), sizes, torch.float64)):
        step = _fused.FusedStep(sizes, torch.device("cpu"), block=64)
        x, params = x0.clone(), torch.empty(240)
        stats = getattr(step, variant)(x, pieces, z, params, **kw)
        assert (step.work is None) == (len(pieces) == 1)
        assert torch.equal(params, x.to(torch.float32))
        out.append((x, *stats))
    for other in out[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out[0], other, strict=True))


@pytest.mark.parametrize("variant", ["gc", "mc_after", "mc_before"])
def test_the_step_gives_the_same_bits_at_any_number_of_threads(variant):
    """Several blocks on a CPU: the update's bytes do not depend on torch's thread count (a threaded BLAS dot
    product in a factor-setting norm would make them, and replicated ranks or a rerun on another machine would
    release other bits). The history's statistics may differ in their last bits."""
    gen = torch.Generator().manual_seed(9)
    sizes = [3 * _fused.BLOCK + 5, 2 * _fused.BLOCK - 7, 1000]
    d = sum(sizes)
    g = [torch.randn(n, generator=gen) for n in sizes]
    x0, z = torch.randn(d, dtype=torch.float64, generator=gen), torch.randn(d, dtype=torch.float64, generator=gen)
    kw = dict(gamma=0.1, lam=0.3, sigma=0.2)
    kw.update({"gc": dict(C1=0.5), "mc_after": dict(C2=0.7), "mc_before": dict(C1=0.5, C2=0.7)}[variant])
    out = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            x = x0.clone()
            stats = getattr(_fused.FusedStep(sizes, torch.device("cpu")), variant)(x, g, z, None, **kw)
            out.append((x.numpy().tobytes(), [float(v) for v in stats]))
    finally:
        torch.set_num_threads(threads)
    assert out[0][0] == out[1][0] == out[2][0]  # the iterate: every factor-setting norm is thread-invariant
    for _, stats in out[1:]:  # the history's statistics: equal up to float64 rounding
        np.testing.assert_allclose(stats, out[0][1], rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", [[torch.zeros(2, 120)], [torch.zeros(240)[::2].repeat(2)[:239]],
                                 [torch.zeros(70), torch.zeros(170)]])
def test_gradient_pieces_of_the_wrong_shape_are_refused(bad):
    """Pieces that are not 1-D tensors of the parameters' sizes (or one of length d) are a certun error."""
    step = _fused.FusedStep([70, 3, 150, 17], torch.device("cpu"), block=64)
    with pytest.raises(UnlearningRunError, match="gradient pieces of shapes"):
        step.gc(torch.zeros(240, dtype=torch.float64), bad, torch.zeros(240, dtype=torch.float64), None,
                gamma=0.1, lam=0.0, C1=1.0, sigma=0.1)


def test_batch_mode_never_makes_the_float64_gradient_buffer(monkeypatch):
    """Batch mode without a centre reads autograd's gradients: the d-long float64 gradient buffer is never made."""
    made: list[int] = []
    original = _run.TorchRun.g64

    def spy(self: Any) -> torch.Tensor:
        made.append(1)
        return original.fget(self)

    monkeypatch.setattr(_run.TorchRun, "g64", property(spy))
    _unlearn(_schedule("mc_before", "tight"), "batch", torch.float32)
    assert made == []
    _unlearn(_schedule("gc", "tight"), "per_sample", torch.float32)
    assert made  # the per-sample path writes its clipped mean there


def test_draw_into_a_buffer_equals_a_fresh_draw():
    """``out=`` fills the caller's buffer with exactly the values of a fresh draw, offsets included."""
    gen = NoiseGenerator(bytes(range(32)))
    buf = torch.full((1001,), float("nan"), dtype=torch.float64)
    assert gen.normal_torch(5, 1001, offset=3, out=buf) is buf
    assert torch.equal(buf, gen.normal_torch(5, 1001, offset=3))
    arr = np.empty(77)
    assert gen.normal(2, 77, out=arr) is arr and np.array_equal(arr, gen.normal(2, 77))


@pytest.mark.parametrize("bad", [np.empty(10, dtype=np.float32), np.empty(11), np.empty((2, 5)),
                                 np.empty(20)[::2], [0.0] * 10])
def test_draw_into_a_wrong_buffer_is_refused(bad):
    """A buffer of the wrong dtype, length, shape or layout is a typed error naming ``out``, never a partial draw."""
    with pytest.raises(InvalidParameterError, match="out="):
        NoiseGenerator(bytes(32)).normal(0, 10, out=bad)


def test_torch_draw_into_a_buffer_refuses_another_device():
    """``out=`` is a CPU buffer: asking for the draw on another device as well is refused, not ignored."""
    buf = torch.empty(10, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match="device"):
        NoiseGenerator(bytes(32)).normal_torch(0, 10, out=buf, device="meta")
    assert NoiseGenerator(bytes(32)).normal_torch(0, 10, out=buf, device="cpu") is buf


@pytest.mark.parametrize("bad", [torch.empty(10, dtype=torch.float32), torch.empty(20, dtype=torch.float64)[::2],
                                 np.empty(10)])
def test_torch_draw_into_a_wrong_buffer_is_refused(bad):
    """The torch draw refuses a non-float64, strided or non-tensor buffer with the same typed error."""
    with pytest.raises(InvalidParameterError, match="out="):
        NoiseGenerator(bytes(32)).normal_torch(0, 10, out=bad)


def test_noisy_steps_draw_into_one_buffer_and_drop_it():
    """The run's noisy steps reuse one draw buffer (no fresh d-vector per step) and release it afterwards."""
    seen: list[int] = []
    original = _run.TorchRun.normal

    def spy(self: Any, generator: Any, index: int, d: int) -> torch.Tensor:
        z = original(self, generator, index, d)
        seen.append(z.data_ptr())
        return z

    schedule = _schedule("gc", "tight")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_run.TorchRun, "normal", spy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnsafeNoiseWarning)
            run = get_backend("torch").unlearn(_model(), _data(), schedule, loss_fn=F.cross_entropy, seed=1,
                                               progress=False, postprocess="none")
    assert len(seen) == schedule.T and len(set(seen)) == 1 and run.model is not None


def test_a_callback_that_changes_the_model_does_not_move_the_gradient():
    """The parameters are rewritten from the master in the update's last pass; when user code (a callback) ran
    since, they are rewritten again before the forward, so zeroing the model in a callback changes nothing."""
    schedule = _schedule("gc", "tight")

    def run(callback: Any) -> dict:
        model = _model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnsafeNoiseWarning)
            r = get_backend("torch").unlearn(model, _data(), schedule, loss_fn=F.cross_entropy, seed=11,
                                             progress=False, postprocess="none", inplace=True,
                                             callback=lambda t, x: callback(model))
        return {k: v.detach().numpy().tobytes() for k, v in r.model.state_dict().items()}

    def vandal(model: nn.Module) -> None:
        for p in model.parameters():
            p.data.zero_()

    assert run(vandal) == run(lambda model: None)


def _vectors() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    third = torch.full((10**6,), 1.0 / 3.0, dtype=torch.float64)  # every coordinate rounds the same way
    heavy = torch.randn(10**5, dtype=torch.float64, generator=gen) ** 7  # a few coordinates dominate
    return [third, third * 1e-150, third * 1e150, heavy, torch.randn(333_333, dtype=torch.float64, generator=gen)]


@pytest.mark.parametrize("C1", [1e-3, 0.7, 1e4])
def test_skipped_remeasure_would_never_act(C1):
    """Attack on the analytic bound: every vector the fused clip scales is inside C1 by an exact norm, and the
    re-measurement it skips would have left it unchanged."""
    from certun.backends.torch._steps import _enforce_radius

    for v in _vectors():
        step = _fused.FusedStep([v.numel() // 3, v.numel() - v.numel() // 3], torch.device("cpu"), block=4096)
        x = torch.zeros_like(v)  # x ← 0 − 1·clip(v): the clipped gradient itself, negated
        step.gc(x, [v], torch.zeros_like(v), None, gamma=1.0, lam=0.0, C1=C1, sigma=0.0)
        g = -x
        exact = np.sqrt(np.sum(g.numpy().astype(np.longdouble) ** 2))
        assert exact <= C1 * (1 - 0.9e-5)
        assert torch.equal(_enforce_radius(g.clone(), C1, None), g)


def test_gradient_into_the_step_buffer_keeps_accumulation_bits():
    """Fresh gradients written into the float64 buffer carry the bits autograd's accumulation into the zeroed
    float32 buffer gives, signed zeros included (a fresh gradient of −0 accumulates to +0)."""
    from certun.backends.torch._model import FlatParameters

    a, b, unused = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    flat = FlatParameters(("a", "b", "u"), [a, b, unused], device=torch.device("cpu"), dtype=torch.float32)

    def backward() -> None:
        (a * torch.tensor([-0.0, 1.5, -2.0])).sum().backward()
        (b * torch.tensor([0.0, -0.0])).sum().backward()

    flat.point_grads()
    backward()
    expected = flat.gather_grads().to(torch.float64)
    flat.clear_grads()
    backward()
    assert bool(torch.signbit(a.grad[0]))  # autograd's fresh gradient is −0 there
    into = torch.full((7,), float("nan"), dtype=torch.float64)
    flat.gather_grads(into)
    assert torch.equal(into, expected) and torch.equal(torch.signbit(into), torch.signbit(expected))


class _SparseBag(nn.Module):
    """Token ids -> Embedding(sparse=True) (a sparse gradient), mean over tokens -> linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.embed, self.head = nn.Embedding(30, 8, sparse=True), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(dim=1))


def test_sparse_embedding_gradient_takes_the_fused_path_unchanged(monkeypatch):
    """A sparse gradient (repeated tokens included) reaches the float64 buffer as accumulation gives it."""
    gen = torch.Generator().manual_seed(7)
    data = [(torch.randint(0, 30, (6, 9), generator=gen), torch.randint(0, 3, (6,), generator=gen)) for _ in range(3)]
    schedule = _schedule("gc", "tight")

    def run() -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnsafeNoiseWarning)
            r = get_backend("torch").unlearn(_SparseBag(), data, schedule, loss_fn=F.cross_entropy, seed=3,
                                             clip="batch", progress=False, postprocess="none")
        return {k: v.detach().numpy().tobytes() for k, v in r.model.state_dict().items()}

    fused = run()
    monkeypatch.setattr(_run.TorchRun, "noisy_step", _reference_step)
    assert fused == run()


@pytest.mark.parametrize(("variant", "radii"), [("gc", "loose"), ("mc_after", "loose"), ("mc_before", "loose")])
def test_multiplying_by_one_as_on_an_accelerator_releases_the_same_bytes(monkeypatch, variant, radii):
    """On an accelerator the factor is never asked whether it is 1 (that would wait for the device each step):
    the multiplication by 1 then runs, and must leave the released bytes unchanged."""
    from certun.backends.torch._fused import _is_one

    assert _is_one(torch.tensor(1.0, dtype=torch.float64))
    assert not _is_one(torch.tensor(1.0, dtype=torch.float64, device="meta"))  # not the host: never asked
    schedule = _schedule(variant, radii)
    monkeypatch.setattr(_fused, "BLOCK", 64)
    skipping, _ = _unlearn(schedule, "batch", torch.float32)
    monkeypatch.setattr(_fused, "_is_one", lambda f: False)
    multiplying, _ = _unlearn(schedule, "batch", torch.float32)
    assert multiplying == skipping
