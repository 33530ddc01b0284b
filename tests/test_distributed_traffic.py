"""What a distributed noisy step allocates and sends, counted (not timed) on 2 spawned ranks (gloo, CPU).

Every step's vector work runs over d (or d/W) float64 values: a d-sized buffer allocated and first
touched each step, or a gather in float64 of what the forward reads in float32, costs as much as the
arithmetic itself (docs/benchmarks.md, "Where a distributed step's time goes").
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def traffic(tmp_path_factory) -> list[dict]:
    import torch.multiprocessing as mp
    from dist_traffic import main

    folder = tmp_path_factory.mktemp("traffic")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=main, args=(r, 2, str(folder / "rendezvous"), str(folder))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    return [torch.load(folder / f"traffic.rank{r}.pt", weights_only=False) for r in range(2)]


def _per_step(counts: tuple[int, int]) -> float:
    """Allocations per step: the difference between the 6-step and the 2-step run, over 4 steps."""
    return (counts[1] - counts[0]) / 4


def test_the_replicated_gradient_reduction_allocates_nothing_per_step(traffic) -> None:
    """The d + 2 float64 sums are all-reduced in one buffer kept for the run, and divided into the run's
    float64 gradient: a replicated step allocates no more rank-sized buffers than a single process's."""
    for rank in traffic:
        assert _per_step(rank["replicated"]) <= _per_step(rank["single"]), rank


def test_the_sharded_master_is_gathered_in_the_parameters_dtype(traffic) -> None:
    """The forward reads the master rounded to float32: each shard is rounded before the all-gather (half
    the bytes of float64, and the same model). Only the release gathers the float64 master, once."""
    for rank in traffic:
        d = rank["d"]
        master = [(dtype, n) for dtype, n in rank["gathers"] if n >= d // 2]
        assert [dtype for dtype, _ in master].count(torch.float32) == 4, master
        assert [dtype for dtype, _ in master].count(torch.float64) == 1, master


@pytest.mark.parametrize(("layout", "pairs"), [("sharded", 1), ("fsdp", 2)])
def test_a_sharded_steps_statistics_take_one_all_reduce(traffic, layout, pairs) -> None:
    """The step's two recorded norms (gradient, distance to the centre) are whole-vector norms: their squared
    shard norms travel in ONE all-reduce of 2 values, not two of 1 (each a round trip every rank waits on).
    The clip's own measurements (measure, and again after shrinking) stay one value each; ``fsdp`` also
    all-reduces its loss and batch size as one pair per step."""
    for rank in traffic:
        short, long = ([n for _, n in calls] for calls in rank[f"reduces.{layout}"])
        assert (long.count(2) - short.count(2)) / 4 == pairs, (short, long)
        assert (long.count(1) - short.count(1)) / 4 <= 2, (short, long)
