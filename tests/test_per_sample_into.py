"""certun's per-layer per-sample path writing its clipped mean straight into the float64 step buffer.

The reference is the run's gradient as it was before: the clipped mean written into the zeroed buffer of
the parameters' dtype, then copied into the float64 buffer. Writing each layer's sum (computed in the
parameters' dtype, as before) into float64 slices must release the same bytes, for every layer rule,
layers called twice (their calls are added in the parameters' dtype), frozen layers, a model that falls
back to Opacus' hooks, float32 and float64, and bfloat16 autocast.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

import certun
from certun.backends import UnsafeNoiseWarning, get_backend
from certun.backends.torch import _grad, _layers, _model, _run

torch.set_num_threads(1)


def _reference_gradient(self: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient before: batch mode straight into g64, every other mode into ``flat.g`` and then copied."""
    if self.computer.mode == "batch":
        return self.computer.compute(*batch, into=self.g64), self.g64
    loss = self.computer.compute(*batch)
    return loss, self.g64.copy_(self.flat.g)


class _Twice(nn.Module):
    """A Linear and a Conv2d each called twice in one forward (their calls' sums add up per sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(50, 50)
        self.head = nn.Linear(50, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(torch.tanh(self.conv(x)))).flatten(1)
        return self.head(torch.tanh(self.fc(torch.tanh(self.fc(h)))))


class _Tokens(nn.Module):
    """Embedding with padding and repeated ids (also called twice), LayerNorm, token Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 5, padding_idx=0)
        self.ln = nn.LayerNorm(5)
        self.lin = nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.emb(ids)) + 0.5 * self.emb(ids.flip(1))
        return self.lin(torch.tanh(h)).mean(dim=1)


class _InplaceResidual(nn.Module):
    """In-place operations on a layer's output and input after it ran: those steps use the ordinary backward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.gn = nn.GroupNorm(1, 2)
        self.fc = nn.Linear(50, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h += x
        h = self.gn(h)
        h.mul_(2.0)
        return self.fc(torch.relu_(h).flatten(1))


class _Skipping(nn.Module):
    """A Linear that runs on some batches only (those whose first input value is positive: the last two of
    the three here; the first step skips it): on the steps that skip it its gradient is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.extra, self.head = nn.Linear(50, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x.flatten(1)))
        return self.head(torch.tanh(self.extra(h)) if float(x.flatten()[0]) > 0 else h)


def _images(channels: int = 2) -> Any:
    return lambda gen: torch.randn(6, channels, 5, 5, generator=gen) * 2


def _ids(gen: torch.Generator) -> torch.Tensor:
    ids = torch.randint(0, 4, (6, 6), generator=gen)
    ids[0] = 2  # one sample of a single repeated id
    return ids


MODELS = {
    "linear": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(50, 17), nn.ReLU(), nn.Linear(17, 3)), _images()),
    "conv": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                                   nn.Linear(36, 3)), _images()),
    "conv_wide": (lambda: nn.Sequential(nn.Conv2d(16, 32, 3), nn.Tanh(), nn.Flatten(), nn.Linear(288, 3)),
                  _images(16)),
    "groupnorm": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.GroupNorm(2, 4), nn.Tanh(),
                                        nn.Flatten(), nn.Linear(100, 3)), _images()),
    "layernorm": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(50, 8), nn.LayerNorm(8), nn.Tanh(),
                                        nn.Linear(8, 3)), _images()),
    "tokens": (_Tokens, _ids),
    "called_twice": (_Twice, _images()),
    "inplace_residual": (_InplaceResidual, _images()),
    "skipped_layer": (_Skipping, _images()),
    "fallback_conv1d": (lambda: nn.Sequential(nn.Flatten(2), nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Flatten(),
                                              nn.Linear(69, 3)), _images()),
}


def _unlearn(name: str, clip: str, dtype: torch.dtype, **options: Any) -> dict[str, bytes]:
    build, inputs = MODELS[name]
    torch.manual_seed(0)
    model = build().to(dtype)
    gen = torch.Generator().manual_seed(1)
    data = []
    for _ in range(3):
        x = inputs(gen)
        data.append((x.to(dtype) if x.is_floating_point() else x, torch.randint(0, 3, (6,), generator=gen)))
    schedule = certun.plan(1.0, 1e-5, C0=0.5, C1=0.05, lam=0.3, gamma=0.05, T=4)  # C1 clips most samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        r = get_backend("torch").unlearn(model, data, schedule, loss_fn=F.cross_entropy, clip=clip, seed=11,
                                         progress=False, postprocess="none", **options)
    return {k: v.detach().numpy().tobytes() for k, v in r.model.state_dict().items()}


