"""Inputs the torch backend cannot use soundly are refused with a certun error that says why and what to do.

Per-sample clipping needs every hooked layer called as a module on batch-first inputs; retain
identifiers must describe the data iterated; malformed batches, failing losses and devices, and
endless or one-shot retain data end in a certun error (never a raw exception or a hang); and the
run leaves each submodule's train/eval flag as it found it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch_fixtures import small_batches, small_gc

import certun
from certun.backends import UnsafeNoiseWarning, get_backend
from certun.errors import InvalidParameterError, UnlearningRunError, UnsupportedModelError

torch.set_num_threads(1)
BACKEND = get_backend("torch")


_data = small_batches
_gc = small_gc


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _run(data, **kw):
    model = kw.pop("model", None) or _mlp()
    schedule = kw.pop("schedule", None) or _gc()
    kw.setdefault("loss_fn", F.cross_entropy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        return certun.unlearn(model, data, schedule, backend=BACKEND, progress=False, seed=0, **kw)


# ------------------------------------------------------------------------------ W1, W2: per-sample path
class _Functional(nn.Module):
    """The head's weight is used functionally: its module forward never runs."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return F.linear(torch.relu(self.enc(x)), self.head.weight, self.head.bias)


def test_linear_layer_used_functionally_is_refused_for_per_sample_clipping():
    """certun's linear path cannot see per-sample gradients of a layer whose forward never ran: refused, not
    silently taken as zero; batch clipping runs it."""
    with pytest.raises(UnsupportedModelError, match="functionally"):
        _run(_data(), model=_Functional(), params=["head.weight", "head.bias"], frozen="public")
    r = _run(_data(), model=_Functional(), params=["head.weight", "head.bias"], frozen="public", clip="batch")
    assert r.certificate is not None


class _SeqFirst(nn.Module):
    """Takes (B, S, F) from the loader and runs its linear layer on the (S, B, F) layout."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x.transpose(0, 1)).sum(0)


@pytest.mark.parametrize("clip", ["per_sample", "ghost"])
def test_sequence_first_layer_is_refused_for_per_sample_clipping(clip):
    """A hooked layer seeing (S, B, F) would split per-sample gradients along S: refused with a certun error."""
    X, y = torch.randn(4, 2, 3), torch.randint(0, 2, (4,))
    with pytest.raises(UnlearningRunError, match="batch-first"):
        _run([(X, y)], model=_SeqFirst(), clip=clip)
    assert _run([(X, y)], model=_SeqFirst(), clip="batch").certificate is not None


# ------------------------------------------------------------------------------ W3: retain identifiers
def test_retain_ids_must_number_the_retain_records():
    """Explicit retain ids that do not number the dataset's records (or one pass's samples) are refused."""
    ds = TensorDataset(torch.randn(12, 4), torch.randint(0, 2, (12,)))
    with pytest.raises(InvalidParameterError, match="retain_ids"):
        _run(DataLoader(ds, batch_size=4), retain_ids=range(10))
    assert _run(DataLoader(ds, batch_size=4), retain_ids=range(100, 112)).record.retain_count == 12
    with pytest.raises(UnlearningRunError, match="retain identifiers"):
        _run(_data(), retain_ids=[1, 2], schedule=_gc(T=5))
    with pytest.raises(UnlearningRunError, match="retain identifiers"):
        _run(_data(), retain_ids=[1, 2], finetune_epochs=1)
    assert _run(_data(), retain_ids=range(16), schedule=_gc(T=5)).record.retain_count == 16


# ------------------------------------------------------------------------------ certun errors
class _InplaceAfterSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.sigmoid(self.a(x))
        h.mul_(2)  # modifies a tensor sigmoid saved for backward
        return self.b(h)


class _DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return {"logits": self.lin(x)}


_X, _Y = torch.randn(8, 4), torch.randint(0, 2, (8,))
BAD_INPUTS = {
    "targets of another batch size (batch clip)": (dict(data=[(_X, _Y[:4])], clip="batch"),
                                                   UnlearningRunError, "loss_fn failed"),
    "targets of another batch size (per-sample)": (dict(data=[(_X, _Y[:4])]), UnlearningRunError, "batch size 4"),
    "float targets": (dict(data=[(_X, _Y.float())], clip="batch"), UnlearningRunError, "dtype float32"),
    "0-d targets": (dict(data=[(_X[0], _Y[0])], clip="batch"), UnlearningRunError, "0-d"),
    "(B, 1) targets": (dict(data=[(_X, _Y[:, None])], clip="batch"), UnlearningRunError, r"shape \(8, 1\)"),
    "device meta": (dict(data=[(_X, _Y)], device="meta"), InvalidParameterError, "device"),
    "in-place op breaking backward": (dict(data=[(_X, _Y)], clip="batch", model=_InplaceAfterSigmoid()),
                                      UnsupportedModelError, "out of place"),
    "model returning a dict": (dict(data=[(_X, _Y)], clip="batch", model=_DictOutput()),
                               UnlearningRunError, "returned a dict"),
    "loss without reduction": (dict(data=[(_X, _Y)], clip="batch", loss_fn=lambda o, t: F.cross_entropy(o, t)),
                               UnlearningRunError, "reduction"),
    "params as one string": (dict(data=[(_X, _Y)], params="0.weight"), InvalidParameterError, "single string"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_certun_errors_naming_the_problem(case):
    """Each malformed input ends in the stated certun error whose message names the offending value."""
    kw, error, message = BAD_INPUTS[case]
    kw = dict(kw)
    with pytest.raises(error, match=message):
        _run(kw.pop("data"), **kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused():
    """device='cuda' on a machine without CUDA is an InvalidParameterError, not torch's AssertionError."""
    with pytest.raises(InvalidParameterError, match="not available"):
        _run([(_X, _Y)], device="cuda")


