"""FSDP2 modules (``fully_shard``, gloo, CPU, spawned ranks): each rank updates only its own shards, and
together they give the single-process noise, model and certificate.

Each world size is launched once (module fixture) and runs every job in one process group
(:mod:`dist_workers`); the model's dim-0 sizes 5, 2, 3 give uneven shards for W = 2, 3, and rank 2 of
W = 3 holds no row of the 2-row layer.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from certificates_fixtures import failed, reseal
from dist_workers import flat, global_batches, launch, load, model, schedule

import certun

torch.set_num_threads(1)
Z5 = 5.0

#: (name, schedule, clip): every noisy variant FSDP2 supports (batch clipping, active and inactive; both
#: model-clipping modes; output perturbation, which clips nothing)
VARIANTS = [("gc_batch", "gc", "batch"), ("gc_wide", "gc_wide", "batch"), ("mc", "mc", "batch"),
            ("mc_clip", "mc_clip", "batch"), ("op", "op", "per_sample")]
JOBS = [dict(name=name, schedule=sched, clip=clip, layout="fsdp", model="uneven") for name, sched, clip in VARIANTS]
JOBS += [dict(name="warm", schedule="gc", clip="batch", layout="fsdp", model="uneven", warm=True)]
JOBS += [dict(name="stats", schedule="stats", clip="batch", layout="fsdp", model="wide", seed=11, record_noise=True),
         dict(name="per_sample", schedule="gc", clip="per_sample", layout="fsdp", model="uneven"),
         dict(name="copy", schedule="gc", clip="batch", layout="fsdp", model="uneven", inplace=False),
         dict(name="as_sharded", schedule="gc", clip="batch", layout="sharded", model="uneven", fully_shard=True),
         dict(name="unsharded", schedule="gc", clip="batch", layout="fsdp", model="uneven", fully_shard=False),
         dict(name="hidden", schedule="gc", clip="batch", layout="fsdp", model="uneven", hide=True)]
JOBS += [dict(name="bf16", schedule="gc", clip="batch", layout="fsdp", model="uneven", reduce_dtype=torch.bfloat16)]
JOBS += [dict(name=name, schedule="gc_wide", clip="batch", layout="fsdp", model="uneven", reduction=name)
         for name in ("divide", "nosync")]
CERT = [dict(name="cert", schedule="gc", clip="batch", layout="fsdp", model="uneven", ids=True, cert=True)]
CERT += [dict(name=fault, schedule="gc", clip="batch", layout="fsdp", model="uneven", ids=True, cert=True,
              fault=fault) for fault in ("nan", "badbatch")]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Launch W = 1, 2, 3 once each on every job (W = 2 also issues a certificate); returns ``{W: folder}``."""
    out = {}
    for world in (1, 2, 3):
        folder = tmp_path_factory.mktemp(f"fsdp{world}")
        assert launch(world, folder, JOBS + (CERT if world == 2 else [])) == [0] * world
        out[world] = folder
    return out


def _single(sched, clip):
    return flat(certun.unlearn(model("uneven"), global_batches(), schedule(sched), loss_fn=F.cross_entropy,
                               clip=clip, seed=7, progress=False, device="cpu").model)


@pytest.mark.parametrize(("name", "sched", "clip"), VARIANTS)
def test_every_world_size_gives_the_single_process_model(worlds, name, sched, clip):
    """Same seed, same global batches: the shards of W = 1, 2, 3 gathered equal the single-process model up to
    the order of the reductions (FSDP2 reduce-scatters in the parameters' dtype, float64 here)."""
    expected = _single(sched, clip)
    for world in worlds:
        got = [load(worlds[world], name, r) for r in range(world)]
        assert [g["error"] for g in got] == [None] * world, got[0].get("trace")
        torch.testing.assert_close(got[0]["flat"], expected, rtol=1e-9, atol=1e-11)
        assert got[0]["record"]["sharding"] == "fsdp2" and got[0]["record"]["world_size"] == world
        assert got[0]["record"]["gradient"] == "sum-reduce-scattered-over-global-batch"


def test_a_module_left_gathered_by_a_forward_is_unlearned_from_its_shards(worlds):
    """reshard_after_forward=False and one forward before the call (the registered parameters are then the
    gathered plain tensors): the run unlearns the shards, and the model is the single-process one."""
    expected = _single("gc", "batch")
    for world in worlds:
        got = load(worlds[world], "warm", 0)
        assert got["error"] is None, got.get("trace")
        torch.testing.assert_close(got["flat"], expected, rtol=1e-9, atol=1e-11)


def test_the_comparison_can_fail(worlds):
    """Clipping active or not, and the two model-clipping modes, give different models: the test above can fail."""
    a, b, c, d = (load(worlds[2], n, 0)["flat"] for n in ("gc_batch", "gc_wide", "mc", "mc_clip"))
    assert not torch.allclose(a, b) and not torch.allclose(c, d)


