"""Run options: every option set is an enum defined once, accepted as member or string, validated in one place."""

from __future__ import annotations

import numpy as np
import pytest

import certun
from certun.backends import (
    AttributesMode,
    BufferMode,
    ClipMode,
    FrozenMode,
    NoiseMode,
    Postprocess,
    get_backend,
)
from certun.backends.numpy_backend import LinearModel, batches
from certun.errors import InvalidParameterError


def _data():
    rng = np.random.default_rng(0)
    return LinearModel(rng.normal(size=(3, 4)), rng.normal(size=3)), batches(rng.normal(size=(16, 4)),
                                                                             rng.integers(0, 3, 16), 8)


def _gc():
    return certun.plan(1.0, 1e-5, C0=2.0, C1=0.5, gamma=0.05, T=2)


def test_enum_members_and_their_strings_give_the_same_run():
    """clip=ClipMode.BATCH and clip="batch" are one option: same record, same released model."""
    model, data = _data()
    a = certun.unlearn(model, data, _gc(), backend="numpy", seed=3, clip=ClipMode.BATCH,
                       postprocess=Postprocess.NONE, noise_mode=NoiseMode.FRESH)
    b = certun.unlearn(model, data, _gc(), backend="numpy", seed=3, clip="batch", postprocess="none")
    assert np.array_equal(a.model.flat(), b.model.flat())
    assert a.record.clipping == "batch" and type(a.record.clipping) is str
    assert a.certificate["execution"]["postprocess"] == "none"


@pytest.mark.parametrize("name,value", [("clip", "per-sample"), ("postprocess", "project"), ("noise_mode", "reuse"),
                                        ("clip", FrozenMode.PUBLIC), ("clip", None)])
def test_an_unknown_mode_is_refused_naming_the_valid_ones(name, value):
    model, data = _data()
    with pytest.raises(InvalidParameterError, match=name) as info:
        get_backend("numpy").unlearn(model, data, _gc(), **{name: value})
    assert "one of" in str(info.value)


def test_the_audit_uses_the_one_noise_mode_enum():
    from certun.audit import NOISE_MODES

    assert NOISE_MODES == tuple(m.value for m in NoiseMode)


@pytest.mark.parametrize("name,enum", [("buffers", BufferMode), ("frozen", FrozenMode),
                                       ("attributes", AttributesMode)])
def test_torch_modes_are_validated_with_the_shared_options(name, enum):
    """The torch backend's buffers/frozen/attributes modes are refused by the options check, before any work."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F  # noqa: N812

    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    with pytest.raises(InvalidParameterError, match=name):
        get_backend("torch").unlearn(torch.nn.Linear(3, 2), data, _gc(), loss_fn=F.cross_entropy, progress=False,
                                     **{name: "maybe"})
    run = get_backend("torch").unlearn(torch.nn.Linear(3, 2), data, _gc(), loss_fn=F.cross_entropy, progress=False,
                                       seed=1, **{name: next(iter(enum))})
    assert run.record.extra["noise_mode"] == "fresh"


def test_typed_groups_give_the_same_run_as_the_keywords():
    """certun.unlearn(after=After(...), noise=Noise(...), clipping=Clipping(...)) is the keyword call."""
    from certun.backends import After, Clipping, Noise

    model, data = _data()
    a = certun.unlearn(model, data, _gc(), backend="numpy", clipping=Clipping(mode=ClipMode.BATCH),
                       after=After(postprocess="none", finetune_epochs=1, finetune_lr=0.1), noise=Noise(seed=4))
    b = certun.unlearn(model, data, _gc(), backend="numpy", clip="batch", postprocess="none", finetune_epochs=1,
                       finetune_lr=0.1, seed=4)
    assert np.array_equal(a.model.flat(), b.model.flat())
    assert a.record.finetune == b.record.finetune == {"epochs": 1, "lr": 0.1, "steps": 2}


def test_a_group_and_its_own_keyword_together_are_refused():
    from certun.backends import After, Noise

    model, data = _data()
    with pytest.raises(InvalidParameterError, match="finetune_epochs"):
        certun.unlearn(model, data, _gc(), backend="numpy", after=After(finetune_epochs=1), finetune_epochs=2)
    with pytest.raises(InvalidParameterError, match="seed"):
        certun.unlearn(model, data, _gc(), backend="numpy", noise=Noise(seed=1), seed=2)
    with pytest.raises(InvalidParameterError, match="after"):
        certun.unlearn(model, data, _gc(), backend="numpy", after={"finetune_epochs": 1})
