"""Distributed resume under failures on ONE rank and rank files swapped (gloo, CPU, spawned ranks): the ranks
still end with checkpoints they can resume together, and a rank never resumes another rank's state.

See :mod:`dist_review_workers` for what each job does.
"""

from __future__ import annotations

import pytest
import torch
from dist_review_workers import launch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("review")
    two = [dict(name="ref2", layout="replicated"),
           dict(name="ioerr.crash", layout="replicated", ckpt="ioerr", fail_rank=1, fail_at=3),
           dict(name="ioerr", layout="replicated", ckpt="ioerr"),
           dict(name="every", layout="replicated", ckpt="every", every={1: 3}),
           dict(name="full.crash", layout="replicated", ckpt="full", full_rank=1, full_at=2),
           dict(name="full", layout="replicated", ckpt="full"),
           dict(name="somedir", layout="sharded", ckpt="somedir", ckpt_ranks=[1]),
           dict(name="blob", layout="replicated", ckpt="blob", blob_rank=1)]  # last: the old code lost rank 1
    assert launch(2, out, two) == [0, 0]
    three = [dict(name="swap.crash", layout="sharded", ckpt="swap", raise_at=3),
             dict(name="swap", layout="sharded", ckpt="swap", before="swap")]
    assert launch(3, out, three) == [0, 0, 0]
    return out


def _load(out, name, world):
    return [torch.load(out / f"{name}.rank{r}.pt", weights_only=False) for r in range(world)]


def test_a_read_error_on_one_rank_keeps_every_ranks_checkpoint_and_resumes(runs):
    """Rank 1's data raises OSError at step 3 (a crash there, not a certun refusal): rank 1 keeps its checkpoint,
    so rank 0, told of it, must keep its own too; else the folder can never be resumed (one rank has a
    checkpoint, the other none). The resume then ends as the uninterrupted run."""
    crashed = _load(runs, "ioerr.crash", 2)
    assert crashed[1]["error"].startswith("OSError"), crashed[1]["error"]
    assert crashed[0]["error"].startswith("UnlearningRunError"), crashed[0]["error"]
    assert [c["left"] for c in crashed] == [True, True]
    resumed, ref = _load(runs, "ioerr", 2), _load(runs, "ref2", 2)
    assert [r["error"] for r in resumed] == [None, None], resumed[0].get("trace")
    assert [r["resumed_from"] for r in resumed] == [2, 2]
    assert resumed[0]["flat"].numpy().tobytes() == ref[0]["flat"].numpy().tobytes()
    assert not any(r["left"] for r in resumed)


def test_rank_files_swapped_between_ranks_are_refused_on_every_rank(runs):
    """W = 3 sharded (d = 51: three shards of 17, so lengths cannot tell them apart): the files of ranks 0 and 1
    swapped would resume each rank on the other's shard, a master no step of the run leaves. Refused before any
    step, the same on every rank, every file kept."""
    ranks = _load(runs, "swap", 3)
    messages = [r["error"] for r in ranks]
    assert all(m is not None and m.startswith("InvalidParameterError") for m in messages), messages
    assert len(set(messages)) == 1, messages
    assert "rank" in messages[0] and "another rank" in messages[0], messages[0]
    assert all(r["flat"] is None and r["left"] for r in ranks)


def test_the_start_time_read_back_on_a_rank_is_not_checked_again_against_an_earlier_clock(tmp_path):
    """A distributed rank checks its checkpoint's start time when it reads it (before the ranks agree); the run then
    asked again with the time the run began, EARLIER than that read. A checkpoint started in between (the file
    written on a node whose clock is ahead: a shared folder, ranks placed on other nodes) then raised on that rank
    alone, outside any agreement, while its peers went on into the next collective."""
    from certun.backends._resume import Resume
    from certun.backends.run_key import run_key

    key = run_key(7, b"{}")
    resume = Resume(tmp_path, 2, key, {}, saved={"started_at": "2026-01-01T00:00:10Z", "done": 2})
    assert resume.began("2026-01-01T00:00:20Z") == "2026-01-01T00:00:10Z"  # the read, on every rank
    assert resume.began("2026-01-01T00:00:05Z") == "2026-01-01T00:00:10Z"  # the run's own start: same answer


def test_another_checkpoint_interval_on_one_rank_is_refused_before_any_step(runs):
    """Rank 1 checkpoints every 3 steps, rank 0 every 2: the ranks would write (a collective) at different steps,
    stop mid-run out of step and leave checkpoints of different steps. Refused up front, the same on every rank,
    naming checkpoint_every; nothing run, nothing left."""
    ranks = _load(runs, "every", 2)
    messages = [r["error"] for r in ranks]
    assert all(m is not None and m.startswith("InvalidParameterError: checkpoint_every=") for m in messages), messages
    assert len(set(messages)) == 1 and "{0: 2, 1: 3}" in messages[0], messages
    assert all(r["flat"] is None and not r["left"] for r in ranks)
    assert not (runs / "every").exists()


def test_a_write_failing_on_one_rank_leaves_every_rank_at_the_previous_checkpoint(runs):
    """Rank 1's disk fills after the checkpoint of step 2: its write of step 4 fails. The ranks that wrote step 4
    replaced their step-2 file, so the folder held steps {4, 2} and could never be resumed, though the error
    said to free the folder and resume. Every rank now writes beside the old file and replaces it only once all
    wrote: both stay at step 2, and the resume ends as the uninterrupted run."""
    crashed = _load(runs, "full.crash", 2)
    assert all(c["error"].startswith("UnlearningRunError") for c in crashed), [c["error"] for c in crashed]
    assert "could not write the checkpoint of step 4" in crashed[1]["error"], crashed[1]["error"]
    assert [c["left"] for c in crashed] == [True, True]
    resumed, ref = _load(runs, "full", 2), _load(runs, "ref2", 2)
    assert [r["error"] for r in resumed] == [None, None], resumed[0]["error"]
    assert [r["resumed_from"] for r in resumed] == [2, 2]
    assert resumed[0]["flat"].numpy().tobytes() == ref[0]["flat"].numpy().tobytes()
    assert not any(r["left"] for r in resumed)


def test_a_checkpoint_dir_given_on_some_ranks_only_is_refused_on_every_rank(runs):
    """Rank 1 given checkpoint_dir, rank 0 not (a launcher passing it to one node): the ranks entered different
    collectives at start and stopped 'out of step'. A clear error naming checkpoint_dir, the same on both;
    nothing run, no folder left."""
    ranks = _load(runs, "somedir", 2)
    messages = [r["error"] for r in ranks]
    assert all(m is not None and m.startswith("InvalidParameterError: checkpoint_dir=") for m in messages), messages
    assert len(set(messages)) == 1 and "every rank or on none" in messages[0], messages
    assert all(r["flat"] is None for r in ranks) and not (runs / "somedir").exists()


def test_a_failure_building_the_checkpoint_on_one_rank_stops_every_rank_at_once(runs):
    """Rank 1 cannot copy its master into the checkpoint's bytes (MemoryError): that happened before the write's
    agreement, so rank 1 left alone while rank 0 waited in the write's collective (a hang, or a lost peer). Now
    inside it: rank 0 is told at once, and both keep what they had (a crash: nothing written at step 2)."""
    ranks = _load(runs, "blob", 2)
    assert ranks[1]["error"].startswith("MemoryError"), ranks[1]["error"]
    assert "rank 1 failed during writing the checkpoints of step 2: MemoryError" in ranks[0]["error"], ranks[0]
    assert not any(r["left"] for r in ranks)
