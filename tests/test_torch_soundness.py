"""The soundness rules of docs/theory.md#soundness-rules in the torch backend, and its refusals of bad input.

Global initial projection, unclipped weight decay, no reused training state, BatchNorm and other
data-dependent buffers, frozen parameters, models Opacus cannot handle, and failed runs that must
stop with a clear error and write nothing.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from torch_fixtures import small_batches, small_gc

import certun
from certun.backends import UnsafeNoiseWarning, get_backend
from certun.backends.torch._steps import SAFETY
from certun.certificates import tensor_digest
from certun.errors import InvalidParameterError, UnlearningRunError, UnsupportedModelError

torch.set_num_threads(1)
BACKEND = get_backend("torch")


def _zero_grad_loss(output, target, reduction="none"):
    """A loss with zero gradient: the step is then only the decay term and the (injected) noise."""
    return (output * 0.0).sum(dim=1)


def _quiet(**kwargs):
    """Run the backend with injected zero noise (a testing hook that issues no certificate)."""
    kwargs.setdefault("progress", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        return BACKEND.unlearn(kwargs.pop("model"), kwargs.pop("data"), kwargs.pop("schedule"),
                               noise_source=lambda k, n: torch.zeros(n), **kwargs)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


_data = small_batches
_gc = small_gc


def test_initial_projection_is_global_over_all_unlearned_parameters():
    """Two tensors each inside the C0 ball but jointly outside are scaled by one common factor."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.8, 0.0], [0.0, 0.0]]))
        model[1].weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.8]]))
    x_hat = _flat(model)
    r = _quiet(model=model, data=_data(dtype=torch.float64, d_in=2), schedule=_gc(T=1), loss_fn=_zero_grad_loss,
               clip="batch", postprocess="none")
    x = _flat(r.model)
    scale = (1 - SAFETY) * 1.0 / x_hat.norm().item()
    torch.testing.assert_close(x, x_hat * scale, rtol=1e-12, atol=0)
    assert x.norm().item() <= 1.0


def test_weight_decay_term_is_not_clipped_in_a_run():
    """Zero gradient, zero noise: the step is exactly −γλ(x − c), far longer than γ·C1."""
    model = nn.Linear(3, 2).double()
    c = torch.full((8,), 0.05, dtype=torch.float64)
    s = _gc(T=1, C0=100.0, C1=1e-6, lam=2.0)
    x0 = _flat(model)
    r = _quiet(model=model, data=_data(dtype=torch.float64, d_in=3), schedule=s, loss_fn=_zero_grad_loss,
               clip="per_sample", center=c, postprocess="none")
    step = _flat(r.model) - x0
    torch.testing.assert_close(step, -0.1 * 2.0 * (x0 - c), rtol=1e-12, atol=1e-15)
    assert step.norm().item() > 0.1 * 1e-6 * 1000


