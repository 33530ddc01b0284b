"""Spawned ranks for the distributed tests: each runs a list of jobs in one gloo process group (CPU).

A job names a schedule, a layout and (optionally) a fault; each rank writes what it got to
``out/<job>.rank<r>.pt``: the flat released parameters, the error message, and the certificate path.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import pathlib
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

import certun

D_IN, CLASSES, GLOBAL_BATCH, BATCHES = 4, 3, 7, 4


def model(kind: str = "mlp") -> nn.Module:
    torch.manual_seed(0)
    if kind == "wide":
        return nn.Linear(100, 100)  # d = 10100, float32: the noise statistics test
    if kind == "tiny":  # d = 2 (one weight per layer): fewer coordinates than ranks, so some shards are empty
        return nn.Sequential(nn.Linear(D_IN, 1, bias=False), nn.Linear(1, 1, bias=False), nn.Flatten(0)).double()
    if kind == "uneven":  # dim-0 sizes 5, 2, 3: uneven shards for W = 2, 3, and an empty one (2 rows, W = 3)
        return nn.Sequential(nn.Linear(D_IN, 5), nn.Tanh(), nn.Linear(5, 2), nn.Tanh(), nn.Linear(2, CLASSES)).double()
    return nn.Sequential(nn.Linear(D_IN, 6), nn.Tanh(), nn.Linear(6, CLASSES)).double()


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(GLOBAL_BATCH * BATCHES, D_IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (GLOBAL_BATCH * BATCHES,), generator=g)
    return [(X[i:i + GLOBAL_BATCH], y[i:i + GLOBAL_BATCH]) for i in range(0, len(y), GLOBAL_BATCH)]


def global_ids() -> list[list[int]]:
    return [list(range(i, i + GLOBAL_BATCH)) for i in range(0, GLOBAL_BATCH * BATCHES, GLOBAL_BATCH)]


def schedule(name: str) -> certun.Schedule:
    if name == "gc":
        return certun.plan(1.0, 1e-5, C0=1.0, C1=0.5, gamma=0.3, lam=0.1, T=4)
    if name == "gc_wide":  # C1 far above the gradients: clipping inactive, so the gradient's scale shows
        return certun.plan(50.0, 1e-5, C0=20.0, C1=50.0, gamma=0.3, lam=0.1, T=4)
    if name in ("mc", "mc_clip"):
        mode = "clip_noise_before_projection" if name == "mc_clip" else None
        return certun.plan(1.0, 1e-5, C0=2.0, C1=0.5, C2=0.8, gamma=0.5, lam=0.1, T=4, variant="model_clipping",
                           mode=mode)
    if name == "stats":  # three steps of planned sigmas 0.5, 1, 2 and tiny gamma
        base = certun.plan(1.0, 1e-5, C0=1e6, C1=1.0, gamma=0.01, T=3)
        s = dataclasses.replace(base, sigmas=(0.5, 1.0, 2.0))
        g = certun.guarantee(s)
        return dataclasses.replace(s, target=g, achieved=g)
    if name == "op":
        return certun.plan(1.0, 1e-5, C0=1.0, variant="output_perturbation")
    raise ValueError(name)


def shard(rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's part of every global batch (rows split in rank order)."""
    return [(torch.tensor_split(X, world)[rank], torch.tensor_split(y, world)[rank]) for X, y in global_batches()]


def _whole(p: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value (an FSDP2 ``DTensor`` all-gathered)."""
    return (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([_whole(p).reshape(-1) for p in module.parameters()])


def fully_shard(module: nn.Module, *, warm: bool = False, reduce_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2: every Linear its own unit, then the root. ``warm``: the root keeps its parameters gathered after
    a forward (``reshard_after_forward=False``), and one forward has run: the registered parameters are then
    the gathered plain tensors, not the shards. ``reduce_dtype``: the gradients reduce-scattered in it."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from torch.distributed.fsdp import fully_shard as shard_module

    mp = MixedPrecisionPolicy(reduce_dtype=reduce_dtype)
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and layer is not module:
            shard_module(layer, reshard_after_forward=not warm, mp_policy=mp)
    shard_module(module, reshard_after_forward=not warm, mp_policy=mp)
    if warm:
        module(global_batches()[0][0])  # with gradients enabled: FSDP2 keeps the gathered parameters
    return module


class _Exits:
    """Retain data whose second batch ends the process: a rank lost mid-run."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __iter__(self):
        for i, b in enumerate(self.batches):
            if i == 1:
                os._exit(3)
            yield b


def zero_grad_loss(output, target, reduction="none"):
    """A loss with zero gradient: each step is then only the decay term and the noise."""
    return (output * 0.0).sum(dim=1)


def mse_loss(output, target, reduction="mean"):
    """The tiny model's loss (one output): squared error against the class index."""
    return F.mse_loss(output, target.to(output.dtype), reduction=reduction)


def _data(job: dict[str, Any], rank: int, world: int) -> Any:
    if job.get("sampler"):  # the usual DDP loader: one dataset, a DistributedSampler per rank
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        X = torch.cat([b[0] for b in global_batches()])
        y = torch.cat([b[1] for b in global_batches()])
        dataset = TensorDataset(X, y)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, drop_last=True)
        return DataLoader(dataset, batch_size=4, sampler=sampler)
    if job.get("model") == "wide":
        return [(torch.randn(4, 100), torch.zeros(4, dtype=torch.long))]
    data = shard(rank, world)
    fault = job.get("fault") if rank == job.get("fault_rank", 1) else None
    if fault == "nan":
        X, y = data[1]
        data[1] = (torch.full_like(X, float("nan")), y)
    elif fault == "badbatch":
        data[1] = (data[1][0], data[1][1], data[1][1])
    elif fault == "exit":
        data = _Exits(data)
    return data


