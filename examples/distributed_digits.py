"""Certified unlearning on several processes: the demo MLP on scikit-learn's digits, launched by ``torchrun``.

    torchrun --standalone --nproc_per_node=2 examples/distributed_digits.py --layout replicated \
        --certificate digits-distributed.json

Every rank trains the same original model (seeded, on every record), then unlearns the first 20
records: it reads only its share of each global retain batch (rows split in rank order) and declares
the identifiers of the records it reads. ``--layout fsdp`` first wraps the model with FSDP2's
``fully_shard`` (each rank then holds a shard of every layer) and unlearns it in place with batch
clipping. Rank 0 writes the certificate; check it with ``python -m certun verify
digits-distributed.json``. docs/distributed.md explains each step.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

import certun
from certun.demo.data import load_digits_data
from certun.demo.models import accuracy, build_model, fit

FORGET = 20  # the first records of the pool are forgotten
BATCH = 64  # records per global retain batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=("replicated", "sharded", "fsdp"), default="replicated")
    parser.add_argument("--certificate", default="digits-distributed.json")
    parser.add_argument("--steps", type=int, default=20, help="noisy steps T")
    parser.add_argument("--eps", type=float, default=10.0, help="the certified epsilon (delta is 1e-5)")
    parser.add_argument("--checkpoint-dir", default=None, help="checkpoint here (each rank in its own subfolder) "
                        "and resume from there after a crash; the same command resumes")
    parser.add_argument("--checkpoint-every", type=int, default=5, help="noisy steps between checkpoints")
    args = parser.parse_args()
    dist.init_process_group("gloo")  # torchrun sets the rank, the world size and the rendezvous
    try:
        run(args)
    finally:
        dist.destroy_process_group()


def run(args: argparse.Namespace) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    data = load_digits_data()
    x, y = torch.from_numpy(data.pool_x), torch.from_numpy(data.pool_y)
    model = build_model("mlp", x.shape[1:], 10, seed=0)
    everything = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(y), BATCH)]
    fit(model, everything, epochs=3, lr=0.05)  # the original model: it saw the forget set
    before = accuracy(model, x[FORGET:], y[FORGET:])
    retain = np.arange(FORGET, len(y))
    mine_ids: list[int] = []
    mine: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(retain), BATCH):
        ids = torch.tensor_split(torch.from_numpy(retain[start:start + BATCH]), world)[rank]
        mine.append((x[ids], y[ids]))
        mine_ids.extend(int(i) for i in ids)
    schedule = certun.plan(args.eps, 1e-5, C0=15.0, C1=1.0, gamma=0.5, lam=1.0, T=args.steps)
    options = {}
    if args.checkpoint_dir is not None:
        options.update(checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every)
    if args.layout == "fsdp":  # FSDP2: per-sample clipping is refused on shards; the module is updated in place
        model = shard(model)
        options.update(clip="batch", inplace=True)
    result = certun.unlearn(model, mine, schedule, loss_fn=F.cross_entropy, distributed=args.layout,
                            retain_ids=mine_ids, forget_ids=range(FORGET), certificate_path=args.certificate,
                            device="cpu", progress=False, **options)
    score = accuracy(result.model, x[FORGET:], y[FORGET:])  # every rank: an FSDP2 forward is collective
    if rank == 0:
        print(f"{world} ranks, {args.layout}: eps={schedule.achieved.eps:.3g}, retain accuracy {before:.3f} "
              f"before, {score:.3f} after; certificate {result.certificate_path}"
              + ("" if result.resumed_from is None else f" (resumed after {result.resumed_from} steps)"))


def shard(model: nn.Module) -> nn.Module:
    """FSDP2: each Linear layer its own unit, then the root (every rank keeps a shard of each)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.modules():
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


if __name__ == "__main__":
    main()
    # Everything is written and the group destroyed. Leave without the interpreter's teardown: there,
    # torch's gloo backend can still abort the process now and then ("terminate called without an active
    # exception", about 1 run in 20 on a loaded 2-core machine), which would report a failure after success.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
