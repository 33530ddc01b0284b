"""SISA (exact route): unlearning equals training without the records, bit for bit; assignment is stable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from certun.backends.sisa import Sisa, SisaConfig, SisaEnsemble, assign
from certun.errors import InvalidParameterError

SALT = bytes(range(32))


def _data(n: int = 240, d: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return x, y.clamp(max=classes - 1), [f"user-{i}" for i in range(n)]


def _factory() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _sisa(config: SisaConfig) -> Sisa:
    return Sisa(_factory, config, salt=SALT, seed=7)


def _states(sisa: Sisa) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in m.state_dict().items()} for m in sisa.models]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cumulative", [True, False])
def test_unlearning_equals_training_without_the_records(cumulative: bool) -> None:
    config = SisaConfig(shards=3, slices=4, batch_size=16, cumulative=cumulative)
    x, y, ids = _data()
    forget = ids[5:9] + ids[100:101]
    sisa = _sisa(config)
    sisa.fit(x, y, ids)
    before = _states(sisa)
    report = sisa.unlearn(forget)

    keep = [i for i, r in enumerate(ids) if r not in set(forget)]
    fresh = _sisa(config)
    fresh.fit(x[keep], y[keep], [ids[i] for i in keep])
    for s, (a, b) in enumerate(zip(_states(sisa), _states(fresh), strict=True)):
        assert _equal(a, b), f"shard {s} differs from training without the forgotten records"
    for s in report.untouched_shards:
        assert _equal(before[s], _states(sisa)[s]), f"untouched shard {s} changed"
    assert report.retrained_shards
    assert 0 < report.gradient_evaluations < report.full_retraining_evaluations


def test_forgotten_ids_are_in_no_retained_shard_and_assignment_is_stable() -> None:
    x, y, ids = _data()
    sisa = _sisa(SisaConfig(shards=4, slices=2, batch_size=32))
    sisa.fit(x, y, ids)
    shard_before, slice_before = assign(ids, shards=4, slices=2, salt=SALT)
    forget = ids[::7]
    sisa.unlearn(forget)
    held = {i for s in range(4) for i in sisa.shard_ids(s)}
    assert not held & set(forget)
    assert held == set(ids) - set(forget)
    keep = [i for i in ids if i not in set(forget)]
    shard_after, slice_after = assign(keep, shards=4, slices=2, salt=SALT)
    idx = [ids.index(i) for i in keep]
    assert np.array_equal(shard_after, shard_before[idx]) and np.array_equal(slice_after, slice_before[idx])


def test_assignment_depends_on_the_salt_not_the_content() -> None:
    ids = list(range(2000))
    a, _ = assign(ids, shards=5, slices=1, salt=SALT)
    b, _ = assign(ids, shards=5, slices=1, salt=bytes(32))
    assert not np.array_equal(a, b)
    counts = np.bincount(a, minlength=5)
    assert counts.min() > 300  # roughly balanced


def test_late_slice_deletion_restarts_late_and_costs_less() -> None:
    x, y, ids = _data(n=400)
    sisa = _sisa(SisaConfig(shards=5, slices=5, batch_size=32))
    sisa.fit(x, y, ids)
    _, slices = assign(ids, shards=5, slices=5, salt=SALT)
    late = ids[int(np.flatnonzero(slices == 4)[0])]
    report = sisa.unlearn([late])
    assert len(report.retrained_shards) == 1
    assert list(report.restart_stage.values()) == [4]
    assert report.restarted_from[report.retrained_shards[0]] is not None
    assert report.cost_ratio < 1 / 5


def test_ensemble_averages_probabilities() -> None:
    x, y, ids = _data()
    sisa = _sisa(SisaConfig(shards=2, slices=1))
    ensemble = sisa.fit(x, y, ids)
    assert isinstance(ensemble, SisaEnsemble)
    with torch.no_grad():
        p = ensemble(x[:10])
    assert torch.allclose(p.sum(dim=1), torch.ones(10, dtype=p.dtype))


def test_bad_requests_are_refused() -> None:
    x, y, ids = _data()
    sisa = _sisa(SisaConfig(shards=2, slices=2))
    with pytest.raises(InvalidParameterError, match="fit"):
        sisa.unlearn([ids[0]])
    sisa.fit(x, y, ids)
    sisa.unlearn([ids[0]])
    with pytest.raises(InvalidParameterError, match="still in the training set"):
        sisa.unlearn([ids[0]])
    with pytest.raises(InvalidParameterError, match="still in the training set"):
        sisa.unlearn(["nobody"])
    with pytest.raises(InvalidParameterError, match="shards"):
        SisaConfig(shards=0, slices=1)
    with pytest.raises(InvalidParameterError, match="distinct"):
        _sisa(SisaConfig(shards=1, slices=1)).fit(x[:2], y[:2], ["a", "a"])


def test_integer_settings_use_the_library_integer_check() -> None:
    """numpy and 0-d torch integers are integers (stored as int, so the manifest can record them); bools are not."""
    config = SisaConfig(shards=np.int64(2), slices=torch.tensor(3), batch_size=np.int32(8))
    assert (config.shards, config.slices, config.batch_size) == (2, 3, 8)
    assert all(type(v) is int for v in (config.shards, config.slices, config.batch_size))
    for bad in (True, 2.0, "2", torch.tensor(2.0)):
        with pytest.raises(InvalidParameterError, match="shards"):
            SisaConfig(shards=bad, slices=1)
    with pytest.raises(InvalidParameterError, match="seed"):
        Sisa(_factory, SisaConfig(shards=1, slices=1), salt=SALT, seed=-1)


def test_the_deletion_report_prints_no_unsalted_root_of_the_shards() -> None:
    """A logged repr of the report must not carry a shard's unsalted identifier root (a membership oracle)."""
    x, y, ids = _data()
    sisa = _sisa(SisaConfig(shards=3, slices=2, batch_size=32))
    sisa.fit(x, y, ids)
    report = sisa.unlearn(ids[:3])
    text = repr(report)
    for roots in (report.retain_roots_before, report.retain_roots_after):
        assert len(roots) == 3
        assert not any(root in text for root in roots.values())
    assert not any(i in text for i in ids)