def _options(job: dict[str, Any], rank: int, world: int, out: pathlib.Path) -> dict[str, Any]:
    loss = zero_grad_loss if job.get("model") == "wide" else F.cross_entropy
    opts: dict[str, Any] = dict(loss_fn=loss, clip=job.get("clip", "per_sample"), seed=job.get("seed", 7),
                                progress=False, distributed=job["layout"], device="cpu")
    if job.get("ids"):
        ids = [torch.tensor_split(torch.tensor(b), world)[rank].tolist() for b in global_ids()]
        reads_forgotten = job.get("fault") in ("forgotten", "forgotten_elsewhere") and rank == 1
        opts["retain_ids"] = [i for b in ids for i in b] + ([1000] if reads_forgotten else [])
        # "forgotten_elsewhere": only rank 0 names the forget set, so only the union shows the clash
        opts["forget_ids"] = None if job.get("fault") == "forgotten_elsewhere" and rank == 1 else [1000, 1001]
    if job.get("cert"):
        opts["certificate_path"] = out / f"{job['name']}.rank{rank}.json"
        opts.pop("seed")
    if job.get("fault") == "injected" and rank == 1:  # a testing hook on one rank: its shard gets no noise
        opts.update(noise_source=lambda k, d: torch.zeros(d, dtype=torch.float64), certificate_path=None)
    if job.get("fault") == "path" and rank == 1:  # a certificate path refused on this rank only
        opts["certificate_path"] = out
    if job.get("fault") == "option" and rank == 1:  # an option refused on this rank only, before any collective
        opts["finetune_epochs"] = 1
    if job.get("model") == "tiny":
        opts["loss_fn"] = mse_loss
    return opts


def _own_noise(rank: int) -> Any:
    """A replica that adds its own draw: rank 1's noise is shifted."""
    from certun.backends.torch._dist_run import DistributedRun

    original = DistributedRun.normal

    def normal(self, generator, index, d):
        z = original(self, generator, index, d)
        return z + 1.0 if rank == 1 else z

    DistributedRun.normal = normal
    return original


def _record_noise(rank: int, draws: list[Any]) -> None:
    from certun.backends.torch._dist_run import ShardedRun

    original = ShardedRun.normal

    def normal(self, generator, index, d):
        z = original(self, generator, index, d)
        draws.append((self.lo, self.hi, z.clone(), generator.normal_torch(index, d)))
        return z

    ShardedRun.normal = normal


def _fail_commitment() -> None:
    from certun.certificates import provenance

    def fail(key):
        raise OSError("rank 1 lost its disk after the run")

    provenance.key_commitment = fail


def _record_fsdp_noise(draws: list[Any]) -> None:
    from certun.backends.torch._fsdp_run import FsdpRun

    original = FsdpRun.normal

    def normal(self, generator, index, d):
        z = original(self, generator, index, d)
        draws.append((list(self.ranges), z.clone(), generator.normal_torch(index, d)))
        return z

    FsdpRun.normal = normal


