"""Model state that could carry the training data past the guarantee is refused unless declared public.

Each test is an attack an outside review found: parameters left out of ``params=`` silently treated
as public, data-dependent tensors kept as plain attributes, a weight reused functionally so that the
per-sample gradients miss part of it, and the trained model passed as the balls' centre.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from torch_fixtures import small_batches, small_gc

import certun
from certun.backends import UnsafeNoiseWarning, get_backend
from certun.backends.numpy_backend import LinearModel, batches
from certun.errors import InvalidParameterError, UnlearningRunError, UnsupportedModelError

torch.set_num_threads(1)
BACKEND = get_backend("torch")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _run(model, **kw):
    kw.setdefault("loss_fn", F.cross_entropy)
    kw.setdefault("clip", "batch")
    data = kw.pop("data", None) or small_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        return certun.unlearn(model, data, kw.pop("schedule", None) or small_gc(), backend=BACKEND, progress=False,
                              seed=0, **kw)


# ------------------------------------------------------------------------------ params= and frozen
@pytest.mark.parametrize("frozen", [None, "reject"])
def test_parameters_left_out_of_params_must_be_declared_public(frozen):
    """A body trained on D, left out of params=[head], is not silently declared public: refused (even with
    frozen='reject' given explicitly), naming the left-out parameters and both ways forward."""
    kw = {} if frozen is None else {"frozen": frozen}
    with pytest.raises(InvalidParameterError) as info:
        _run(_mlp(), params=["2.weight", "2.bias"], **kw)
    text = str(info.value)
    assert "0.weight" in text and "0.bias" in text and "frozen='public'" in text and "params" in text


def test_parameters_left_out_of_params_run_when_declared_public():
    """frozen='public' is the explicit declaration: the run goes ahead and the certificate records it."""
    r = _run(_mlp(), params=["2.weight", "2.bias"], frozen="public")
    assert r.record.extra["frozen"] == "public" and set(r.record.frozen_parameters) == {"0.weight", "0.bias"}
    assert r.record.d == 18


def test_params_listing_every_parameter_needs_no_declaration():
    """Listing every parameter leaves nothing frozen, so nothing needs declaring."""
    model = _mlp()
    r = _run(model, params=[n for n, _ in model.named_parameters()])
    assert r.record.extra["frozen"] == "none"


# ------------------------------------------------------------------------------ unregistered state
class _Centred(nn.Module):
    """Keeps the training data's mean as a plain tensor attribute (neither parameter nor buffer)."""

    def __init__(self, X):
        super().__init__()
        self.mu = X.mean(0)
        self.net = nn.Linear(4, 2)

    def forward(self, x):
        return self.net(x - self.mu)


class _Stash(nn.Module):
    """Data-dependent state in every container form, on a submodule."""

    def __init__(self, X):
        super().__init__()
        self.net = nn.Linear(4, 2)
        self.net.scale = X.std(0).numpy()
        self.net._quantiles = [X.min(0).values, (X.max(0).values, 1)]
        self.net.stats = {"mean": X.mean(0), "note": "ok"}

    def forward(self, x):
        return self.net(x)


def _X():
    return torch.cat([x for x, _ in small_batches()])


def test_a_data_dependent_tensor_attribute_is_refused():
    """self.mu = X.mean(0) used in forward voids the guarantee: refused with the attribute's path."""
    with pytest.raises(UnsupportedModelError, match=r"\bmu\b.*attributes='public'"):
        _run(_Centred(_X()))


def test_every_unregistered_array_is_listed_at_once():
    """numpy arrays, lists/tuples and dicts of tensors on submodules: each path is listed in one error."""
    with pytest.raises(UnsupportedModelError) as info:
        _run(_Stash(_X()))
    text = str(info.value)
    for path in ("net.scale", "net._quantiles[0]", "net._quantiles[1][0]", "net.stats['mean']"):
        assert path in text, path
    assert "note" not in text


def test_public_attributes_run_and_are_recorded_and_digested():
    """attributes='public' is the explicit declaration: recorded in the certificate's extra with digests."""
    r = _run(_Stash(_X()), attributes="public")
    assert r.record.extra["attributes"] == "public"
    assert set(r.record.extra["public_attributes"]) == {"net.scale", "net._quantiles[0]", "net._quantiles[1][0]",
                                                         "net.stats['mean']"}
    assert all(v.startswith("sha256:") for v in r.record.extra["public_attributes"].values())
    assert _run(_mlp()).record.extra["attributes"] == "none"


