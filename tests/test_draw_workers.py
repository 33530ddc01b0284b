"""The torch backend's keyed draws use torch's thread count as the sampler's workers, and the released bytes do
not depend on it (the stream is positional, docs/noise.md)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

import certun
from certun.backends import UnsafeNoiseWarning, get_backend
from certun.backends.noise import NoiseGenerator
from certun.backends.torch._run import TorchRun

_NORMAL_TORCH = NoiseGenerator.normal_torch


def _released(monkeypatch: pytest.MonkeyPatch, workers: int | None) -> tuple[bytes, list[int]]:
    """One gradient-clipping run of a model with d > 2 * 2**17 (so a draw splits into pieces); the released
    bytes and the ``workers`` each draw was asked for."""
    asked: list[int] = []
    monkeypatch.setattr(NoiseGenerator, "normal_torch",
                        lambda self, *a, **kw: asked.append(kw.get("workers", 1)) or _NORMAL_TORCH(self, *a, **kw))
    if workers is not None:
        monkeypatch.setattr(TorchRun, "draw_workers", staticmethod(lambda count: workers))
    torch.manual_seed(0)
    model = nn.Linear(600, 500)  # d = 300 500
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 600, generator=gen), torch.randint(0, 500, (8,), generator=gen))]
    schedule = certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, gamma=0.1, T=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        r = get_backend("torch").unlearn(model, data, schedule, loss_fn=F.cross_entropy, clip="batch", seed=3,
                                         progress=False, postprocess="none")
    return b"".join(v.detach().numpy().tobytes() for v in r.model.state_dict().values()), asked


def test_the_released_bytes_do_not_depend_on_the_draws_workers(monkeypatch):
    one, asked_one = _released(monkeypatch, 1)
    three, asked_three = _released(monkeypatch, 3)
    assert asked_one == [1, 1] and asked_three == [3, 3]  # each noisy step's draw, split three ways
    assert one == three


def test_the_draws_workers_follow_torchs_thread_count_with_a_million_coordinates_each():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert [TorchRun.draw_workers(n) for n in (0, 2**21 - 1, 2**21, 10**9)] == [1, 1, 2, 2]
        torch.set_num_threads(1)
        assert TorchRun.draw_workers(10**9) == 1
    finally:
        torch.set_num_threads(threads)


def test_the_draws_workers_stay_within_what_the_sampler_accepts(monkeypatch):
    """A host with more threads than the sampler takes (1024) must not make a huge draw fail mid-run."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 5000)
    workers = TorchRun.draw_workers(2**40)
    assert workers == 1024
    assert NoiseGenerator(bytes(32)).normal(0, 4, workers=workers).shape == (4,)


def test_a_run_asks_for_the_workers_of_its_own_size(monkeypatch):
    counts: list[int] = []
    monkeypatch.setattr(TorchRun, "draw_workers", staticmethod(lambda count: counts.append(count) or 2))
    asked = _released(monkeypatch, None)[1]
    assert counts == [600 * 500 + 500] * 2 and asked == [2, 2]


def test_noisy_steps_draw_into_one_host_buffer_and_the_first_draw_is_not_it(monkeypatch):
    """Every noisy step's draw fills the same host buffer (no fresh d-vector per step); the σ0 draw, made before
    the noisy steps, is a vector of its own, so no step can overwrite it."""
    seen: list[tuple[bool, bool, int]] = []  # (in the noisy steps, is the run's buffer, buffer address)
    real = TorchRun.normal

    def normal(self, generator, index, d):
        z = real(self, generator, index, d)
        seen.append((self.computer is not None, z is self.z64, z.data_ptr()))
        return z

    monkeypatch.setattr(TorchRun, "normal", normal)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen))]
    schedule = certun.plan(1.0, 1e-5, C0=1.0, C2=1.0, gamma=0.1, T=3, variant="model_clipping", sigma0=5.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        get_backend("torch").unlearn(nn.Linear(6, 3), data, schedule, loss_fn=F.cross_entropy, clip="batch", seed=3,
                                     progress=False, postprocess="none")
    assert [(noisy, buffer) for noisy, buffer, _ in seen] == [(False, False)] + [(True, True)] * 3
    assert len({address for noisy, _, address in seen if noisy}) == 1