def test_stale_gradients_and_optimizer_state_are_not_used():
    """A model carrying training gradients and momentum unlearns exactly like a clean copy; no optimizer option."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    clean = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    clean.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    for X, y in _data():
        F.cross_entropy(model(X), y).backward()  # gradients accumulate and stay
        opt.step()
    assert all(p.grad is not None for p in model.parameters())
    data, s = _data(), _gc(T=3)
    a = BACKEND.unlearn(model, data, s, loss_fn=F.cross_entropy, seed=4, progress=False)
    b = BACKEND.unlearn(clean, data, s, loss_fn=F.cross_entropy, seed=4, progress=False)
    assert torch.equal(_flat(a.model), _flat(b.model))
    with pytest.raises(TypeError, match="optimizer"):
        BACKEND.unlearn(model, data, s, loss_fn=F.cross_entropy, optimizer=opt)


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


def test_batchnorm_is_rejected_by_default_with_remedies():
    """BatchNorm is refused, naming its path and the remedies; per-sample clipping cannot run it at all."""
    with pytest.raises(UnsupportedModelError, match="buffers='recompute'") as info:
        BACKEND.unlearn(_bn_model(), _data(), _gc(), loss_fn=F.cross_entropy, clip="batch", progress=False)
    assert info.value.problems[0][0] == "1"
    with pytest.raises(UnsupportedModelError, match="clip='batch'"):
        BACKEND.unlearn(_bn_model(), _data(), _gc(), loss_fn=F.cross_entropy, clip="per_sample",
                        buffers="recompute", progress=False)


def test_batchnorm_statistics_are_reset_and_recomputed_from_retain_data():
    """With buffers='recompute' the final running stats do not depend on the trained ones and equal the
    retain-data statistics of the final model."""
    data, s = _data(n=32, batch=8), _gc(T=3)
    models = [_bn_model(), _bn_model()]
    with torch.no_grad():
        models[1][1].running_mean.fill_(1e6)
        models[1][1].running_var.fill_(1e6)
    runs = [BACKEND.unlearn(m, data, s, loss_fn=F.cross_entropy, clip="batch", buffers="recompute", seed=3,
                            progress=False, finetune_epochs=1) for m in models]
    bn0, bn1 = runs[0].model[1], runs[1].model[1]
    assert torch.equal(bn0.running_mean, bn1.running_mean) and torch.equal(bn0.running_var, bn1.running_var)
    with torch.no_grad():
        hidden = torch.cat([runs[0].model[0](X) for X, _ in data])
    torch.testing.assert_close(bn0.running_mean, hidden.mean(dim=0), rtol=1e-5, atol=1e-6)
    assert runs[0].record.extra["recomputed_buffers"] == ["1"]


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        return self.lin(x) * self.scale


def test_other_buffers_rejected_unless_declared_public():
    """A non-norm buffer is refused by default; buffers='public' accepts it, records and checks its digest."""
    with pytest.raises(UnsupportedModelError, match="buffers='public'"):
        BACKEND.unlearn(_Scaled(), _data(), _gc(), loss_fn=F.cross_entropy, progress=False)
    r = BACKEND.unlearn(_Scaled(), _data(), _gc(), loss_fn=F.cross_entropy, progress=False, buffers="public")
    assert r.record.extra["public_buffers"] == {"scale": tensor_digest("scale", torch.tensor(2.0))}


@pytest.mark.parametrize("clip", ["per_sample", "ghost", "batch"])
def test_frozen_parameters_untouched_and_recorded(clip):
    """requires_grad=False parameters declared public stay bit-identical, are recorded with their digests,
    flags restored."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    model[0].requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = BACKEND.unlearn(model, _data(), _gc(T=2), loss_fn=F.cross_entropy, clip=clip, seed=1, progress=False,
                        finetune_epochs=1, frozen="public")
    after = dict(r.model.named_parameters())
    for name in ("0.weight", "0.bias"):
        assert torch.equal(after[name], before[name])
        assert not after[name].requires_grad
    assert not torch.equal(after["2.weight"], before["2.weight"])
    assert r.record.unlearned_parameters == ("2.weight", "2.bias")
    assert r.record.frozen_parameters == {n: tensor_digest(n, before[n]) for n in ("0.weight", "0.bias")}
    assert r.record.d == 12


def test_params_subset_freezes_the_rest_for_the_run_only():
    """params= selects the unlearned tensors; the others stay fixed and keep requires_grad=True afterwards."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    bias = model.bias.detach().clone()
    r = BACKEND.unlearn(model, _data(), _gc(), loss_fn=F.cross_entropy, params=["weight"], progress=False,
                        frozen="public")
    assert torch.equal(r.model.bias, bias) and r.model.bias.requires_grad
    assert r.record.unlearned_parameters == ("weight",)
    with pytest.raises(InvalidParameterError, match="params"):
        BACKEND.unlearn(model, _data(), _gc(), loss_fn=F.cross_entropy, params=["nope"], progress=False,
                        frozen="public")


class _InplaceResidual(nn.Module):
    """A Conv1d (no certun per-layer rule, so Opacus' hooks) whose output is modified in place."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 1)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        x = x.view(-1, 1, 4)
        h = self.conv(x)
        h += x  # in place on a hooked layer's output, as in torchvision's ResNet
        return self.out(h.flatten(1))


def test_inplace_op_after_hooked_layer_is_refused_with_remedy():
    """Opacus' per-sample hooks refuse in-place ops on hooked outputs: the error says why and to use clip='batch'."""
    with pytest.raises(UnsupportedModelError, match="clip='batch'"):
        BACKEND.unlearn(_InplaceResidual(), _data(), _gc(), loss_fn=F.cross_entropy, progress=False)
    r = BACKEND.unlearn(_InplaceResidual(), _data(), _gc(), loss_fn=F.cross_entropy, clip="batch", progress=False)
    assert r.record.clipping == "batch"


def test_opacus_unsupported_layer_is_refused():
    """A plain nn.LSTM (Opacus needs its DPLSTM) is refused for per-sample clipping, naming the module."""
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(4, 3, batch_first=True)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.rnn(x.unsqueeze(1))[0][:, -1])

    with pytest.raises(UnsupportedModelError) as info:
        BACKEND.unlearn(Seq(), _data(), _gc(), loss_fn=F.cross_entropy, progress=False)
    assert info.value.problems[0][0] == "rnn"


def test_low_precision_parameters_are_refused():
    """bfloat16 unlearned parameters are refused with the remedy model.float()."""
    with pytest.raises(UnsupportedModelError, match=r"model\.float\(\)"):
        BACKEND.unlearn(nn.Linear(4, 2).bfloat16(), _data(), _gc(), loss_fn=F.cross_entropy, progress=False)