def run_job(job: dict[str, Any], rank: int, world: int, out: pathlib.Path) -> None:
    from certun.backends.torch._dist_run import DistributedRun, ShardedRun
    from certun.backends.torch._fsdp_run import FsdpRun
    from certun.backends.torch._run import TorchRun
    from certun.certificates import provenance

    result: dict[str, Any] = {"error": None, "flat": None, "certificate": None}
    saved_commitment, saved_prepare = provenance.key_commitment, DistributedRun.prepare
    saved, saved_sharded, saved_fsdp, draws = DistributedRun.normal, ShardedRun.normal, FsdpRun.normal, []
    if job.get("fault") == "own_noise":
        _own_noise(rank)
    if job.get("record_noise"):
        (_record_fsdp_noise(draws) if job["layout"] == "fsdp" else _record_noise(rank, draws))
    opts, xs = _options(job, rank, world, out), []
    start = model(job.get("model", "mlp"))
    faulty = rank == job.get("fault_rank", 1)
    if job.get("fault") == "bad_model" and faulty:  # BatchNorm statistics computed on D: refused
        start = nn.Sequential(nn.Linear(D_IN, 6), nn.BatchNorm1d(6), nn.Linear(6, CLASSES)).double()
    elif job.get("fault") == "other_model" and faulty:  # starts elsewhere: not the same run
        with torch.no_grad():
            start[0].bias.add_(1.0)
    elif job.get("fault") == "other_seed" and faulty:
        opts["seed"] = 8
    if job.get("wrap"):  # a DistributedDataParallel model: certun unlearns its .module
        start = nn.parallel.DistributedDataParallel(start)
    if job.get("fault") == "skip" and faulty:  # a rank that leaves out one agreement: the ranks go out of step
        DistributedRun.prepare = TorchRun.prepare
    if job.get("fault") == "late" and faulty:  # fails after the run, before rank 0 has finished issuing
        _fail_commitment()
    if job.get("fully_shard", job["layout"] == "fsdp"):
        start = fully_shard(start, warm=job.get("warm", False), reduce_dtype=job.get("reduce_dtype"))
    if job.get("reduction") == "divide":  # one FSDP2 unit told to divide the reduce-scattered sum by 1, not W
        start[0].set_gradient_divide_factor(1.0)
    elif job.get("reduction") == "nosync":  # gradient accumulation: no reduce-scatter at all
        start.set_requires_gradient_sync(False)
    if job.get("hide"):  # a tensor computed from D kept inside fully_shard's own state object
        from torch.distributed._composable.contract import STATE_KEY

        next(iter(vars(start[0])[STATE_KEY].values())).stash = global_batches()[0][0].mean(0)
    if job["layout"] == "fsdp":
        opts["inplace"] = job.get("inplace", True)
    if job.get("fault") == "coordinate":  # every rank told it is mesh coordinate 0: all add chunk 0's noise
        from torch.distributed.device_mesh import DeviceMesh

        DeviceMesh.get_coordinate = lambda self: [0]
    if job.get("model") == "wide":
        opts["callback"] = lambda t, x: xs.append(x.double().clone())
    try:
        r = certun.unlearn(start, _data(job, rank, world), schedule(job["schedule"]), **opts)
        result["flat"] = flat(r.model)
        result["state"] = {n: _whole(p) for n, p in r.model.named_parameters()}
        result["certificate"] = None if r.certificate_path is None else str(r.certificate_path)
        result["issued"] = r.certificate is not None
        result["record"] = dict(r.record.distributed or {})
        result["openings"] = (r.seed_opening, r.model_before_opening)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["trace"] = traceback.format_exc()
    finally:
        DistributedRun.normal, ShardedRun.normal, DistributedRun.prepare = saved, saved_sharded, saved_prepare
        FsdpRun.normal = saved_fsdp
        provenance.key_commitment = saved_commitment
    result["draws"], result["iterates"] = draws, xs
    torch.save(result, out / f"{job['name']}.rank{rank}.pt")
    del start
    gc.collect()  # a DDP wrapper must go while its process group lives (else its reducer aborts at exit)


def rank_main(runner: Callable[..., None], rank: int, world: int, init_file: str, out: str,
              jobs: list[dict[str, Any]], backend: str | None = "gloo") -> None:
    """One rank: join the group (file rendezvous; ``backend=None``: torch's default), ``runner`` every job, leave."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        for job in jobs:
            runner(job, rank, world, pathlib.Path(out))
    finally:
        dist.destroy_process_group()
    # Every result is saved: leave without the interpreter's teardown, where a gloo thread left behind by a
    # job that put the ranks out of step can abort the process ("terminate called ...") at random.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(runner: Callable[..., None], world: int, tmp: pathlib.Path, jobs: list[dict[str, Any]],
          timeout: float = 120, backend: str | None = "gloo") -> list[int | None]:
    """Start ``world`` spawned ranks running ``runner`` (a module-level function) on ``jobs``; their exit codes
    (``None``: killed after ``timeout``). Each launch in ``tmp`` gets its own rendezvous file."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    init = tmp / f"rendezvous-{world}-{len(list(tmp.iterdir()))}-{os.getpid()}"
    procs = [ctx.Process(target=rank_main, args=(runner, r, world, str(init), str(tmp), jobs, backend))
             for r in range(world)]
    for p in procs:
        p.start()
    codes = []
    for p in procs:
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes


def launch(world: int, tmp: pathlib.Path, jobs: list[dict[str, Any]], timeout: float = 120,
           backend: str | None = "gloo") -> list[int | None]:
    """Spawned ranks on this module's jobs (:func:`run_job`)."""
    return spawn(run_job, world, tmp, jobs, timeout, backend)


def load(tmp: pathlib.Path, name: str, rank: int) -> dict[str, Any]:
    return torch.load(tmp / f"{name}.rank{rank}.pt", weights_only=False)
