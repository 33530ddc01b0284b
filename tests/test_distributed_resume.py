"""Resumable distributed runs (gloo, CPU, spawned ranks): killed on every rank, resumed, bit-identical; and
every way the ranks' checkpoints can disagree refused on every rank before any step.

The launches run in order in one module fixture (a killed launch ends its ranks; the next one resumes):
see :mod:`dist_resume_workers` for what each job does.
"""

from __future__ import annotations

import json

import pytest
import torch
from dist_resume_workers import launch

import certun

torch.set_num_threads(1)

LAYOUTS = ("replicated", "sharded", "fsdp")


def _refs(world):
    return [dict(name=f"ref{world}.{layout}", layout=layout) for layout in LAYOUTS]


def _crash_then_resume(world):
    """A crash that leaves the process alive (the callback raises at step 3, after the checkpoint of step 2),
    then the resume in the same launch."""
    jobs = []
    for layout in LAYOUTS:
        ckpt = f"crash{world}-{layout}"
        jobs += [dict(name=f"crash{world}.{layout}", layout=layout, ckpt=ckpt, raise_at=3),
                 dict(name=f"res{world}.{layout}", layout=layout, ckpt=ckpt)]
    return jobs


def _kill(layout):
    return dict(name=f"kill.{layout}", layout=layout, ckpt=f"kill-{layout}", exit_at=4)


def _resume(layout):
    return dict(name=f"res2.kill.{layout}", layout=layout, ckpt=f"kill-{layout}")