def test_model_that_cannot_be_copied_is_refused_with_the_inplace_remedy():
    """A model deepcopy cannot copy (a non-leaf tensor attribute) gives a certun error suggesting inplace=True."""
    model = _mlp()
    model.cache = model[0].weight * 2  # non-leaf tensor: deepcopy refuses it
    with pytest.raises(UnsupportedModelError, match="inplace=True"):
        _run([(_X, _Y)], model=model, clip="batch")


# ------------------------------------------------------------------------------ retain data that ends or never ends
class _Endless:
    """A re-iterable endless stream."""

    def __iter__(self):
        while True:
            yield _X[:4], _Y[:4]


def test_endless_retain_stream_is_refused_for_whole_pass_phases():
    """Fine-tuning or recomputing BatchNorm over an endless stream would never return: refused up front; the
    noisy phase alone runs on it."""
    with pytest.raises(InvalidParameterError, match="endless"):
        _run(_Endless(), clip="batch", finetune_epochs=1)
    bn = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(InvalidParameterError, match="endless"):
        _run(_Endless(), model=bn, clip="batch", buffers="recompute")
    assert _run(_Endless(), clip="batch", schedule=_gc(T=3)).record.noisy_steps == 3


def test_one_shot_generator_is_named_as_consumed_not_empty():
    """A generator as retain data: refused for fine-tuning, and said to be consumed (not empty) when the noisy
    phase needs a second pass."""
    def gen():
        yield _X, _Y

    with pytest.raises(InvalidParameterError, match="iterator"):
        _run(gen(), clip="batch", finetune_epochs=1)
    with pytest.raises(UnlearningRunError, match="consumed"):
        _run(gen(), clip="batch", schedule=_gc(T=3))


# ------------------------------------------------------------------------------ cosmetic
def test_submodule_train_eval_flags_are_restored():
    """A submodule the caller put in eval() mode is still in eval() mode afterwards (in place too)."""
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    model[1].eval()
    for inplace in (False, True):
        r = _run(_data(), model=model, clip="batch", inplace=inplace)
        assert r.model.training and not r.model[1].training and r.model[0].training


def test_flat_centre_follows_named_parameters_order_whatever_the_params_order():
    """A flat centre is in named_parameters() order; with params listed in another order it is refused (a state
    dict is accepted in any order), and x follows named_parameters() order either way."""
    model = _mlp()
    names = ["2.bias", "2.weight"]
    with pytest.raises(InvalidParameterError, match="named_parameters"):
        _run(_data(), model=model, params=names, center=torch.zeros(18), clip="batch", frozen="public")
    r = _run(_data(), model=model, params=names[::-1], center=torch.zeros(18), clip="batch", frozen="public")
    assert r.record.unlearned_parameters == ("2.weight", "2.bias")
    state = {"2.bias": torch.zeros(2), "2.weight": torch.zeros(2, 8)}
    assert _run(_data(), model=model, params=names, center=state, clip="batch",
                frozen="public").certificate is not None
