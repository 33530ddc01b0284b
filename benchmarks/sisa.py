"""SISA on Fashion-MNIST: ensemble accuracy and the compute to serve a deletion, against retraining.

For each (S, R) the script trains a SISA ensemble of MLPs on the whole training file (60,000 images,
record identifiers = positions), scores it on the test file, then serves three requests on copies of
it -- one record, 1 % and 10 % of the records, chosen at random -- and reports the sample gradients
(and CPU seconds) spent on each against a full SISA retraining and against training the single model.

    python benchmarks/sisa.py                       # S in {1, 5, 20}, R in {1, 5}: minutes on 2 cores
    python benchmarks/sisa.py --quick               # digits, small grid: seconds

Each configuration trains ``--epochs`` passes over every record it holds: with R slices the last stage
of a shard sees all its slices (cumulative SISA) and every stage runs ``epochs`` epochs, so training
a shard costs (R + 1)/2 times its data per epoch. Results go to docs/choosing.md with the command.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from certun.backends.sisa import Sisa, SisaConfig
from certun.demo.data import load_data
from certun.demo.models import accuracy, build_model, fit


def _cpu() -> float:
    return time.process_time()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, S in {1, 5}, R in {1, 5}")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per stage (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="training and request seed (default 0)")
    parser.add_argument("--cumulative", action=argparse.BooleanOptionalAction, default=True,
                        help="stage r trains on slices 0..r (default, as in the paper) or on slice r alone")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: stable CPU seconds)")
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))

    data = load_data("digits" if args.quick else "fashion-mnist")
    x = torch.from_numpy(data.pool_x)
    y = torch.from_numpy(data.pool_y)
    if data.test_x is None:
        order = np.random.default_rng(args.seed).permutation(len(x))
        test, train = order[: len(x) // 5], order[len(x) // 5:]
        tx, ty, x, y = x[test], y[test], x[train], y[train]
    else:
        tx, ty = torch.from_numpy(data.test_x), torch.from_numpy(data.test_y)
    ids = list(range(len(x)))
    grid = [(1, 1), (5, 1), (5, 5)] if args.quick else [(1, 1), (1, 5), (5, 1), (5, 5), (20, 1), (20, 5)]

    def factory() -> torch.nn.Module:
        return build_model("mlp", data.input_shape, data.num_classes, seed=args.seed)

    # the single model: same SGD, `epochs` passes over all the data
    start = _cpu()
    single = fit(factory(), torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=128, shuffle=True,
        generator=torch.Generator().manual_seed(args.seed)), epochs=args.epochs, lr=0.05)
    single_cpu = _cpu() - start
    single_acc = accuracy(single, tx, ty)
    single_grads = len(x) * args.epochs
    print(f"cumulative stages: {args.cumulative}; {args.epochs} epochs per stage; torch threads {args.threads}")
    print(f"data {data.name}: {len(x)} training records, {len(tx)} test; single MLP: test accuracy "
          f"{single_acc:.4f}, {single_grads} sample gradients, {single_cpu:.1f} CPU s")

    rng = np.random.default_rng(args.seed)
    requests = {"one": 1, "1%": len(x) // 100, "10%": len(x) // 10}
    rows = []
    header = (f"{'S':>3} {'R':>2} {'acc':>7} {'Δacc':>7} {'train grads':>12} {'train CPU s':>11} | "
              + " | ".join(f"{k:>4}: grads/full  grads/single  CPU s" for k in requests))
    print(header)
    for shards, slices in grid:
        config = SisaConfig(shards=shards, slices=slices, epochs_per_stage=args.epochs, batch_size=128,
                            cumulative=args.cumulative)
        sisa = Sisa(factory, config, salt=bytes(32), seed=args.seed)
        start = _cpu()
        ensemble = sisa.fit(x, y, ids)
        train_cpu = _cpu() - start
        acc = accuracy(ensemble, tx, ty)
        row = {"S": shards, "R": slices, "accuracy": acc, "single_accuracy": single_acc,
               "train_gradients": sisa.gradient_evaluations, "train_cpu_s": train_cpu, "requests": {}}
        cells = []
        for name, k in requests.items():
            forget = [int(i) for i in rng.choice(len(x), size=k, replace=False)]
            copy_ = copy.deepcopy(sisa)
            start = _cpu()
            report = copy_.unlearn(forget)
            cpu = _cpu() - start
            row["requests"][name] = {"records": k, "gradients": report.gradient_evaluations,
                                     "full_sisa_gradients": report.full_retraining_evaluations,
                                     "single_gradients": single_grads, "cpu_s": cpu,
                                     "retrained_shards": len(report.retrained_shards)}
            cells.append(f"{report.cost_ratio:>15.3f} {report.gradient_evaluations / single_grads:>13.3f} {cpu:>6.1f}")
        rows.append(row)
        print(f"{shards:>3} {slices:>2} {acc:>7.4f} {acc - single_acc:>+7.4f} {sisa.gradient_evaluations:>12} "
              f"{train_cpu:>11.1f} | " + " | ".join(cells))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"single": {"accuracy": single_acc, "gradients": single_grads, "cpu_s": single_cpu},
                       "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
