"""Backend inputs users really pass: forget identifiers checked against the id scheme, numbers as numpy scalars."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import certun
from certun.backends import get_backend
from certun.certificates import provenance as certify
from certun.errors import InvalidParameterError

ORIGINAL = TensorDataset(torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,)))
KEEP = list(range(8))  # records 8 and 9 are deleted


def _subset_loader() -> DataLoader:
    return DataLoader(Subset(ORIGINAL, KEEP), batch_size=4)


def _rebuilt_loader() -> DataLoader:
    """The natural workflow: a new dataset holding only the retained rows (indices renumbered 0..7)."""
    x, y = ORIGINAL.tensors
    return DataLoader(TensorDataset(x[KEEP], y[KEEP]), batch_size=4)


@pytest.mark.parametrize(("forget", "fragment"), [
    ([10**9], "[0, 10)"), ([-1], "[0, 10)"), (["alice"], "[0, 10)"), ([8, 10], "[0, 10)"),
])
def test_dataset_index_forget_ids_out_of_the_index_space_are_refused(forget, fragment):
    """``forget_ids=[10**9]``, ``[-1]`` or ``["alice"]`` are not indices of the original dataset: refused."""
    with pytest.raises(InvalidParameterError) as info:
        certify.identifiers(_subset_loader(), None, forget)
    assert info.value.name == "forget_ids" and fragment in str(info.value)
    assert "retain_ids=" in str(info.value)  # says what to pass for other identifiers


@pytest.mark.parametrize("forget", [[8, 9], [3], [0, 9]])
def test_rebuilt_retain_dataset_with_original_indices_says_exactly_what_to_pass(forget):
    """A plain retain dataset retains all its indices: the error names Subset(original, ...) and retain_ids=."""
    with pytest.raises(InvalidParameterError) as info:
        certify.identifiers(_rebuilt_loader(), None, forget)
    message = str(info.value)
    assert info.value.name == "forget_ids"
    assert "torch.utils.data.Subset(original, retain_indices)" in message and "retain_ids=" in message


def test_the_two_routes_the_error_names_both_work():
    """Subset of the original with original indices, or explicit retain_ids with the rebuilt dataset."""
    ids = certify.identifiers(_subset_loader(), None, [8, 9])
    assert ids.id_scheme == "dataset-index" and ids.retain_size == 8
    ids = certify.identifiers(_rebuilt_loader(), KEEP, [8, 9])
    assert ids.id_scheme == "user" and ids.retain_size == 8
    ids = certify.identifiers(_rebuilt_loader(), [f"user-{i}" for i in KEEP], ["alice"])
    assert ids.id_scheme == "user"


def test_numpy_and_torch_integers_are_indices_but_floats_and_bools_are_not():
    """np.int64 and 0-d integer tensors are indices; 8.0, np.float64(8.7) and True are refused, not truncated."""
    ids = certify.identifiers(_subset_loader(), None, [np.int64(8), torch.tensor(9)])
    assert ids.forget_fingerprint == certify.identifiers(_subset_loader(), None, [8, 9]).forget_fingerprint
    for bad in (8.0, np.float64(8.7), torch.tensor(8.7), True, np.bool_(True), None):
        with pytest.raises(InvalidParameterError) as info:
            certify.identifiers(_subset_loader(), None, [bad])
        assert info.value.name == "forget_ids"
        with pytest.raises(InvalidParameterError):  # in the user scheme too
            certify.identifiers(_subset_loader(), KEEP, [bad])


def test_a_string_is_not_a_list_of_identifiers():
    """``forget_ids="alice"`` would be five one-letter identifiers: refused."""
    with pytest.raises(InvalidParameterError, match="iterable of record identifiers"):
        certify.identifiers(_subset_loader(), ["a"] * 8, "alice")


def test_torch_backend_refuses_before_running():
    """Through the backend: the rebuilt-dataset workflow is refused with the remedy, no model is changed."""
    model = nn.Linear(4, 3).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    schedule = certun.plan(1.0, 1e-5, C0=10.0, C1=1.0, gamma=1.0, T=2)
    with pytest.raises(InvalidParameterError, match="Subset"):
        get_backend("torch").unlearn(model, _rebuilt_loader(), schedule, loss_fn=F.cross_entropy,
                                     forget_ids=[8, 9], progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_run_options_take_numpy_scalars():
    """``finetune_lr=np.float32(0.05)`` and ``finetune_epochs=np.int64(1)`` are numbers like Python's."""
    from certun.backends._options import RunOptions

    schedule = certun.plan(1.0, 1e-5, C0=10.0, C1=1.0, gamma=1.0, T=2)
    common = dict(clip="per_sample", postprocess="project_C0", noise_mode="fresh", progress=False,
                  callback=None, noise_source=None)
    opts = RunOptions.check(schedule, finetune_epochs=np.int64(1), finetune_lr=np.float32(0.5), **common)
    assert (opts.finetune_epochs, opts.finetune_lr) == (1, 0.5) and type(opts.finetune_epochs) is int
    for kwargs in (dict(finetune_epochs=1.0, finetune_lr=0.5), dict(finetune_epochs=1, finetune_lr=np.nan),
                   dict(finetune_epochs=True, finetune_lr=0.5), dict(finetune_epochs=1, finetune_lr="0.5")):
        with pytest.raises(InvalidParameterError):
            RunOptions.check(schedule, **kwargs, **common)
