"""Distributed runs fail all or nothing, and rank 0 alone issues one certificate that verifies.

Ranks are spawned on CPU with gloo (:mod:`dist_workers`); each fault is injected on rank 1 only.
"""

from __future__ import annotations

import json

import pytest
import torch
from certificates_fixtures import failed, reseal
from dist_workers import launch, load

import certun

torch.set_num_threads(1)

FAULTS = ("nan", "badbatch", "own_noise", "forgotten", "forgotten_elsewhere", "bad_model", "other_model", "other_seed")
JOBS = [dict(name=f"cert.{layout}", schedule="gc", layout=layout, ids=True, cert=True)
        for layout in ("replicated", "sharded")]
JOBS += [dict(name="ddp_wrapped", schedule="gc", layout="replicated", wrap=True),
         dict(name="sampler", schedule="gc", layout="replicated", sampler=True, cert=True)]
JOBS += [dict(name=fault, schedule="gc", layout="replicated", ids=True, cert=True, fault=fault)
         for fault in FAULTS if fault != "other_seed"]
JOBS += [dict(name="other_seed", schedule="gc", layout="sharded", fault="other_seed")]  # cert=True draws no seed


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    assert launch(2, folder, JOBS) == [0, 0]
    return folder


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_rank_zero_alone_writes_one_certificate_that_verifies(two, layout):
    """Rank 0 issues and writes; rank 1 writes nothing. The certificate records the layout, its retain tree
    covers the union of the ranks' identifiers, and it verifies against the released model."""
    name = f"cert.{layout}"
    zero, one = load(two, name, 0), load(two, name, 1)
    assert zero["error"] is None and one["error"] is None, zero.get("trace") or one.get("trace")
    assert zero["issued"] and not one["issued"]
    assert one["certificate"] is None and not (two / f"{name}.rank1.json").exists()
    cert = json.loads((two / f"{name}.rank0.json").read_text())
    assert cert["execution"]["distributed"] == {
        "world_size": 2, "backend": "gloo", "sharding": "replicated" if layout == "replicated" else "sharded-master",
        "noise": "identical-replicas" if layout == "replicated" else "positional-shards",
        "noise_origin": "rank-0-broadcast", "step_batches": "global-batch.rank-order.v1",
        "gradient": "sum-all-reduced-over-global-batch"}
    assert cert["execution"]["noise"]["key_origin"] == "os"
    assert cert["artifacts"]["retain_set"]["size"] == 28 and cert["artifacts"]["forget_set"]["size"] == 2
    report = certun.verify(cert, model=zero["state"])
    assert report.ok, failed(report)


def test_a_ddp_wrapped_model_is_unlearned_as_its_module(two):
    """DistributedDataParallel(model): certun unlearns .module with its own all-reduce, and gets the
    single-process model (DDP's averaging of unclipped gradients is never used)."""
    import torch.nn.functional as F  # noqa: N812 (the conventional name)
    from dist_workers import flat, global_batches, model, schedule

    expected = flat(certun.unlearn(model(), global_batches(), schedule("gc"), loss_fn=F.cross_entropy, seed=7,
                                   progress=False, device="cpu").model)
    for rank in (0, 1):
        got = load(two, "ddp_wrapped", rank)
        assert got["error"] is None, got.get("trace")
        torch.testing.assert_close(got["flat"], expected, rtol=1e-9, atol=1e-11)


def test_a_distributed_sampler_loader_certifies_the_whole_dataset(two):
    """The usual DDP loader (one dataset, a DistributedSampler per rank, no explicit ids): the retain root
    covers the dataset's indices and the certificate verifies."""
    zero = load(two, "sampler", 0)
    assert zero["error"] is None, zero.get("trace")
    cert = json.loads((two / "sampler.rank0.json").read_text())
    assert cert["artifacts"]["retain_set"]["size"] == 28
    assert cert["artifacts"]["retain_set"]["id_scheme"] == "dataset-index"
    assert certun.verify(cert, model=zero["state"]).ok


