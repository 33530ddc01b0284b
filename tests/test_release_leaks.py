"""What leaves a run must not undo its noise: an injected-noise record, a printed result, an error message
computed at the starting model, a demo keyed by a small seed (each was an attack in a review)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import certun
from certun.backends.numpy_backend import LinearModel, batches
from certun.certificates import issue
from certun.errors import InvalidParameterError, UnlearningRunError

torch.set_num_threads(1)


def _torch_run(**kw):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
    data = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]
    schedule = certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, lam=0.0, gamma=0.1, T=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return certun.unlearn(model, data, schedule, backend="torch", loss_fn=F.cross_entropy, clip="batch",
                                            progress=False, **kw), schedule, model, data


def test_a_run_with_injected_noise_can_never_be_certified():
    """noise_source (a test hook; here zero noise) is recorded as 'injected', which issue() refuses."""
    result, schedule, _, _ = _torch_run(noise_source=lambda k, d: torch.zeros(d))
    assert result.certificate is None and result.record.extra["noise_mode"] == "injected"
    with pytest.raises(InvalidParameterError, match="noise_mode"):
        issue(schedule, result.record)


def test_the_numpy_backend_records_injected_noise_too():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)), rng.integers(0, 2, 16)
    model = LinearModel(rng.normal(size=(2, 3)), np.zeros(2), "cross_entropy")
    schedule = certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, lam=0.0, gamma=0.1, T=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = certun.unlearn(model, batches(x, y, 4), schedule, backend="numpy", progress=False,
                                              noise_source=lambda k, d: np.zeros(d))
    with pytest.raises(InvalidParameterError, match="noise_mode"):
        issue(schedule, result.record)


def test_printing_a_result_reveals_no_secret():
    result, _, _, _ = _torch_run(seed=123456789)
    text = repr(result) + str(result)
    assert result.seed_opening["secret"] not in text and result.seed_opening["salt"] not in text
    assert "123456789" not in text


def test_the_opening_replays_the_run_exactly_and_nothing_else_does():
    """A replay repeats the release's noise, so it is never certified: with another loss (not all of whose
    settings enter the key) a second certified release would cancel the first one's noise."""
    first, schedule, model, data = _torch_run()
    assert first.record.noise["key_origin"] == "os"
    replay = certun.unlearn(model, data, schedule, backend="torch", loss_fn=F.cross_entropy, clip="batch",
                                          progress=False, seed=first.seed_opening)
    for a, b in zip(first.model.parameters(), replay.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert replay.certificate is None and replay.record.extra["noise_mode"] == "replay"
    with pytest.raises(InvalidParameterError, match="noise_mode"):
        issue(schedule, replay.record)
    made_up = {"secret": "00" * 32, "origin": "os", "salt": "00" * 32}
    forged = certun.unlearn(model, data, schedule, backend="torch", loss_fn=F.cross_entropy, clip="batch",
                                          progress=False, seed=made_up)
    assert forged.certificate is None
    with pytest.raises(InvalidParameterError, match="certificate_path"):
        certun.unlearn(model, data, schedule, backend="torch", loss_fn=F.cross_entropy, progress=False,
                                     seed=first.seed_opening, certificate_path="c.json")
    fresh, _, _, _ = _torch_run()
    assert not torch.equal(first.model.weight, fresh.model.weight)
    for bad in ({"secret": "00"}, {"secret": "zz" * 32, "origin": "os"}, {"secret": "ab" * 32, "origin": "moon"}):
        with pytest.raises(InvalidParameterError, match="seed"):
            certun.unlearn(model, data, schedule, backend="torch", loss_fn=F.cross_entropy, progress=False, seed=bad)


class _Reuse(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.linear(torch.tanh(self.layer(x)), self.layer.weight))


def test_refusals_at_the_start_print_no_statistic_of_the_starting_model():
    """The per-sample sum check runs at the starting model: its refusal names the problem, not the gap."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
    data = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]
    schedule = certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, lam=0.0, gamma=0.1, T=3)
    with pytest.raises(certun.errors.UnsupportedModelError) as info:
        certun.unlearn(_Reuse(), data, schedule, backend="torch", loss_fn=F.cross_entropy, clip="per_sample",
                                     progress=False)
    assert not re.search(r"\d\.\d|\de-\d", str(info.value)), str(info.value)

    class _Nan(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) * float("nan")

    with pytest.raises(UnlearningRunError) as nan_info:
        certun.unlearn(_Nan(), data, schedule, backend="torch", loss_fn=F.cross_entropy, clip="batch", progress=False)
    assert "loss=" not in str(nan_info.value) and "step 0" in str(nan_info.value)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_a_callback_cannot_change_the_released_model(backend):
    """The callback gets a copy of the iterate: overwriting it (with a noise-free model, say) changes nothing."""
    if backend == "torch":
        def plant(t, x):
            x.zero_()

        first, _, _, _ = _torch_run(seed=5)
        second, _, _, _ = _torch_run(seed=5, callback=plant)
        assert torch.equal(first.model.weight, second.model.weight) and second.certificate is not None
        return
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 3)), rng.integers(0, 2, 16)
    schedule = certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, lam=0.0, gamma=0.1, T=2)

    def run(**kw):
        model = LinearModel(np.ones((2, 3)), np.zeros(2), "cross_entropy")
        return certun.unlearn(model, batches(x, y, 4), schedule, backend="numpy", progress=False, seed=5, **kw)

    def plant_np(t, v):
        v[...] = 0.0

    assert np.array_equal(run().model.weight, run(callback=plant_np).model.weight)
