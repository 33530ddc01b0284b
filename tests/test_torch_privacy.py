"""What a torch run publishes or leaves behind must not leak the training data beyond the guarantee.

The certificate commits to (never publishes) the model a first request starts from; a seed reused
across requests never repeats noise; retraining keeps nothing trained on D; training state left on
the model object (gradients, Opacus attributes, hooks, derived caches) never survives into the
released model; and parameters frozen by ``requires_grad=False`` must be declared public.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from torch_fixtures import small_batches, small_gc

import certun
from certun.backends import get_backend
from certun.certificates import model_digest, open_model_commitment, verify, write_certificate
from certun.errors import InvalidParameterError, UnsupportedModelError

torch.set_num_threads(1)
BACKEND = get_backend("torch")
Z5 = 5.0  # 5-sigma band: false-alarm rate <= 5.7e-7 per check (two-sided normal tail)


_data = small_batches
_gc = small_gc


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _zero_grad_loss(output, target, reduction="none"):
    """A loss with zero gradient, so that a step's increment is its noise alone."""
    return (output * 0.0).sum(dim=1)


def _train(batches, seed=0):
    """A deterministic public recipe: fixed initialisation seed, plain SGD over the given batches."""
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for X, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(X), y).backward()
        opt.step()
    return model


# ------------------------------------------------------------------------------ P1: model before
def test_first_certificate_commits_to_the_trained_model_without_publishing_it():
    """A first request's certificate holds no digest of the trained model, only a salted commitment that
    the returned private opening opens; verify --model still checks the released model."""
    retain, forget = _data(seed=5), [(torch.randn(1, 4), torch.tensor([1]))]
    trained = _train(retain + forget)
    r = certun.unlearn(trained, retain, _gc(T=3), backend=BACKEND, loss_fn=F.cross_entropy, clip="batch",
                       progress=False)
    published = r.certificate["artifacts"]["model_before"]
    secret = model_digest(dict(trained.named_parameters()))
    text = json.dumps(r.certificate)
    assert secret.root not in text and not any(d in text for d in secret.tensors.values())
    assert set(published) == {"scheme", "commitment"}
    assert r.model_before_opening["root"] == secret.root
    assert open_model_commitment(published, r.model_before_opening)
    assert verify(r.certificate, model=dict(r.model.named_parameters())).ok


def test_chained_request_records_the_previous_released_model_in_plain(tmp_path):
    """With previous= and the model it released, model_before is a plain digest of that (public) model, the
    certificate links to its predecessor, and the ledger verifies; another starting model is committed to."""
    r1 = certun.unlearn(_train(_data()), _data(seed=1), _gc(), backend=BACKEND, loss_fn=F.cross_entropy, progress=False)
    r2 = certun.unlearn(r1.model, _data(seed=2), _gc(), backend=BACKEND, loss_fn=F.cross_entropy, progress=False,
                         previous=r1.certificate)
    before = r2.certificate["artifacts"]["model_before"]
    assert before["root"] == r1.certificate["artifacts"]["unlearned_model"]["root"]
    assert r2.model_before_opening is None
    assert r2.certificate["chain"]["sequence"] == 1
    write_certificate(r1.certificate, tmp_path / "000.json")
    report = verify(r2.certificate, chain_dir=tmp_path)
    assert report.ok and report["chain"].status.value == "PASS"
    other = certun.unlearn(_train(_data(), seed=3), _data(seed=2), _gc(), backend=BACKEND, loss_fn=F.cross_entropy,
                            progress=False, previous=r1.certificate)
    assert "commitment" in other.certificate["artifacts"]["model_before"]


# ------------------------------------------------------------------------------ P3: seed reuse
def _noise_of_two_requests(seed_1, seed_2):
    torch.manual_seed(0)
    model = nn.Linear(100, 100)  # d = 10100
    s = dataclasses.replace(certun.plan(1.0, 1e-5, C0=1e6, C1=1.0, gamma=0.01, T=1), sigmas=(0.5,))
    s = dataclasses.replace(s, target=certun.guarantee(s), achieved=certun.guarantee(s))  # ‖x‖ << C0: no projection
    kw = dict(loss_fn=_zero_grad_loss, clip="batch", postprocess="none", progress=False)
    r1 = certun.unlearn(model, _data(d_in=100, seed=1), s, backend=BACKEND, seed=seed_1, **kw)
    r2 = certun.unlearn(r1.model, _data(d_in=100, seed=2), s, backend=BACKEND, seed=seed_2, **kw)
    x0, x1, x2 = _flat(model).double(), _flat(r1.model).double(), _flat(r2.model).double()
    return (x1 - x0).numpy(), (x2 - x1).numpy(), r1


