"""Attacks on distributed runs: a rank that adds less noise, a certificate left behind by a failed run, the
secret's opening on ranks that issue nothing, the process group's backend as torch names it, and shards
with no coordinates. Ranks are spawned on CPU with gloo (:mod:`dist_workers`)."""

from __future__ import annotations

import json

import pytest
import torch
from certificates_fixtures import failed
from dist_workers import flat, global_batches, launch, load, model, mse_loss, schedule

import certun
from certun.certificates import open_seed_commitment

torch.set_num_threads(1)

JOBS = [dict(name="injected", schedule="gc", layout="sharded", ids=True, cert=True, fault="injected"),
        dict(name="open", schedule="gc", layout="sharded", ids=True, cert=True),
        dict(name="option", schedule="gc", layout="replicated", cert=True, fault="option"),
        dict(name="path", schedule="gc", layout="replicated", cert=True, fault="path"),
        dict(name="late", schedule="gc", layout="replicated", ids=True, cert=True, fault="late")]  # last: rank 1 leaves


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    folder = tmp_path_factory.mktemp("review")
    assert launch(2, folder, JOBS) == [0, 0]
    return folder


def test_a_rank_with_injected_noise_stops_every_rank(two):
    """Rank 1 passes the noise_source testing hook (zeros) and no certificate path: its shard of the sharded
    master would get no noise while rank 0 certifies the run; every rank must refuse before any noise."""
    zero, one = load(two, "injected", 0), load(two, "injected", 1)
    assert not zero.get("issued"), "rank 0 certified a model whose shard on rank 1 got no noise"
    assert zero["error"] is not None and one["error"] is not None
    assert "noise" in zero["error"] and "rank" in zero["error"]
    assert not list(two.glob("injected.rank*.json"))





def test_only_rank_zero_holds_the_openings(two):
    """The key opening regenerates the noise: rank 0 (which issues) returns it, and it opens the certificate's
    commitment; the other ranks return none (their own salts would open nothing anyway)."""
    zero, one = load(two, "open", 0), load(two, "open", 1)
    assert zero["error"] is None and one["error"] is None, zero.get("trace") or one.get("trace")
    assert zero["openings"][0] is not None and zero["openings"][1] is not None
    assert one["openings"] == (None, None)
    cert = json.loads((two / "open.rank0.json").read_text())
    assert open_seed_commitment(cert["randomness"]["seed_commitment"], zero["openings"][0])
    report = certun.verify(cert, model=zero["state"])
    assert report.ok, failed(report)


def test_an_option_refused_on_one_rank_stops_every_rank_at_once(two):
    """Rank 1 alone asks for fine-tuning (refused distributed) before any collective: rank 0 learns rank 1's
    error at once, instead of waiting in its first collective for a peer that never comes."""
    zero, one = load(two, "option", 0), load(two, "option", 1)
    assert one["error"].startswith("InvalidParameterError") and "fine-tuning" in one["error"]
    assert "rank 1 failed during checking the options" in zero["error"], zero["error"]
    assert "InvalidParameterError" in zero["error"] and "fine-tuning" in zero["error"]
    assert not list(two.glob("option.rank*.json"))


def test_a_certificate_path_refused_on_one_rank_stops_every_rank_at_once(two):
    """Rank 1 gives a folder as its certificate path, refused before the backend runs: rank 0 learns it
    at once instead of pairing its collectives with whatever rank 1 runs next."""
    zero, one = load(two, "path", 0), load(two, "path", 1)
    assert one["error"].startswith("InvalidParameterError") and "certificate_path" in one["error"]
    assert "rank 1 failed during checking the certificate options" in zero["error"], zero["error"]
    assert not list(two.glob("path.rank*.json"))


def test_a_rank_failing_after_the_run_leaves_no_certificate(two):
    """Rank 1 fails after the run, while rank 0 issues: rank 0 raises a certun error and no certificate
    stays on disk (an error saying 'no certificate was issued' next to a written file is a lie)."""
    zero, one = load(two, "late", 0), load(two, "late", 1)
    assert one["error"] is not None and "lost its disk" in one["error"]
    assert zero["error"] is not None and zero["error"].startswith("UnlearningRunError"), zero["error"]
    assert not list(two.glob("late.rank*.json"))


def test_a_mixed_backend_group_records_the_backend_that_ran(tmp_path):
    """init_process_group('cpu:gloo,cuda:gloo') (torch's per-device form): the certificate records the backend
    that carried the collectives ('gloo'), which the schema accepts, instead of failing after the run."""
    assert launch(1, tmp_path, [dict(name="mixed", schedule="gc", layout="replicated", cert=True)],
                  backend="cpu:gloo,cuda:gloo") == [0]
    zero = load(tmp_path, "mixed", 0)
    assert zero["error"] is None, zero.get("trace")
    cert = json.loads((tmp_path / "mixed.rank0.json").read_text())
    assert cert["execution"]["distributed"]["backend"] == "gloo"
    assert certun.verify(cert, model=zero["state"]).ok


@pytest.mark.parametrize(("config", "expected"), [
    ("gloo", ("cpu", "gloo")), ("nccl", ("cuda", "nccl")), ("cpu:gloo,cuda:nccl", ("cpu", "gloo")),
    ("cuda:nccl", ("cuda", "nccl")), ("mpi", ("cpu", "mpi"))])
def test_the_backend_recorded_is_the_one_that_reduces_the_tensors(config, expected):
    """torch's backend descriptions, plain and per device, name the backend certun's collectives use."""
    from certun.backends.torch._dist_comm import collective_backend

    assert collective_backend(config) == expected


@pytest.mark.parametrize("config", ["undefined", "", "xla:xla", "cpu:Gloo"])
def test_a_backend_a_certificate_cannot_record_is_refused_before_any_work(config):
    """'undefined' (what get_backend says of a group made without a backend), or no CPU/CUDA backend."""
    from certun.backends.torch._dist_comm import collective_backend
    from certun.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="process group backend"):
        collective_backend(config)


def test_ranks_out_of_step_are_told_so_and_read_no_peer_data_as_an_error(tmp_path):
    """Rank 1 leaves out the model-check agreement, so its next collective meets rank 0's previous one:
    every rank says the ranks are out of step, instead of rank 0 reading rank 1's identifier list as
    rank 1's error message (and printing it)."""
    assert launch(2, tmp_path, [dict(name="skip", schedule="gc", layout="replicated", ids=True,
                                     fault="skip")]) == [0, 0]
    for rank in (0, 1):
        got = load(tmp_path, "skip", rank)
        assert got["error"] is not None and "out of step" in got["error"], got["error"]
        assert "[4, 5, 6" not in got["error"]


def test_shards_with_no_coordinates_give_the_single_process_model(tmp_path):
    """d = 2 over 3 ranks: rank 0's shard is empty; the run still matches one process on the global batch."""
    assert launch(3, tmp_path, [dict(name="tiny", schedule="gc", layout="sharded", model="tiny")]) == [0, 0, 0]
    expected = flat(certun.unlearn(model("tiny"), global_batches(), schedule("gc"), loss_fn=mse_loss, seed=7,
                                   progress=False, device="cpu").model)
    for rank in range(3):
        got = load(tmp_path, "tiny", rank)
        assert got["error"] is None, got.get("trace")
        torch.testing.assert_close(got["flat"], expected, rtol=1e-9, atol=1e-11)
