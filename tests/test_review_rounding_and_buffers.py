"""Two safe-side rules the review found unenforced: a kept draw is never the backend's reused buffer, and the sharded
steps accept a re-measured norm only below the rounding allowance, as the single-process steps do."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import certun
from certun.backends._skeleton import NoiseSource


def test_a_kept_first_draw_is_a_copy_not_the_backends_buffer():
    buffer = torch.zeros(3, dtype=torch.float64)

    def normal(generator, index, d):  # refills the one buffer with this draw's values, as a reused buffer does
        return buffer.fill_(float(index + 1))

    hooks = SimpleNamespace(normal=normal)
    key = SimpleNamespace(step_generator=lambda prefix: None, generator=lambda: None)
    opts = SimpleNamespace(noise_source=None, noise_mode="reuse_first_draw_UNSAFE")
    schedule = certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, gamma=0.1, lam=0.1, T=3)
    source = NoiseSource(hooks, key, schedule, opts, 3)
    first = source.draw(0).clone()
    buffer.fill_(-7.0)  # the backend reuses its buffer for something else
    assert torch.equal(source.draw(1), first)


def test_sharded_rescale_accepts_a_re_measured_norm_only_below_the_rounding_allowance():
    """A re-measured norm inside ``C`` but within the measurement's own error of it (``C/(1 + 2⁻²²)`` to ``C``)
    may hide a true norm above ``C``: the sharded steps shrink again, as the single-process steps do."""
    from certun.backends.torch._sharded_steps import _scale

    C = 1.0
    x = torch.full((4,), 10.0, dtype=torch.float64)
    readings = iter([20.0, C * (1.0 - 1e-7)])  # far outside, then just inside C but above C/(1 + 2⁻²²)
    calls = []

    def norm(v):
        calls.append(float(torch.linalg.vector_norm(v)))
        return torch.tensor(next(readings, calls[-1]), dtype=torch.float64)

    _scale(x, C, None, norm)
    assert len(calls) >= 3  # the borderline reading was not accepted: shrunk and measured again
    assert float(torch.linalg.vector_norm(x)) < C