def _recording(gradient: Any, seen: list[torch.Tensor]) -> Any:
    def record(self: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loss, g = gradient(self, batch)
        seen.append(g.clone())
        return loss, g

    return record


def _same_as_reference(monkeypatch: pytest.MonkeyPatch, name: str, clip: str, dtype: torch.dtype,
                       **options: Any) -> None:
    """The same released bytes, and the same float64 gradient, bit for bit, at every step (a gradient
    differing below the released dtype's rounding would not show in the bytes of a short run)."""
    grads: list[torch.Tensor] = []
    reference_grads: list[torch.Tensor] = []
    with monkeypatch.context() as mp:
        mp.setattr(_run.TorchRun, "gradient", _recording(_run.TorchRun.gradient, grads))
        new = _unlearn(name, clip, dtype, **options)
        mp.setattr(_run.TorchRun, "gradient", _recording(_reference_gradient, reference_grads))
        reference = _unlearn(name, clip, dtype, **options)
    assert new == reference
    assert len(grads) == len(reference_grads) == 4
    for g, r in zip(grads, reference_grads, strict=True):
        assert torch.equal(g, r) and torch.equal(torch.signbit(g), torch.signbit(r))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip", ["per_sample", "ghost"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_released_bytes_equal_the_float32_buffer_path(monkeypatch, name, clip, dtype):
    """Every layer rule, both dtypes, per-sample and ghost: the same released bytes as before."""
    _same_as_reference(monkeypatch, name, clip, dtype)


@pytest.mark.parametrize("clip", ["per_sample", "ghost"])
def test_frozen_layer_between_unlearned_ones_keeps_the_bytes(monkeypatch, clip):
    """Only some layers unlearned (the middle Linear frozen): its parameters stay, the others match."""
    _same_as_reference(monkeypatch, "layernorm", clip, torch.float32,
                       params=["1.weight", "1.bias", "2.weight", "2.bias"], frozen="public")


@pytest.mark.parametrize("name", ["linear", "conv", "groupnorm", "tokens", "called_twice"])
def test_bf16_autocast_keeps_the_bytes(monkeypatch, name):
    """Under bfloat16 autocast the layers' gradients arrive in bfloat16; the sums are still float32, as before."""
    _same_as_reference(monkeypatch, name, "per_sample", torch.float32, autocast="bf16")


def test_clipped_mean_goes_straight_into_the_float64_buffer(monkeypatch):
    """After the first step (the per-sample sum check, which needs the batch gradient in ``flat.g``) the
    per-layer path neither zeroes nor writes the parameters' dtype buffer: each layer's clipped sum is
    written into the run's float64 buffer."""
    into: list[Any] = []
    zeroed: list[int] = []
    compute, point = _grad.GradientComputer.compute, _model.FlatParameters.point_grads
    targets: list[torch.dtype] = []
    write = _layers.LayerPerSample.write

    def spy_compute(self: Any, inputs: Any, targets_: Any, **kw: Any) -> torch.Tensor:
        into.append(kw.get("into"))
        return compute(self, inputs, targets_, **kw)

    def spy_write(self: Any, coef: torch.Tensor, out: Any = None, **kw: Any) -> None:
        if out is None:
            dest = kw.get("into")
            targets.append(self.flat.g.dtype if dest is None else dest.dtype)
        return write(self, coef, out, **kw)

    monkeypatch.setattr(_grad.GradientComputer, "compute", spy_compute)
    monkeypatch.setattr(_model.FlatParameters, "point_grads", lambda self: zeroed.append(1) or point(self))
    monkeypatch.setattr(_layers.LayerPerSample, "write", spy_write)
    _unlearn("called_twice", "per_sample", torch.float32)
    assert len(into) == 4 and all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in into)
    assert targets == [torch.float64] * 4
    assert len(zeroed) == 1  # the first step's full backward for the sum check only


def test_no_weight_gradient_after_the_first_step(monkeypatch):
    """The backward of later steps computes the gradients at the layers' outputs only: autograd never
    computes a gradient for a parameter (a parameter hook counts them)."""
    calls: list[str] = []
    original = _layers.LayerPerSample.__init__

    def init(self: Any, model: nn.Module, flat: Any) -> None:
        original(self, model, flat)
        for name, p in zip(flat.names, flat.params, strict=True):
            p.register_hook(lambda g, name=name: calls.append(name))

    monkeypatch.setattr(_layers.LayerPerSample, "__init__", init)
    _unlearn("called_twice", "per_sample", torch.float32)
    assert sorted(calls) == sorted(["conv.weight", "conv.bias", "fc.weight", "fc.bias", "head.weight", "head.bias"])