def test_verify_refuses_an_edited_distributed_record(two):
    """execution.distributed is closed and consistent: an extra key, or a sharding with another noise layout,
    fails verification even with the content digest recomputed."""
    cert = json.loads((two / "cert.replicated.rank0.json").read_text())
    extra = json.loads(json.dumps(cert))
    extra["execution"]["distributed"]["secret_hex"] = "00"
    mixed = json.loads(json.dumps(cert))
    mixed["execution"]["distributed"]["sharding"] = "sharded-master"
    for forged, check in ((extra, "schema"), (mixed, "consistency")):
        report = certun.verify(reseal(forged))
        assert check in failed(report)


@pytest.mark.parametrize(("fault", "rank0_says"), [
    ("nan", "non-finite"),
    ("badbatch", "rank 1 failed during reading a retain batch"),
    ("own_noise", "released model of ranks [1] differs"),
    ("forgotten", "rank 1 failed during the identifier checks"),
    ("forgotten_elsewhere", "rank 1 reads 1 forgotten ids"),
    ("bad_model", "rank 1 failed during the model checks"),
    ("other_model", "ranks [1] differ from rank 0 in the starting model"),
    ("other_seed", "ranks [1] were given another seed than rank 0"),
])
def test_a_fault_on_one_rank_stops_every_rank_and_writes_nothing(two, fault, rank0_says):
    """NaN data, a malformed batch, a replica drawing its own noise, a rank reading a forgotten record, a
    model refused on one rank, a rank starting from another model or given another seed: every rank
    raises a certun error and no certificate is written anywhere."""
    zero, one = load(two, fault, 0), load(two, fault, 1)
    assert zero["error"] is not None and one["error"] is not None
    assert rank0_says in zero["error"]
    assert zero["error"].split(":")[0] in ("UnlearningRunError", "InvalidParameterError")
    assert not list(two.glob(f"{fault}.rank*.json"))


def test_a_lost_rank_stops_the_others_and_writes_nothing(tmp_path):
    """Rank 1 exits in the middle of the run: rank 0 raises a certun error (no hang) and writes nothing."""
    codes = launch(2, tmp_path, [dict(name="lost", schedule="gc", layout="replicated", cert=True, fault="exit")])
    assert codes == [0, 3]
    zero = load(tmp_path, "lost", 0)
    assert zero["error"].startswith("UnlearningRunError: distributed run: a peer rank failed or was lost")
    assert not list(tmp_path.glob("lost.rank*.json"))


def test_options_a_distributed_run_cannot_honour_are_refused_before_any_work():
    """A bad layout, a DDP wrapper without a layout, no process group, and post-processing that would
    desynchronise the replicas are refused with a certun error naming the value."""
    import torch.nn.functional as F  # noqa: N812 (the conventional name)
    from dist_workers import global_batches, model, schedule
    from torch import nn

    from certun.errors import InvalidParameterError

    run = dict(loss_fn=F.cross_entropy, progress=False, device="cpu")
    s = schedule("gc")
    with pytest.raises(InvalidParameterError, match="distributed='bogus'"):
        certun.unlearn(model(), global_batches(), s, distributed="bogus", **run)
    with pytest.raises(InvalidParameterError, match="process group"):
        certun.unlearn(model(), global_batches(), s, distributed="replicated", **run)
    with pytest.raises(InvalidParameterError, match="without fine-tuning"):
        certun.unlearn(model(), global_batches(), s, distributed="sharded", finetune_epochs=1, **run)

    class FakeDDP(nn.parallel.DistributedDataParallel):
        def __init__(self, module):
            nn.Module.__init__(self)
            self.module = module

    with pytest.raises(InvalidParameterError, match="DistributedDataParallel"):
        certun.unlearn(FakeDDP(model()), global_batches(), s, **run)


def test_checkpointed_distributed_call_without_a_process_group_touches_no_folder(tmp_path) -> None:
    """checkpoint_dir with distributed= but no process group is refused before the folder is created."""
    import torch
    from torch import nn

    from certun import accountant
    from certun.backends import get_backend
    from certun.errors import InvalidParameterError

    schedule = accountant.plan(1.0, 1e-5, C0=1.0, C1=1.0, lam=0.0, gamma=0.05, T=2)
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    with pytest.raises(InvalidParameterError, match="process group"):
        get_backend("torch").unlearn(nn.Linear(3, 2), data, schedule, loss_fn=nn.functional.cross_entropy,
                                     distributed="replicated", checkpoint_dir=tmp_path / "ck", checkpoint_every=1)
    assert not (tmp_path / "ck").exists()