def test_seed_reused_across_requests_gives_independent_noise():
    """Two sequential requests with the same seed add uncorrelated noise (|corr| < 5/sqrt(d)), so x2 − x1 does
    not cancel the first request's noise; the same inputs still reproduce bit for bit."""
    n1, n2, r1 = _noise_of_two_requests(12345, 12345)
    assert abs(np.corrcoef(n1, n2)[0, 1]) < Z5 / np.sqrt(n1.size)
    again, _, r1_again = _noise_of_two_requests(12345, 999)
    assert np.array_equal(n1, again) and torch.equal(_flat(r1.model), _flat(r1_again.model))


# ------------------------------------------------------------------------------ P4: retrain
class _ScaledLinear(nn.Linear):
    """Inherits nn.Linear.reset_parameters, which knows nothing of ``scale``."""

    def __init__(self, i, o):
        super().__init__(i, o)
        self.scale = nn.Parameter(torch.ones(o))

    def forward(self, x):
        return super().forward(x) * self.scale


def test_retrain_refuses_parameters_that_reset_parameters_leaves_trained():
    """Retraining that would keep a parameter reset_parameters() does not re-initialise is refused, naming it;
    with model_factory it runs and claims exactness."""
    model = nn.Sequential(_ScaledLinear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].scale.copy_(torch.arange(8.0) + 42)  # "trained on D"
    s = certun.plan(1.0, 1e-5, variant="retrain")
    kw = dict(loss_fn=F.cross_entropy, clip="batch", finetune_epochs=1, progress=False, seed=0)
    with pytest.raises(UnsupportedModelError, match="model_factory") as info:
        certun.unlearn(model, _data(), s, backend=BACKEND, **kw)
    assert [p[0] for p in info.value.problems] == ["0.scale"]
    fresh = nn.Sequential(_ScaledLinear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    r = certun.unlearn(model, _data(), s, backend=BACKEND, model_factory=lambda: fresh, **kw)
    assert r.certificate is not None and r.certificate["claim"]["variant"] == "retrain"
    assert float(r.model[0].scale.detach().max()) < 40


# ------------------------------------------------------------------------------ P5: training state
def _with_training_leftovers():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    for X, y in _data(seed=1):
        F.cross_entropy(model(X), y).backward()  # .grad on every parameter, from D
    model[0].weight.grad_sample = torch.randn(3, 8, 4)  # as left by Opacus training on D
    model[2].weight.summed_grad = torch.randn(2, 8)
    model[2].bias._forward_counter = 1
    model[0].activations = [torch.randn(3, 4)]  # training inputs kept by Opacus hooks
    model[0].max_batch_len = 3
    return model


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("clip", ["batch", "per_sample"])
def test_training_state_does_not_survive_into_the_released_model(inplace, clip):
    """Gradients of frozen and unlearned parameters and every Opacus attribute on parameters and modules are
    gone from the returned model, copied or in place."""
    model = _with_training_leftovers()
    r = certun.unlearn(model, _data(seed=2), _gc(), backend=BACKEND, loss_fn=F.cross_entropy, params=["2.weight",
                       "2.bias"],
                        frozen="public", clip=clip, progress=False, seed=1, inplace=inplace)
    for p in r.model.parameters():
        assert p.grad is None
        assert not any(hasattr(p, a) for a in ("grad_sample", "summed_grad", "_forward_counter", "_norm_sample"))
    for module in r.model.modules():
        assert not hasattr(module, "activations") and not hasattr(module, "max_batch_len")


def test_leftover_opacus_hooks_are_refused():
    """A model still carrying Opacus hooks from training (or wrapped in a GradSampleModule) is refused."""
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleHooks

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    hooks = GradSampleHooks(model)
    with pytest.raises(UnsupportedModelError, match="Opacus"):
        certun.unlearn(model, _data(), _gc(), backend=BACKEND, loss_fn=F.cross_entropy, clip="batch", progress=False)
    hooks.cleanup()
    certun.unlearn(model, _data(), _gc(), backend=BACKEND, loss_fn=F.cross_entropy, clip="batch", progress=False)
    with pytest.raises(UnsupportedModelError, match="_module"):
        certun.unlearn(GradSampleModule(nn.Linear(4, 2)), _data(), _gc(), backend=BACKEND, loss_fn=F.cross_entropy,
                       clip="batch",
                        progress=False)


def test_old_style_weight_norm_is_refused_and_the_new_style_runs():
    """Old-style weight_norm caches the weight of an intermediate iterate as an attribute: refused with the
    remedy; the parametrization (computed on access) runs."""
    from torch.nn.utils import parametrizations

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = nn.Sequential(nn.utils.weight_norm(nn.Linear(4, 8)), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedModelError, match=r"parametrizations\.weight_norm"):
        certun.unlearn(old, _data(), _gc(), backend=BACKEND, loss_fn=F.cross_entropy, clip="batch", progress=False,
                       inplace=True)
    new = nn.Sequential(parametrizations.weight_norm(nn.Linear(4, 8)), nn.ReLU(), nn.Linear(8, 2))
    r = certun.unlearn(new, _data(), _gc(), backend=BACKEND, loss_fn=F.cross_entropy, clip="batch", progress=False)
    assert "0.parametrizations.weight.original0" in r.record.unlearned_parameters


# ------------------------------------------------------------------------------ frozen parameters
def test_parameters_frozen_by_requires_grad_must_be_declared_public():
    """With params=None, requires_grad=False parameters (maybe trained on D) are refused unless frozen='public'
    asserts they are independent of D; so are parameters left out of an explicit params= list."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    kw = dict(loss_fn=F.cross_entropy, clip="batch", progress=False)
    with pytest.raises(InvalidParameterError, match="frozen"):
        certun.unlearn(model, _data(), _gc(), backend=BACKEND, **kw)
    r = certun.unlearn(model, _data(), _gc(), backend=BACKEND, frozen="public", **kw)
    assert r.record.extra["frozen"] == "public" and set(r.record.frozen_parameters) == {"0.weight", "0.bias"}
    with pytest.raises(InvalidParameterError, match="frozen"):
        certun.unlearn(model, _data(), _gc(), backend=BACKEND, params=["2.weight", "2.bias"], **kw)
    r = certun.unlearn(model, _data(), _gc(), backend=BACKEND, params=["2.weight", "2.bias"], frozen="public", **kw)
    assert r.record.extra["frozen"] == "public"
    with pytest.raises(InvalidParameterError, match="frozen"):
        certun.unlearn(model, _data(), _gc(), backend=BACKEND, frozen="yes", **kw)


def test_noise_key_depends_on_every_run_input():
    """The run key changes with the seed and with every run input (starting model, centre, retain and forget
    sets, schedule, options, parameter names, dtype, backend), and is reproducible from the same inputs."""
    from certun.backends.run_key import run_context, run_key

    base = dict(model_before="sha256:" + "0" * 64, center=None, retain_fingerprint=b"r", forget_fingerprint=b"f",
                schedule=_gc(), options={"clip": "batch", "postprocess": "project_C0"},
                unlearned_parameters=("w",), dtype="float32", backend="torch")
    key = run_key(7, run_context(**base)).key
    assert key == run_key(7, run_context(**base)).key and len(key) >= 16
    variants = [dict(model_before="sha256:" + "1" * 64), dict(center="sha256:" + "2" * 64),
                dict(retain_fingerprint=b"r2"), dict(forget_fingerprint=b""), dict(schedule=_gc(T=3)),
                dict(options={"clip": "per_sample", "postprocess": "project_C0"}),
                dict(options={"clip": "batch", "postprocess": "none"}), dict(unlearned_parameters=("w", "b")),
                dict(dtype="float64"), dict(backend="numpy")]
    others = {run_key(7, run_context(**{**base, **change})).key for change in variants}
    others |= {run_key(8, run_context(**base)).key, run_key(None, run_context(**base)).key}
    assert key not in others and len(others) == len(variants) + 2