def test_shards_add_exactly_the_single_process_draw(worlds):
    """Each rank draws only the global coordinates of its shards; put back in place, the ranks' draws are the
    single-process draw bit for bit, every coordinate covered exactly once."""
    for world in (1, 2, 3):
        ranks = [load(worlds[world], "stats", r)["draws"] for r in range(world)]
        assert all(len(draws) == 3 for draws in ranks)
        for step in range(3):
            whole = ranks[0][step][2]
            assert whole.numel() == 10100
            covered = torch.zeros(10100, dtype=torch.int64)
            for draws in ranks:
                spans, z, _ = draws[step]
                assert z.numel() == sum(count for _, count in spans)
                pieces = torch.split(z, [count for _, count in spans])
                for (start, count), piece in zip(spans, pieces, strict=True):
                    assert torch.equal(piece, whole[start:start + count])
                    covered[start:start + count] += 1
            assert torch.equal(covered, torch.ones_like(covered))


def test_fsdp_noise_is_fresh_iid_and_of_the_planned_scale(worlds):
    """Zero gradients: each step adds N(0, σ_t² I) once, not once per rank (5-sigma bands at d = 10100)."""
    got = load(worlds[3], "stats", 0)
    assert got["error"] is None, got.get("trace")
    n = (got["flat"].double() - flat(model("wide")).double()).numpy()  # the three draws summed (decay ~1e-4)
    var = sum(s**2 for s in (0.5, 1.0, 2.0))
    assert abs(n.var() / var - 1) < Z5 * np.sqrt(2 / n.size) + 1e-3
    assert abs(n.mean()) < Z5 * np.sqrt(var / n.size)


def test_per_sample_clipping_and_copies_are_refused_on_every_rank(worlds):
    """Per-sample clipping cannot be sound on shards; a fully_shard module cannot be copied; a sharded module
    given another layout, or a plain module given 'fsdp', is refused with what is valid."""
    for world in (1, 2, 3):
        for name, words in (("per_sample", ("clip", "'batch'", "fsdp")), ("copy", ("inplace", "True")),
                            ("as_sharded", ("'fsdp'", "fully_shard")), ("unsharded", ("fully_shard", "DTensor"))):
            errors = [load(worlds[world], name, r)["error"] for r in range(world)]
            assert all(e is not None and e.startswith(("InvalidParameterError", "UnsupportedModelError"))
                       for e in errors), errors
            assert all(w in errors[0] for w in words), errors[0]


def test_rank_zero_alone_writes_a_certificate_that_verifies(worlds):
    """The certificate records the FSDP2 layout, its digests are of the whole tensors, and it verifies."""
    folder = worlds[2]
    zero, one = load(folder, "cert", 0), load(folder, "cert", 1)
    assert zero["error"] is None and one["error"] is None, zero.get("trace") or one.get("trace")
    assert zero["issued"] and not one["issued"] and not (folder / "cert.rank1.json").exists()
    cert = json.loads((folder / "cert.rank0.json").read_text())
    recorded = cert["execution"]["distributed"]
    assert (recorded["sharding"], recorded["noise"]) == ("fsdp2", "positional-shards")
    assert recorded["gradient"] == "sum-reduce-scattered-over-global-batch"
    assert cert["execution"]["noise"]["positional"] is True
    report = certun.verify(cert, model=zero["state"])
    assert report.ok, failed(report)
    other = {k: v + 1e-3 if k == "0.weight" else v for k, v in zero["state"].items()}
    assert not certun.verify(cert, model=other).ok
    assert [tuple(v.shape) for v in zero["state"].values()] == [tuple(p.shape) for p in model("uneven").parameters()]


def test_verify_refuses_a_relabelled_fsdp_record(worlds):
    """An fsdp2 record claiming an all-reduced gradient or identical replicas, or sharded noise without a
    positional generator, fails verification even with the content digest recomputed."""
    cert = json.loads((worlds[2] / "cert.rank0.json").read_text())
    for path, value in ((("distributed", "gradient"), "sum-all-reduced-over-global-batch"),
                        (("distributed", "noise"), "identical-replicas"), (("noise", "positional"), False)):
        forged = json.loads(json.dumps(cert))
        forged["execution"][path[0]][path[1]] = value
        assert "consistency" in failed(certun.verify(reseal(forged))), path
    for key, value in (("backend", "numpy"), ("noise", None)):  # only torch runs distributed; a noisy run has noise
        forged = json.loads(json.dumps(cert))
        forged["execution"][key] = value
        assert {"consistency", "schema"} & set(failed(certun.verify(reseal(forged)))), key


@pytest.mark.parametrize(("fault", "rank0_says"), [("nan", "non-finite"),
                                                   ("badbatch", "rank 1 failed during reading a retain batch")])
