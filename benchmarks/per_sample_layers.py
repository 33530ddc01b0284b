"""Per-sample clipping of one layer type: certun's own per-layer code against Opacus' hooks and torch.func.

For each layer type certun has a rule for (Linear, Linear on tokens, Conv2d, Embedding, LayerNorm,
GroupNorm), a small model whose only unlearned parameters are that layer's (a frozen linear head
makes the loss) computes the per-sample clipped mean gradient of one batch, by each implementation,
and the median CPU time of a call (this process, one thread) is printed. This is how certun chose,
per layer, which code runs.

    OMP_NUM_THREADS=1 python benchmarks/per_sample_layers.py [--batch 128] [--repeats 15]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

from certun.backends.torch._grad import GradientComputer
from certun.backends.torch._layers import LayerPerSample
from certun.backends.torch._model import FlatParameters


def cases(batch: int) -> dict[str, tuple[nn.Module, nn.Module, Callable[[], torch.Tensor]]]:
    """name -> (the layer, the whole model, an input batch factory)."""
    head = lambda n: nn.Sequential(nn.Flatten(), nn.Linear(n, 10))  # noqa: E731
    lin, tok = nn.Linear(784, 512), nn.Linear(128, 128)
    conv, emb = nn.Conv2d(32, 64, 3, padding=1), nn.Embedding(10000, 128)
    ln, gn = nn.LayerNorm(128), nn.GroupNorm(8, 64)
    return {
        "Linear 784->512": (lin, nn.Sequential(lin, head(512)), lambda: torch.randn(batch, 784)),
        "Linear on 64 tokens 128->128": (tok, nn.Sequential(tok, head(64 * 128)), lambda: torch.randn(batch, 64, 128)),
        "Conv2d 32->64 3x3 on 16x16": (conv, nn.Sequential(conv, head(64 * 256)),
                                       lambda: torch.randn(batch, 32, 16, 16)),
        "Embedding 10000x128, 64 tokens": (emb, nn.Sequential(emb, head(64 * 128)),
                                           lambda: torch.randint(0, 10000, (batch, 64))),
        "LayerNorm 128 on 64 tokens": (ln, nn.Sequential(ln, head(64 * 128)), lambda: torch.randn(batch, 64, 128)),
        "GroupNorm 8x64 on 16x16": (gn, nn.Sequential(gn, head(64 * 256)), lambda: torch.randn(batch, 64, 16, 16)),
    }


@contextlib.contextmanager
def forced(path: str) -> Iterator[None]:
    """Within: per-sample clipping takes ``path`` ("certun", "opacus" or "torch.func") whatever the model."""
    applies = LayerPerSample.applies
    import certun.backends.torch._grad as grad

    problems = grad.opacus_problems
    if path != "certun":
        LayerPerSample.applies = staticmethod(lambda model, flat: False)
    if path == "torch.func":
        grad.opacus_problems = lambda model: [("<forced>", "", "")]
    try:
        yield
    finally:
        LayerPerSample.applies = applies
        grad.opacus_problems = problems


def time_path(layer: nn.Module, model: nn.Module, make_x: Callable[[], torch.Tensor], path: str,
              repeats: int) -> float:
    """Median seconds of one per-sample clipped gradient of ``layer``'s parameters by ``path``."""
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in layer.parameters()))
    names = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    flat = FlatParameters(names, params, device=torch.device("cpu"), dtype=torch.float32)
    x = make_x()
    y = torch.randint(0, 10, (x.shape[0],))
    times = []
    with forced(path):
        computer = GradientComputer(model, flat, F.cross_entropy, mode="per_sample", C1=1.0)
    try:
        computer.compute(x, y)  # first step: the per-sample sum check
        for _ in range(repeats):
            t0 = time.process_time()  # one thread: this process's CPU time, not the shared machine's load
            computer.compute(x, y)
            times.append(time.process_time() - t0)
    finally:
        computer.close()
        flat.release()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Print the table (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch={torch.__version__} threads=1 batch={args.batch} repeats={args.repeats}")
    print("| layer | certun (ms) | Opacus hooks (ms) | torch.func (ms) |")
    print("|---|---:|---:|---:|")
    for name, (layer, model, make_x) in cases(args.batch).items():
        cells = [f"{time_path(layer, model, make_x, path, args.repeats) * 1e3:.2f}"
                 for path in ("certun", "opacus", "torch.func")]
        print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