#: checkpoints that cannot be resumed together, each made by a crash, then the attempt to resume
REFUSALS = [
    dict(name="missing.crash", layout="replicated", ckpt="missing", raise_at=3),
    dict(name="missing", layout="replicated", ckpt="missing", before="drop"),
    dict(name="steps.crash", layout="sharded", ckpt="steps", copy_at=2, raise_at=4),
    dict(name="steps", layout="sharded", ckpt="steps", before="restore"),
    dict(name="layout.crash", layout="replicated", ckpt="layout", raise_at=3),
    dict(name="layout", layout="sharded", ckpt="layout"),
    dict(name="world", layout="replicated", ckpt="crash3-world"),
    dict(name="tamper.crash", layout="replicated", ckpt="tamper", raise_at=3),
    dict(name="tamper", layout="replicated", ckpt="tamper", before="tamper"),
    dict(name="seed.crash", layout="sharded", ckpt="seed", raise_at=3),
    dict(name="seed", layout="sharded", ckpt="seed", seed_rank1=8),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every launch, in order; returns the folder that holds what each rank saved."""
    out = tmp_path_factory.mktemp("resume")
    three = _refs(3) + _crash_then_resume(3) + [
        dict(name="crash3.world", layout="replicated", ckpt="crash3-world", raise_at=3),
        dict(name="os.crash", layout="sharded", ckpt="os", raise_at=3, seed=None),
        dict(name="os", layout="sharded", ckpt="os", seed=None)]
    assert launch(3, out, three) == [0, 0, 0]
    assert launch(2, out, _refs(2) + REFUSALS + [dict(name="plain", layout="sharded", ckpt="plain"),
                                                 _kill("replicated")]) == [3, 3]
    assert launch(2, out, [_resume("replicated"), _kill("sharded")]) == [3, 3]
    assert launch(2, out, [_resume("sharded"), _kill("fsdp")]) == [3, 3]
    lost = dict(name="lost", layout="replicated", ckpt="lost", exit_at=2, exit_ranks=[1])
    assert launch(2, out, [_resume("fsdp"), lost]) == [0, 3]
    return out


def _load(out, name, world):
    return [torch.load(out / f"{name}.rank{r}.pt", weights_only=False) for r in range(world)]


def _same_run(out, name, ref, world, resumed_from):
    """The resumed run's model, history and certificate are the uninterrupted run's; every rank's folder is gone."""
    got, expected = _load(out, name, world), _load(out, ref, world)
    for g, e in zip(got, expected, strict=True):
        assert g["error"] is None, g.get("trace")
        assert g["resumed_from"] == resumed_from and e["resumed_from"] is None
        assert g["flat"].numpy().tobytes() == e["flat"].numpy().tobytes()
        assert {k: v for k, v in g["history"].items() if k != "time_s"} == \
            {k: v for k, v in e["history"].items() if k != "time_s"}
        assert not g["left"] and not g["subfolder"]
    cert, reference = (json.loads((out / f"{n}.json").read_text()) for n in (name, ref))
    for part in ("claim", "mechanism", "accounting", "subject"):
        assert cert[part] == reference[part]
    assert cert["execution"]["distributed"] == reference["execution"]["distributed"]
    assert certun.verify(cert, model=got[0]["state"]).ok


@pytest.mark.parametrize("layout", LAYOUTS)
def test_killed_on_every_rank_and_resumed_in_a_new_launch_is_bit_identical(runs, layout):
    """Every rank leaves by os._exit in the callback of step index 4 (checkpoints after 2 and 4 steps written);
    a new launch resumes all ranks after 4 steps and ends with the uninterrupted run's bytes."""
    _same_run(runs, f"res2.kill.{layout}", f"ref2.{layout}", 2, 4)
    assert not (runs / f"kill-{layout}").exists()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_three_ranks_resume_after_a_crash_bit_identical(runs, layout):
    """W = 3 (uneven shards): the callback raises at step 3 on every rank; the checkpoints of step 2 stay, and
    the resume ends as the uninterrupted run."""
    crashed = _load(runs, f"crash3.{layout}", 3)
    assert all(c["error"].startswith("CrashError") and c["left"] for c in crashed)
    _same_run(runs, f"res3.{layout}", f"ref3.{layout}", 3, 2)


def test_a_run_keyed_by_the_os_resumes_with_its_stored_secret(runs):
    """seed=None: the secret exists only in the checkpoints (rank 0 drew it); the resume takes it from there,
    every rank the same, and the certificate verifies with an OS key."""
    ranks = _load(runs, "os", 3)
    assert [r["error"] for r in ranks] == [None] * 3, ranks[0].get("trace")
    assert [r["resumed_from"] for r in ranks] == [2] * 3 and not any(r["subfolder"] for r in ranks)
    cert = json.loads((runs / "os.json").read_text())
    assert cert["execution"]["noise"]["key_origin"] == "os"
    assert certun.verify(cert, model=ranks[0]["state"]).ok


def test_an_uninterrupted_checkpointed_run_leaves_nothing_on_any_rank(runs):
    ranks = _load(runs, "plain", 2)
    ref = _load(runs, "ref2.sharded", 2)
    assert [r["error"] for r in ranks] == [None, None]
    assert all(r["resumed_from"] is None and not r["left"] and not r["subfolder"] for r in ranks)
    assert ranks[0]["flat"].numpy().tobytes() == ref[0]["flat"].numpy().tobytes()
    assert not (runs / "plain").exists()


def _refused(runs, name, world, match):
    ranks = _load(runs, name, world)
    messages = [r["error"] for r in ranks]
    assert all(m is not None and m.startswith("InvalidParameterError") for m in messages), messages
    assert len(set(messages)) == 1, messages  # the same error on every rank
    assert match in messages[0], messages[0]
    assert all(r["flat"] is None for r in ranks)
    assert not (runs / f"{name}.json").exists()
    return ranks


def test_a_rank_without_its_checkpoint_is_refused_on_every_rank(runs):
    """Rank 1's checkpoint lost: rank 0 must not resume while rank 1 starts afresh; rank 0's file is kept."""
    ranks = _refused(runs, "missing", 2, "ranks [0] found a checkpoint and ranks [1] none")
    assert ranks[0]["left"] and not ranks[1]["left"]


def test_checkpoints_of_different_steps_are_refused_on_every_rank(runs):
    """Rank 1 holds its step-2 checkpoint, rank 0 its step-4 one (both genuine, both tagged): refused, both kept."""
    ranks = _refused(runs, "steps", 2, "different steps ({0: 4, 1: 2}")
    assert ranks[0]["left"] and ranks[1]["left"]


def test_a_checkpoint_of_another_layout_is_refused_on_every_rank(runs):
    """A replicated run's checkpoints resumed as sharded (same world size): refused, named, kept."""
    ranks = _refused(runs, "layout", 2, "distributed layout or world size")
    assert ranks[0]["left"] and ranks[1]["left"]


def test_a_checkpoint_of_another_world_size_is_refused_on_every_rank(runs):
    """Three ranks' checkpoints resumed by two ranks: refused on both, the three files kept."""
    _refused(runs, "world", 2, "a run over 3 ranks, and this run has 2")
    assert all((runs / "crash3-world" / f"rank{r}-of-3" / "certun-checkpoint.bin").is_file() for r in range(3))


def test_a_modified_file_on_one_rank_is_refused_on_every_rank(runs):
    """One byte of rank 1's checkpoint flipped: every rank raises the same error naming rank 1; both files kept."""
    ranks = _load(runs, "tamper", 2)
    messages = [r["error"] for r in ranks]
    assert len(set(messages)) == 1 and messages[0].startswith("UnlearningRunError"), messages
    assert "rank 1 cannot use" in messages[0] and "checksum" in messages[0]
    assert all(r["left"] and r["flat"] is None for r in ranks)


def test_another_seed_on_one_rank_is_refused_on_every_rank(runs):
    """Rank 1 resumes with another integer seed than the checkpointed run's: refused on both ranks, kept."""
    ranks = _refused(runs, "seed", 2, "rank 1: seed=")
    assert ranks[0]["left"] and ranks[1]["left"]


def test_a_peer_lost_mid_run_keeps_the_survivors_checkpoint(runs):
    """Rank 1 leaves in the callback of step index 2 (after the checkpoint of 2 steps): rank 0 raises a certun
    error when it next reads a batch with its peer gone, yet keeps its checkpoint for the resume."""
    zero = torch.load(runs / "lost.rank0.pt", weights_only=False)
    assert zero["error"].startswith("UnlearningRunError") and "lost" in zero["error"]
    assert zero["left"]


def test_the_verdict_refuses_every_disagreement_the_same_way():
    """The pure agreement function: fresh only when no rank has a checkpoint; otherwise identical rows."""
    from certun.backends._rank_checkpoints import Row, verdict
    from certun.errors import InvalidParameterError, UnlearningRunError

    good = Row(found=True, done=4, binding="b", key="k", running="r", draws=4)
    assert verdict([Row(), Row()], 2, "/c") is False
    assert verdict([good, good], 2, "/c") is True
    for rows, match in [([good, Row()], "none"), ([good, Row(found=True, done=2, binding="b", key="k", running="r",
                                                              draws=2)], "different steps"),
                        ([good, Row(found=True, done=4, binding="b", key="other", running="r", draws=4)],
                         "different runs"),
                        ([Row(others=(3,)), Row()], "over 3 ranks"),
                        ([good, Row(found=True, done=4, binding="b", key="k", running="x", draws=4)],
                         "different runs")]:
        with pytest.raises(InvalidParameterError, match=match):
            verdict(rows, 2, "/c")
    with pytest.raises(UnlearningRunError, match="rank 1 cannot use"):
        verdict([good, Row(problem=("UnlearningRunError", "torn"))], 2, "/c")


def test_the_folder_check_refuses_what_is_not_this_runs(tmp_path):
    """A single-process checkpoint, a stranger's file, or another world size's checkpoint in the folder; an empty
    subfolder of another world size (a crash before its first checkpoint) is no checkpoint."""
    from certun.backends._rank_checkpoints import _check_root
    from certun.errors import InvalidParameterError

    root = tmp_path / "c"
    assert _check_root(root, 2) == () and root.is_dir() and (root.stat().st_mode & 0o777) == 0o700
    (root / "rank0-of-3").mkdir()
    assert _check_root(root, 2) == ()
    (root / "rank0-of-3" / "certun-checkpoint.bin").write_bytes(b"x")
    assert _check_root(root, 2) == (3,)
    (root / "certun-checkpoint.bin").write_bytes(b"x")
    with pytest.raises(InvalidParameterError, match="single-process run"):
        _check_root(root, 2)
    (root / "certun-checkpoint.bin").unlink()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(InvalidParameterError, match=r"notes\.txt"):
        _check_root(root, 2)


def test_a_single_process_run_refuses_a_distributed_runs_folder(tmp_path):
    """The reverse: one process given the folder of a distributed run's checkpoints touches nothing."""
    from torch import nn

    from certun.errors import InvalidParameterError

    sub = tmp_path / "c" / "rank0-of-2"
    sub.mkdir(parents=True)
    (sub / "certun-checkpoint.bin").write_bytes(b"x")
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    with pytest.raises(InvalidParameterError, match="rank0-of-2"):
        certun.unlearn(nn.Linear(3, 2), data, certun.plan(1.0, 1e-5, C0=1.0, C1=1.0, gamma=0.05, T=2),
                       loss_fn=nn.functional.cross_entropy, seed=1, progress=False, checkpoint_dir=tmp_path / "c",
                       checkpoint_every=1)
    assert (sub / "certun-checkpoint.bin").read_bytes() == b"x"