class _Counting(nn.Module):
    """Updates a plain tensor attribute from the data it sees: a running statistic outside the buffers."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 2)
        self.seen = torch.zeros(4)

    def forward(self, x):
        self.seen.add_(x.detach().sum(0))
        return self.net(x)


def test_public_attributes_that_change_during_the_run_are_refused():
    """An attribute declared public but updated from retain data is caught: no certificate."""
    with pytest.raises(UnlearningRunError, match="seen"):
        _run(_Counting(), attributes="public")


def test_bad_attributes_option_is_refused():
    with pytest.raises(InvalidParameterError, match="attributes"):
        _run(_mlp(), attributes="yes")


def _common_layers():
    from certun.demo.models import build_model

    yield build_model("mlp", (1, 8, 8), 10, seed=0)
    yield build_model("cnn", (1, 8, 8), 10, seed=0)
    yield nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.1),
                        nn.Flatten(), nn.Identity())
    yield nn.Sequential(nn.LayerNorm(6), nn.GroupNorm(2, 6), nn.Embedding(10, 6), nn.Dropout())
    yield nn.MultiheadAttention(8, 2, batch_first=True)
    yield nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
    yield nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
    yield nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16), num_layers=2,
                                enable_nested_tensor=False)
    yield nn.TransformerDecoderLayer(8, 2, dim_feedforward=16)
    yield nn.LSTM(4, 8, num_layers=2, bidirectional=True)
    yield nn.GRU(4, 8)
    yield nn.RNN(4, 8)
    yield nn.Sequential(nn.BatchNorm1d(4), nn.InstanceNorm1d(4, affine=True, track_running_stats=True),
                        nn.Upsample(scale_factor=2), nn.PReLU(), nn.Softmax(dim=1), nn.ConvTranspose2d(2, 2, 3))
    from torch.nn.utils import parametrizations

    yield nn.Sequential(parametrizations.weight_norm(nn.Linear(4, 4)),
                        parametrizations.spectral_norm(nn.Linear(4, 4)))
    from opacus.layers import DPLSTM, DPMultiheadAttention

    yield DPLSTM(4, 8, batch_first=True)
    yield DPMultiheadAttention(8, 2)


def test_ordinary_torch_layers_hold_no_unregistered_arrays():
    """No false positive on common layers and certun's own models, before and after a forward pass, on
    deep copies and after moving dtype."""
    import copy

    from certun.backends.torch._attributes import unregistered_arrays

    for model in _common_layers():
        assert unregistered_arrays(model) == {}, type(model).__name__
        assert unregistered_arrays(copy.deepcopy(model).double()) == {}, type(model).__name__
    lstm = nn.LSTM(4, 8, batch_first=True)
    lstm(torch.randn(2, 3, 4))
    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    attention(torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8))
    assert unregistered_arrays(lstm) == {} and unregistered_arrays(attention) == {}


def test_unregistered_module_with_tensors_in_a_plain_list_is_found():
    """A layer kept in a plain list (not nn.ModuleList) holds weights outside the model's parameters."""
    from certun.backends.torch._attributes import unregistered_arrays

    model = nn.Sequential(nn.Linear(4, 2))
    model[0].helpers = [nn.Linear(4, 4)]
    assert "0.helpers[0]" in unregistered_arrays(model)


# ------------------------------------------------------------------------------ per-sample gradient sum
class _Reuse(nn.Module):
    """The first layer's weight is used again functionally: module hooks see only part of its gradient."""

    def __init__(self, norm=False):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4) if norm else nn.Identity()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(self.layer(x))
        h = F.linear(self.norm(h), self.layer.weight)
        return self.head(h)


@pytest.mark.parametrize(("norm", "clip"), [(False, "per_sample"), (True, "per_sample"), (True, "ghost")],
                         ids=["certun-linear-path", "opacus-path", "opacus-ghost"])
def test_a_weight_reused_functionally_is_caught_by_the_per_sample_sum_check(norm, clip):
    """Σ_i g_i must equal the autograd gradient of the summed loss; functional reuse breaks it: refused with
    the fix, on certun's nn.Linear path, on Opacus' hooks and with ghost clipping (whose per-sample norms
    miss the reuse the same way). clip='batch' runs."""
    with pytest.raises(UnsupportedModelError, match=r"layer\.weight.*clip='batch'"):
        _run(_Reuse(norm), clip=clip)
    assert _run(_Reuse(norm), clip="batch").certificate is not None


