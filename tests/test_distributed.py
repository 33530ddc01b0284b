"""Distributed runs (gloo, CPU, spawned ranks): the same update, noise and certificate as one process.

Each world size is launched once (module fixtures) and runs every job in one process group; the
tests read what each rank wrote (:mod:`dist_workers`).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from dist_workers import flat, global_batches, launch, load, model, schedule

import certun

torch.set_num_threads(1)
Z5 = 5.0  # 5-sigma bands, as the single-process noise statistics test

#: (name, schedule, clip): every noisy variant, both clip granularities (batch clipping inactive too, where
#: the global mean's scale shows), both model-clipping modes
VARIANTS = [("gc_ps", "gc", "per_sample"), ("gc_batch", "gc", "batch"), ("gc_wide", "gc_wide", "batch"),
            ("mc", "mc", "per_sample"),
            ("mc_clip", "mc_clip", "per_sample"), ("op", "op", "per_sample")]
LAYOUTS = ("replicated", "sharded")
JOBS = [dict(name=f"{name}.{layout}", schedule=sched, clip=clip, layout=layout)
        for (name, sched, clip), layout in itertools.product(VARIANTS, LAYOUTS)]
STATS = [dict(name=f"stats.{layout}", schedule="stats", clip="batch", layout=layout, model="wide", seed=11,
              record_noise=layout == "sharded") for layout in LAYOUTS]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Launch W = 1, 2, 3 once each on every job; returns ``{W: folder}``."""
    out = {}
    for world in (1, 2, 3):
        folder = tmp_path_factory.mktemp(f"world{world}")
        assert launch(world, folder, JOBS + STATS) == [0] * world
        out[world] = folder
    return out


def _single(sched, clip):
    return flat(certun.unlearn(model(), global_batches(), schedule(sched), loss_fn=F.cross_entropy, clip=clip,
                               seed=7, progress=False, device="cpu").model)


@pytest.mark.parametrize(("name", "sched", "clip"), VARIANTS)
def test_every_world_size_gives_the_single_process_model(worlds, name, sched, clip):
    """Same seed, same global batches: W = 1, 2, 3, replicated or sharded, equal the single-process model
    up to the order of the float64 reductions; all replicas hold the identical model."""
    expected = _single(sched, clip)
    for world, layout in itertools.product(worlds, LAYOUTS):
        got = [load(worlds[world], f"{name}.{layout}", r) for r in range(world)]
        assert [g["error"] for g in got] == [None] * world, got[0].get("trace")
        for g in got:
            assert torch.equal(g["flat"], got[0]["flat"])
        torch.testing.assert_close(got[0]["flat"], expected, rtol=1e-9, atol=1e-11)
        assert got[0]["record"]["world_size"] == world
        assert got[0]["record"]["sharding"] == ("replicated" if layout == "replicated" else "sharded-master")


def test_the_distributed_update_is_not_trivially_the_same(worlds):
    """The comparison above can fail: per-sample and batch clipping give different models distributed too."""
    a, b = (load(worlds[2], f"{n}.replicated", 0)["flat"] for n in ("gc_ps", "gc_batch"))
    assert not torch.allclose(a, b)


def test_shards_add_exactly_the_single_process_draw(worlds):
    """Sharded: each rank draws only its coordinates, and the shards concatenated are the whole draw, bit for bit."""
    for world in (2, 3):
        ranks = [load(worlds[world], "stats.sharded", r)["draws"] for r in range(world)]
        assert len(ranks[0]) == 3
        for step in range(3):
            pieces = sorted((draws[step] for draws in ranks), key=lambda p: p[0])
            assert pieces[0][0] == 0 and pieces[-1][1] == 10100
            assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))  # contiguous, no overlap
            assert all(p[2].numel() == p[1] - p[0] for p in pieces)
            assert torch.equal(torch.cat([p[2] for p in pieces]), pieces[0][3])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_distributed_noise_is_fresh_iid_and_of_the_planned_scale(worlds, layout):
    """The single-process statistics test, distributed: with zero gradients each step adds N(0, σ_t² I) once
    (not once per rank: variance ratio 1, not W), steps uncorrelated; 5-sigma bands at d = 10100."""
    world = 3
    ranks = [load(worlds[world], f"stats.{layout}", r) for r in range(world)]
    if layout == "sharded":
        xs = [torch.cat(step) for step in zip(*(r["iterates"] for r in ranks), strict=True)]
    else:
        xs = ranks[0]["iterates"]
    xs = [flat(model("wide")).double(), *xs]
    increments = [(b - a).numpy() for a, b in itertools.pairwise(xs)]
    d = increments[0].size
    assert d == 10100
    for n, sigma in zip(increments, (0.5, 1.0, 2.0), strict=True):
        assert abs(n.var() / sigma**2 - 1) < Z5 * np.sqrt(2 / d)
        assert abs(n.mean()) < Z5 * sigma / np.sqrt(d)
    for i, j in itertools.combinations(range(3), 2):
        assert abs(np.corrcoef(increments[i], increments[j])[0, 1]) < Z5 / np.sqrt(d)