def test_a_fault_on_one_rank_stops_every_rank_and_writes_nothing(worlds, fault, rank0_says):
    """NaN data or a malformed batch on rank 1: every rank raises a certun error, no certificate anywhere."""
    zero, one = load(worlds[2], fault, 0), load(worlds[2], fault, 1)
    assert zero["error"] is not None and one["error"] is not None
    assert rank0_says in zero["error"] and zero["error"].startswith("UnlearningRunError")
    assert not list(worlds[2].glob(f"{fault}.rank*.json"))


def test_a_tensor_hidden_under_a_composable_looking_name_is_still_found():
    """The attribute scans skip only torch's own composable-API state keys, not any attribute whose name
    looks like one: data stashed under a look-alike name is refused, and its later change is seen."""
    from torch import nn

    from certun.errors import UnsupportedModelError

    net = model("uneven")
    net[0].__dict__["__composable_api_state_key_stash"] = {"stats": torch.randn(3)}
    with pytest.raises(UnsupportedModelError, match="__composable_api_state_key_stash"):
        certun.unlearn(net, global_batches(), schedule("gc"), loss_fn=F.cross_entropy, clip="batch", seed=7,
                       progress=False, device="cpu")
    assert isinstance(net, nn.Module)


def test_a_tensor_hidden_inside_fully_shards_state_is_refused(worlds):
    """The attribute scan looks inside fully_shard's own state too: a tensor of D kept on its state object is
    refused on every rank (only the shards' storage, freed buffers and the mesh's rank map are torch's own)."""
    for world in worlds:
        errors = [load(worlds[world], "hidden", r)["error"] for r in range(world)]
        assert all(e is not None and e.startswith("UnsupportedModelError") for e in errors), errors
        assert ".stash" in errors[0], errors[0]


@pytest.mark.parametrize(("name", "words"), [("divide", ("set_gradient_divide_factor", "1.0")),
                                             ("nosync", ("set_requires_gradient_sync", "False"))])
def test_a_changed_gradient_reduction_is_refused(worlds, name, words):
    """The gradient is the reduce-scattered sum divided by W: a module told to divide by another factor (the
    gradient scaled by W) or not to reduce at all (no gradient on the shards) is refused with what to undo."""
    for world in (2, 3):
        errors = [load(worlds[world], name, r)["error"] for r in range(world)]
        assert all(e is not None and e.startswith("UnsupportedModelError") for e in errors), errors
        assert all(w in errors[0] for w in words), errors[0]


def test_a_bf16_reduce_scatter_is_clipped_after_the_reduction(worlds):
    """MixedPrecisionPolicy(reduce_dtype=bfloat16): the gradient arrives rounded to bf16, and the float64 clip
    and projection act on it afterwards: the run goes through, its model is the single-process one up to
    bf16 rounding of the gradient, and the release lies in the C0 ball."""
    expected = _single("gc", "batch")
    for world in (2, 3):
        got = load(worlds[world], "bf16", 0)
        assert got["error"] is None, got.get("trace")
        assert float(got["flat"].norm()) <= 1.0 + 1e-12
        torch.testing.assert_close(got["flat"], expected, rtol=0, atol=5e-2)
        assert not torch.equal(got["flat"], load(worlds[world], "gc_batch", 0)["flat"])


def test_shards_that_do_not_partition_the_vector_are_refused_before_any_noise(tmp_path):
    """Attack: every rank believes it holds mesh coordinate 0 (even shards, so each local size still fits). Each
    would add chunk 0's noise to its own shard: the same draw twice and none for chunk 1. Every rank refuses."""
    assert launch(2, tmp_path, [dict(name="coordinate", schedule="gc", clip="batch", layout="fsdp", model="wide",
                                     fault="coordinate", cert=True, record_noise=True)]) == [0, 0]
    for rank in (0, 1):
        got = load(tmp_path, "coordinate", rank)
        assert got["error"] is not None and got["error"].startswith("UnlearningRunError"), got["error"]
        assert "ranks 0 and 1 both hold coordinate 0" in got["error"], got["error"]
        assert got["draws"] == []  # recorded: no rank drew any noise
    assert not list(tmp_path.glob("coordinate.rank*.json"))


@pytest.mark.parametrize(("per_rank", "d", "words"), [
    ([[(0, 5)], [(5, 5)]], 10, None),
    ([[(0, 5)], [(0, 5)]], 10, "both hold coordinate 0"),
    ([[(0, 4)], [(5, 5)]], 10, "[4, 5) are held by no rank"),
    ([[(0, 5)], [(5, 4)]], 10, "[9, 10) are held by no rank"),
    ([[(0, 2), (6, 4)], [(2, 4)], []], 10, None),
    ([[(0, 6)], [(5, 5)]], 10, "both hold coordinate 5"),
])
def test_the_cover_check_finds_every_gap_and_overlap(per_rank, d, words):
    from certun.backends.torch._fsdp_layout import check_cover
    from certun.errors import UnlearningRunError

    if words is None:
        check_cover(per_rank, d)
    else:
        with pytest.raises(UnlearningRunError, match=re.escape(words)):
            check_cover(per_rank, d)