def test_per_sample_sum_check_accepts_rounding_and_refuses_a_real_gap():
    """The check's tolerance is float32 rounding, scaled by the per-sample gradients' size."""
    from certun.backends.torch._sumcheck import check_per_sample_sum

    torch.manual_seed(1)
    per = torch.randn(64, 10)
    sums, scale = {"w": per.double().sum(0)}, float(per.norm(dim=1).sum())
    kw = dict(scale=scale, dtype=torch.float32)
    check_per_sample_sum(sums, {"w": per.sum(0)}, **kw)  # float32 rounding of the same sum
    check_per_sample_sum(sums, {"w": per.sum(0) * (1 + 1e-6)}, **kw)
    with pytest.raises(UnsupportedModelError, match="w: its per-sample gradients"):
        check_per_sample_sum(sums, {"w": per.sum(0) + 0.05 * per[0]}, **kw)  # 5% of one sample's gradient
    check_per_sample_sum(sums, {"w": per.sum(0) + 0.05 * per[0]}, **kw, tf32=True)  # within TF32 rounding
    with pytest.raises(UnsupportedModelError, match="w: its per-sample gradients"):
        check_per_sample_sum(sums, {"w": None}, **kw)
    # non-finite gradients are the run's own refusal ("non-finite loss"); the check then waits a batch
    assert check_per_sample_sum(sums, {"w": per.sum(0) * float("nan")}, **kw) is False


def test_ghost_probe_leaves_the_run_unchanged(monkeypatch):
    """The ghost probe restores the random state and drops its gradients: a dropout model's ghost run equals
    the same ghost run with the probe switched off, bit for bit (the run key, hence the dropout seed, depends
    on the clip mode, so ghost is compared with ghost)."""
    from opacus.grad_sample import GradSampleHooksFastGradientClipping

    from certun.backends.torch import _grad as torch_grad

    def model():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Dropout(0.3), nn.Linear(8, 2))

    probed = _run(model(), clip="ghost", noise_source=lambda k, d: torch.zeros(d))

    def hook_without_probe(self, inputs, targets):
        self.sums_checked = True
        self.hooks = GradSampleHooksFastGradientClipping(self.model, batch_first=True, loss_reduction="sum",
                                                         strict=False, max_grad_norm=self.C1, use_ghost_clipping=True)

    monkeypatch.setattr(torch_grad.GradientComputer, "_probe_then_hook", hook_without_probe)
    unprobed = _run(model(), clip="ghost", noise_source=lambda k, d: torch.zeros(d))
    assert torch.equal(torch.cat([p.reshape(-1) for p in probed.model.parameters()]),
                       torch.cat([p.reshape(-1) for p in unprobed.model.parameters()]))


def test_models_run_per_sample_without_false_alarm():
    """Plain models on both per-sample paths pass the check, in float32 and float64."""
    assert _run(_mlp(), clip="per_sample").certificate is not None
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2)).double()
    assert _run(model, clip="per_sample", data=small_batches(dtype=torch.float64)).certificate is not None


# ------------------------------------------------------------------------------ the centre
def test_the_trained_model_is_refused_as_the_centre():
    """center=<the starting model> would publish its plain digest as artifacts.center: refused, as a state
    dict or a flat vector."""
    model = _mlp()
    with pytest.raises(InvalidParameterError, match="center"):
        _run(model, center={k: v.clone() for k, v in model.state_dict().items()})
    with pytest.raises(InvalidParameterError, match="center"):
        _run(model, center=torch.cat([p.detach().reshape(-1) for p in model.parameters()]))


def test_a_centre_sharing_one_trained_tensor_is_refused():
    """A centre made of public weights plus the trained head still publishes the head: refused, naming it."""
    model = _mlp()
    center = {k: torch.zeros_like(v) + 0.01 for k, v in model.state_dict().items()}
    center["2.weight"] = model[2].weight.detach().clone()
    with pytest.raises(InvalidParameterError, match=r"2\.weight"):
        _run(model, center=center)
    with pytest.raises(InvalidParameterError, match=r"2\.weight"):
        _run(model, center=center, schedule=_retrain(), finetune_epochs=1)


def _retrain():
    import certun

    return certun.plan(1.0, 1e-5, variant="retrain")