def test_failed_runs_raise_and_write_nothing(tmp_path):
    """Empty data, wrong shapes, malformed batches, NaN losses and reduction-less losses raise UnlearningRunError."""
    path = tmp_path / "c.json"
    model, s = nn.Linear(4, 2), _gc()
    nan_data = [(torch.full((4, 4), float("nan")), torch.zeros(4, dtype=torch.long))]
    cases = [([], "empty"), ([(torch.zeros(4, 7), torch.zeros(4, dtype=torch.long))], "forward pass failed"),
             ([torch.zeros(4, 4)], r"\(inputs, targets\) pair"), (nan_data, "non-finite")]
    for data, message in cases:
        for clip in ("per_sample", "batch"):
            with pytest.raises(UnlearningRunError, match=message):
                certun.unlearn(model, data, s, backend=BACKEND, loss_fn=F.cross_entropy, clip=clip,
                               certificate_path=path,
                                progress=False)
    with pytest.raises(UnlearningRunError, match="reduction"):
        BACKEND.unlearn(model, _data(), s, loss_fn=lambda out, y: F.cross_entropy(out, y), progress=False)
    assert not path.exists()


def test_bad_options_are_refused_before_any_work():
    """Misspelt or out-of-range options raise InvalidParameterError naming the option."""
    model, data, s = nn.Linear(4, 2), _data(), _gc()
    for kwargs, name in [({"clip": "sample"}, "clip"), ({"postprocess": "proj"}, "postprocess"),
                         ({"seed": 2**63}, "seed"), ({"finetune_epochs": -1}, "finetune_epochs"),
                         ({"noise_mode": "reuse"}, "noise_mode"), ({"buffers": "keep"}, "buffers"),
                         ({"device": "tpu:x"}, "device"), ({"center": torch.zeros(3)}, "center"),
                         ({"center": {"weight": torch.zeros(2, 4)}}, "center")]:
        with pytest.raises(InvalidParameterError, match=name):
            BACKEND.unlearn(model, data, s, loss_fn=F.cross_entropy, progress=False, **kwargs)
    with pytest.raises(InvalidParameterError, match="model"):
        BACKEND.unlearn(object(), data, s, loss_fn=F.cross_entropy)


def test_input_model_is_not_modified():
    """By default the backend works on a copy: the caller's model keeps its trained parameters."""
    model = nn.Linear(4, 2)
    before = _flat(model).clone()
    BACKEND.unlearn(model, _data(), _gc(), loss_fn=F.cross_entropy, progress=False)
    assert torch.equal(_flat(model), before)


def test_retrain_without_reset_parameters_is_refused():
    """A module with its own parameters and no reset_parameters() cannot be re-initialised silently."""
    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 2))

        def forward(self, x):
            return x @ self.w

    s = certun.Schedule(variant="retrain", T=0, target=certun.Guarantee(0.0, 0.0),
                        achieved=certun.Guarantee(0.0, 0.0))
    with pytest.raises(UnsupportedModelError, match="model_factory"):
        BACKEND.unlearn(Raw(), _data(), s, loss_fn=F.cross_entropy, finetune_epochs=1, progress=False)


@pytest.mark.parametrize("clip", ["per_sample", "ghost"])
@pytest.mark.parametrize("first", ["linear", "conv"])
def test_returned_model_carries_no_opacus_state(clip, first):
    """After a per-sample run the model has no hooks or Opacus attributes left and can be copied and saved."""
    import copy
    import io

    head = nn.Linear(4, 4) if first == "linear" else nn.Sequential(nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 1, 1),
                                                                  nn.Flatten())
    r = BACKEND.unlearn(nn.Sequential(head, nn.ReLU(), nn.Linear(4, 2)), _data(), _gc(),
                        loss_fn=F.cross_entropy, clip=clip, progress=False)
    for module in r.model.modules():
        assert not module._forward_hooks and not module._backward_hooks
        assert not hasattr(module, "activations") and not hasattr(module, "autograd_grad_sample_hooks")
    for p in r.model.parameters():
        assert p.grad is None
        assert not any(hasattr(p, a) for a in ("grad_sample", "_forward_counter", "_norm_sample"))
    copy.deepcopy(r.model)
    torch.save(r.model.state_dict(), io.BytesIO())


def test_released_model_is_inside_the_C0_ball_around_a_far_centre():
    """A float32 run centred at weights with |c_i| ≈ 5 and C0 = 1e-3 releases a model within C0 of the centre,
    measured exactly in float64 (adding c back must not push it out)."""
    torch.manual_seed(0)
    model = nn.Linear(1000, 100)
    centre = {k: v.detach() + 5.0 for k, v in model.state_dict().items()}
    s = certun.plan(1.0, 1e-5, C0=1e-3, C1=1.0, gamma=1e-3, T=1)
    r = _quiet(model=model, data=_data(d_in=1000), schedule=s, loss_fn=_zero_grad_loss, center=centre,
               clip="batch")
    x = torch.cat([p.detach().reshape(-1).double() for p in r.model.parameters()])
    c = torch.cat([centre[n].reshape(-1).double() for n, _ in r.model.named_parameters()])
    assert (x - c).norm().item() <= s.C0