def test_a_centre_equal_only_on_a_constant_tensor_is_accepted():
    """An untrained constant tensor (a zero bias) equal in the centre publishes nothing about D."""
    model = _mlp()
    with torch.no_grad():
        model[2].bias.zero_()
    center = {k: torch.full_like(v, 0.01) for k, v in model.state_dict().items()}
    center["2.bias"] = torch.zeros(2)
    assert _run(model, center=center).certificate is not None


def test_numpy_backend_refuses_the_trained_model_as_the_centre():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 3)), rng.integers(0, 2, 16)
    model = LinearModel(rng.normal(size=(2, 3)), rng.normal(size=2))
    backend = get_backend("numpy")
    for center in (model, model.named(), model.flat(), {"weight": model.weight, "bias": np.zeros(2) + 0.3}):
        with pytest.raises(InvalidParameterError, match="center"):
            certun.unlearn(model, batches(X, y, 4), small_gc(), backend=backend, center=center, seed=0)
    assert certun.unlearn(model, batches(X, y, 4), small_gc(), backend=backend, center=np.zeros(8) + 0.1,
                          seed=0).certificate


# ------------------------------------------------------------------------------ tensors hidden inside objects
class _Holder:
    def __init__(self, t):
        self.t = t


class _Slotted:
    __slots__ = ("t",)

    def __init__(self, t):
        self.t = t


class _Hidden(nn.Module):
    """D-dependent tensors inside a partial, a plain object, a slotted object, a closure and a default."""

    def __init__(self, mu):
        super().__init__()
        import functools

        self.fc = nn.Linear(4, 2)
        self.center_inputs = functools.partial(torch.sub, other=mu)
        self.stats = _Holder(mu.clone())
        self.slotted = _Slotted(mu.clone())
        shift = mu.clone()
        self.shift = lambda x: x - shift
        self.scale = lambda x, s=shift: x * s
        self.bound = _Holder(mu.clone()).__init__

    def forward(self, x):
        return self.fc(self.center_inputs(x))


def test_tensors_hidden_in_partials_objects_and_closures_are_refused():
    """torch.save(model) pickles a partial, an object and its slots, so tensors there ship with the model;
    closures and defaults too (cloudpickle, or just kept in memory): every path is listed, nothing certified."""
    with pytest.raises(UnsupportedModelError) as info:
        _run(_Hidden(_X().mean(0)))
    text = str(info.value)
    for path in ("center_inputs.keywords['other']", "stats.t", "slotted.t", "shift.<closure shift>",
                 "scale.__defaults__[0]", "bound.__self__.t"):
        assert path in text, path


def test_objects_walk_is_bounded_and_cycle_safe():
    """A self-referencing object and a method bound to the module itself terminate without a false alarm."""
    from certun.backends.torch._attributes import unregistered_arrays

    model = nn.Sequential(nn.Linear(4, 2))
    loop = _Holder(None)
    loop.t = loop
    model[0].loop = loop
    model[0].own = model[0].forward
    model[0].act = F.relu
    model[0].deep = _Holder(_Holder(_Holder(_Holder(_Holder(_Holder(_Holder(_Holder(1))))))))
    assert unregistered_arrays(model) == {}


# ------------------------------------------------------------------------------ state written during the run
class _Cached(nn.Module):
    """Caches its last output (a tensor) and a running maximum (a Python float) in forward."""

    def __init__(self, what):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.what = what
        self.last = None
        self.peak = 0.0

    def forward(self, x):
        out = self.fc(x)
        if self.what == "tensor":
            self.last = out.detach()
        elif self.what == "scalar":
            self.peak = max(self.peak, float(out.detach().abs().max()))
        elif self.what == "new":
            self.fresh = 1
        return out


@pytest.mark.parametrize("attributes", ["reject", "public"])
@pytest.mark.parametrize(("what", "name"), [("tensor", "last"), ("scalar", "peak"), ("new", "fresh")])
def test_state_written_during_the_run_is_refused(what, name, attributes):
    """With T = 1 a forward cache holds the output at the pre-noise start Pi_C0(A(D)): the released object
    would carry it. Any attribute added or changed during the run is refused, in every attributes mode."""
    with pytest.raises(UnlearningRunError, match=rf"plain attributes during the run: \['{name}'\]"):
        _run(_Cached(what), attributes=attributes, schedule=small_gc(T=1))


def test_a_model_writing_nothing_during_the_run_is_certified():
    assert _run(_Cached("nothing")).certificate is not None
