"""Median cost of one noisy unlearning step, per variant and clipping mode, against a plain SGD step.

Models: a Fashion-MNIST-sized CNN, a 10M-parameter MLP, a ResNet-18 with GroupNorm whose residual
adds are out of place, and a 2-layer ``nn.TransformerEncoder`` classifier on token ids (per-sample
clipping by ``torch.func`` there). Each configuration runs ``certun``'s torch backend for ``--steps``
noisy steps on one fixed batch and reports the median time of a step (this process's CPU time on a CPU,
run with one thread, so that a shared machine's other load counts as little as it can; wall time,
synchronised, on CUDA), its
ratio to a plain ``torch.optim.SGD`` step (forward, backward, update) on the same model and batch, and
its ratio to the *floor*: that SGD step plus one draw of ``d`` Gaussians by the run's keyed sampler,
made as the run makes its draws (:func:`floor_draw`; timed in the same run). Per-sample rows are timed
twice: certun's own per-layer path and, for comparison, Opacus' hooks (``per_sample[opacus]``).

    python benchmarks/step_cost.py            # full sizes; meant for a GPU
    python benchmarks/step_cost.py --quick    # small sizes, a few steps: runs on a CPU in a minute
    python benchmarks/step_cost.py --samplers # only the noise sampler table (values/s, one thread)
    python benchmarks/step_cost.py --compare-unfused  # batch rows, each against the step before fusing
    python benchmarks/step_cost.py --compare-buffer   # per-sample rows (3 pairs) against the float32 buffer

Results are printed as a table (and written as JSON with ``--json PATH``); docs/backends.md records them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import statistics
import time
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn

import certun
from certun.backends import UnsafeNoiseWarning, get_backend

# ------------------------------------------------------------------ models


def cnn(width: int = 32) -> nn.Module:
    """A small CNN for 1×28×28 inputs (Fashion-MNIST sized), 10 classes."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * 5 * 5, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def mlp(hidden: tuple[int, ...] = (3072, 2560)) -> nn.Module:
    """An MLP on flattened 28×28 inputs; the default widths give 10.3M parameters."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 2 if channels < 32 else 32), channels)


class BasicBlock(nn.Module):
    """ResNet basic block with GroupNorm and an out-of-place residual add (``out = out + identity``)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.gn1 = _gn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.gn2 = _gn(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv-GN-ReLU-conv-GN, plus the shortcut, then ReLU; nothing in place."""
        out = F.relu(self.gn1(self.conv1(x)))
        out = self.gn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18 (CIFAR stem) with GroupNorm instead of BatchNorm; ``width=64`` is the standard size."""

    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), _gn(width), nn.ReLU())
        blocks, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, 8 blocks, global average pooling, linear head."""
        return self.head(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))


class TransformerClassifier(nn.Module):
    """Token ids -> embedding -> 2-layer ``nn.TransformerEncoder`` (batch first) -> mean over tokens -> linear."""

    def __init__(self, vocab: int = 1000, width: int = 64, heads: int = 4, layers: int = 2, classes: int = 10):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Embed, encode, average the tokens, classify."""
        return self.head(self.encoder(self.embed(ids)).mean(dim=1))


# ------------------------------------------------------------------ samplers

SAMPLER_SIZES = (10**6, 10**7, 10**8)


def sampler_rows(device: torch.device, sizes: tuple[int, ...] = SAMPLER_SIZES) -> list[dict]:
    """The keyed float64 sampler against float32 ``torch.randn`` and numpy's float64 normals.

    One thread (the caller sets it). The samplers take turns, and each row keeps the fastest of its
    calls, so a load that comes and goes hits them alike. On CPU the clock is this process's CPU time:
    on a shared machine, wall time would measure the neighbours. On CUDA it is wall time, synchronised.
    """
    import numpy as np

    from certun.backends.noise import NoiseGenerator, fresh_key

    gen = NoiseGenerator(fresh_key())
    rng = np.random.default_rng(0)
    tgen = torch.Generator(device=device).manual_seed(0)
    samplers = {
        "NoiseGenerator.normal (float64, numpy)": lambda n: gen.normal(0, n),
        f"NoiseGenerator.normal_torch (float64, {device.type})": lambda n: gen.normal_torch(0, n, device=device),
        f"torch.randn (float32, {device.type})": lambda n: torch.randn(n, generator=tgen, device=device),
        "numpy standard_normal (float64)": lambda n: rng.standard_normal(n),
    }
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    rows = []
    for n in sizes:
        best = dict.fromkeys(samplers, float("inf"))
        for draw in samplers.values():  # warm-up
            draw(min(n, 10**6))
        for _ in range(7 if n <= 10**6 else 5 if n <= 10**7 else 3):
            for label, draw in samplers.items():
                _sync(device)
                t0 = clock()
                draw(n)
                _sync(device)
                best[label] = min(best[label], clock() - t0)
        rows += [dict(sampler=label, n=n, values_per_s=n / t) for label, t in best.items()]
    return rows


def print_samplers(device: torch.device) -> list[dict]:
    """Print the sampler table (markdown) and return its rows."""
    rows = sampler_rows(device)
    clock = "process CPU time" if device.type == "cpu" else "wall time"
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} clock={clock}")
    print("| sampler | n | M values/s |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['n']:.0e} | {r['values_per_s'] / 1e6:.1f} |")
    return rows


# ------------------------------------------------------------------ timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> Callable[[], float]:
    """This process's CPU time on a CPU (one thread: on a shared machine wall time would measure the
    neighbours' load), wall time on CUDA (synchronised by the callers)."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def time_sgd(model: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int, device: torch.device) -> list[float]:
    """Time of each plain SGD step (zero_grad, forward, backward, step), synchronised (:func:`_clock`)."""
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    clock, out = _clock(device), []
    for _ in range(steps):
        _sync(device)
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(X), y).backward()
        opt.step()
        _sync(device)
        out.append(clock() - t0)
    return out


@contextlib.contextmanager
def step_stamps(device: torch.device) -> Iterator[list[float]]:
    """Within: a clock stamp (:func:`_clock`, synchronised) each time the noisy-step loop starts a step, and at its end.

    The stamps come from the loop itself, not from a ``callback``: the run copies the iterate for every
    callback (a fresh ``d``-vector, ~35 ms for the MLP), a cost only callers who ask for one pay.
    """
    from certun.backends.torch._run import TorchRun

    stamps: list[float] = []
    clock, saved = _clock(device), TorchRun.progress

    def progress(self: TorchRun, steps: range, desc: str) -> Iterator[int]:
        for t in saved(self, steps, desc):
            _sync(device)
            stamps.append(clock())
            yield t
        _sync(device)
        stamps.append(clock())

    TorchRun.progress = progress
    try:
        yield stamps
    finally:
        TorchRun.progress = saved


def time_unlearn(model: nn.Module, X: torch.Tensor, y: torch.Tensor, schedule: certun.Schedule, clip: str,
                 device: torch.device) -> list[float]:
    """Time of each noisy step of the torch backend (stamps from the step loop, :func:`step_stamps`)."""
    with warnings.catch_warnings(), step_stamps(device) as stamps:
        warnings.simplefilter("ignore", UnsafeNoiseWarning)
        get_backend("torch").unlearn(model, [(X, y)], schedule, loss_fn=F.cross_entropy, clip=clip, seed=0,
                                     device=device, progress=False, postprocess="none", inplace=True)
    return [b - a for a, b in itertools.pairwise(stamps)]


def floor_draw(d: int, device: torch.device) -> Callable[[int], torch.Tensor]:
    """The floor's draw ``t`` of ``d`` standard normals by the run's keyed float64 sampler, made as the run
    makes its own: into one float64 host buffer reused by every draw (a fresh 80 MB vector would add its
    page faults, 3–5 % of a draw at ``d`` = 10.3M as measured here, to the floor and none to the run),
    then, off the CPU, copied to the device. One thread, as the benchmarks run."""
    from certun.backends.noise import NoiseGenerator, fresh_key

    gen = NoiseGenerator(fresh_key())
    buffer = torch.empty(d, dtype=torch.float64)
    return lambda t: gen.normal_torch(t, d, out=buffer).to(device=device)


def time_noise(d: int, steps: int, device: torch.device) -> list[float]:
    """Time of each of the floor's draws (:func:`floor_draw`), by :func:`_clock`."""
    draw = floor_draw(d, device)
    clock, out = _clock(device), []
    for t in range(steps):
        _sync(device)
        t0 = clock()
        draw(t)
        _sync(device)
        out.append(clock() - t0)
    return out


@contextlib.contextmanager
def opacus_only() -> Iterator[None]:
    """Within: certun's own per-layer path declines every model, so per-sample clipping uses Opacus' hooks."""
    from certun.backends.torch._layers import LayerPerSample

    saved = LayerPerSample.applies
    LayerPerSample.applies = staticmethod(lambda model, flat: False)
    try:
        yield
    finally:
        LayerPerSample.applies = saved


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """Within: the torch backend's noisy step as it was before it was fused, for comparison: one pass per
    operation through the step functions, the gradient accumulated into the float32 buffer and then
    copied, a fresh ``d``-vector for every draw (the released bytes agree to float64 rounding, bit for bit up to
    2¹⁷ coordinates, where the fused step's norms are the step functions' own)."""
    from certun.backends.torch._run import TorchRun

    def noisy_step(self: TorchRun, x: torch.Tensor, t: int, batch: tuple, draw: Callable) -> tuple:
        with torch.no_grad():
            self.flat.x.copy_(x)
        loss = self.computer.compute(*batch)
        g = self.g64.copy_(self.flat.g)
        with torch.no_grad():
            stats = self.unfused_update(x, g, draw(), self.s.gammas[t], self.s.sigmas[t])
        return x, (loss.detach().to(torch.float64), *stats)

    def normal(self: TorchRun, generator: object, index: int, d: int) -> torch.Tensor:
        return generator.normal_torch(index, d, device=self.device).to(device=self.device, dtype=torch.float64)

    saved = TorchRun.noisy_step, TorchRun.normal
    TorchRun.noisy_step, TorchRun.normal = noisy_step, normal
    try:
        yield
    finally:
        TorchRun.noisy_step, TorchRun.normal = saved


@contextlib.contextmanager
def float32_buffer() -> Iterator[None]:
    """Within: certun's per-layer per-sample path as it was before it wrote into the float64 step buffer:
    the clipped mean written into the zeroed buffer of the parameters' dtype, then copied into it (the
    released bytes are the same)."""
    from certun.backends.torch._run import TorchRun

    def gradient(self: TorchRun, batch: tuple) -> tuple:
        loss = self.computer.compute(*batch)
        return loss, self.g64.copy_(self.flat.g)

    saved = TorchRun.gradient
    TorchRun.gradient = gradient
    try:
        yield
    finally:
        TorchRun.gradient = saved


def configurations(T: int) -> list[tuple[str, str, Callable[[], certun.Schedule]]]:
    """(label, clip mode, schedule factory) for every variant and clipping mode with noisy steps.

    ``per_sample[opacus]`` is per-sample clipping with certun's own per-layer path switched off. The radii
    are small so that the noise (whose size does not change a step's cost) leaves every model finite: with
    ``C0=10`` and a dozen steps, sigma is ~20 per coordinate and the transformer's loss overflows.
    """
    gc = lambda: certun.plan(1.0, 1e-5, C0=0.1, C1=1.0, gamma=1e-3, T=T)  # noqa: E731
    mc1 = lambda: certun.plan(1.0, 1e-5, C0=0.1, C2=1.0, gamma=1e-3, T=T, variant="model_clipping")  # noqa: E731
    mc2 = lambda: certun.plan(1.0, 1e-5, C0=0.1, C1=1.0, C2=1.0, gamma=1e-3, T=T,  # noqa: E731
                              variant="model_clipping", mode="clip_noise_before_projection")
    return [
        ("gradient_clipping", "batch", gc),
        ("gradient_clipping", "per_sample", gc),
        ("gradient_clipping", "per_sample[opacus]", gc),
        ("gradient_clipping", "ghost", gc),
        ("model_clipping/noise_after_projection", "batch", mc1),
        ("model_clipping/clip_noise_before_projection", "batch", mc2),
    ]


def builders(quick: bool) -> dict[str, tuple[Callable[[], nn.Module], Callable[[torch.Generator, int], torch.Tensor]]]:
    """Model name -> (model factory, input batch factory)."""
    def images(*shape: int) -> Callable[[torch.Generator, int], torch.Tensor]:
        return lambda gen, batch: torch.randn(batch, *shape, generator=gen)

    return {
        "cnn": (lambda: cnn(8 if quick else 32), images(1, 28, 28)),
        "mlp": (lambda: mlp((256, 256) if quick else (3072, 2560)), images(1, 28, 28)),
        "resnet18": (lambda: ResNet18GN(8 if quick else 64), images(3, 16, 16) if quick else images(3, 32, 32)),
        "transformer": (lambda: TransformerClassifier(width=32 if quick else 64),
                        lambda gen, batch: torch.randint(0, 1000, (batch, 16 if quick else 32), generator=gen)),
    }


def _row(name: str, d: int, label: str, clip: str, med: float, sgd: float, floor: float) -> dict:
    print(f"{name:12} {d:>10} {label:44} {clip:18} {med * 1e3:>10.3f} {med / sgd:>7.2f} {med / floor:>8.2f}")
    return dict(model=name, d=d, variant=label, clip=clip, median_ms=med * 1e3, ratio=med / sgd,
                ratio_floor=med / floor)


def _setup(build: Callable[[], nn.Module], make_x: Callable[[torch.Generator, int], torch.Tensor], batch: int,
           device: torch.device) -> tuple[nn.Module, int, torch.Tensor, torch.Tensor]:
    """The seeded starting model, its parameter count and one seeded batch (every row starts from these)."""
    torch.manual_seed(0)
    base = build()
    gen = torch.Generator().manual_seed(1)
    X = make_x(gen, batch).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    return base, sum(p.numel() for p in base.parameters()), X, y


def run_model(name: str, build: Callable[[], nn.Module], make_x: Callable[[torch.Generator, int], torch.Tensor],
              batch: int, steps: int, device: torch.device, compare_unfused: bool = False,
              compare_buffer: bool = False) -> list[dict]:
    """Every row of one model: plain SGD, the noise draw, the floor, then each configuration."""
    base, d, X, y = _setup(build, make_x, batch, device)
    sgd = statistics.median(time_sgd(build_copy(base), X, y, steps, device)[1:])
    noise = statistics.median(time_noise(d, steps, device)[1:])
    rows = [_row(name, d, "plain SGD", "-", sgd, sgd, sgd + noise),
            _row(name, d, f"draw of d Gaussians (keyed, {device.type})", "-", noise, sgd, sgd + noise),
            _row(name, d, "floor = SGD + draw", "-", sgd + noise, sgd, sgd + noise)]
    # untimed warm-up: the first run in a process pays for lazy imports, allocator growth and page faults
    time_unlearn(build_copy(base), X, y, configurations(2)[0][2](), "batch", device)
    todo = configurations(steps)
    if compare_unfused:  # each batch-clipped row, then the same row with the unfused step
        todo = [row for label, clip, make in todo if clip == "batch"
                for row in ((label, clip, make), (label, "batch[unfused]", make))]
    if compare_buffer:  # three pairs: the per-sample row, then the same row through the float32 buffer
        todo = [row for label, clip, make in todo if clip == "per_sample"
                for row in ((label, clip, make), (label, "per_sample[buffer]", make))] * 3
    for label, clip, make in todo:
        mode = clip.split("[")[0]
        try:
            context = {"[opacus]": opacus_only, "[unfused]": unfused, "[buffer]": float32_buffer}.get(
                clip[clip.find("["):] if "[" in clip else "", contextlib.nullcontext)
            with context():
                times = time_unlearn(build_copy(base), X, y, make(), mode, device)
            rows.append(_row(name, d, label, clip, statistics.median(times[1:]), sgd, sgd + noise))
        except (certun.CertunError, RuntimeError, NotImplementedError) as exc:
            rows.append(dict(model=name, d=d, variant=label, clip=clip, error=str(exc).splitlines()[0]))
            print(f"{name:12} {d:>10} {label:44} {clip:18} {'failed':>10}  {str(exc).splitlines()[0][:60]}")
    return rows


def run_interleaved(name: str, build: Callable[[], nn.Module], make_x: Callable[[torch.Generator, int], torch.Tensor],
                    batch: int, steps: int, device: torch.device, rounds: int) -> list[dict]:
    """The batch- and model-clipped rows against their floor, in ``rounds`` interleaved rounds.

    Each round times plain SGD, the draw and every batch-clipped configuration one after the other, so
    a row and its floor share the machine's state of that moment; the row's ratio is the median over
    rounds of its per-round ratio (min and max printed beside it). Drift on a shared machine then moves
    a row and its floor together instead of apart.
    """
    base, d, X, y = _setup(build, make_x, batch, device)
    time_unlearn(build_copy(base), X, y, configurations(2)[0][2](), "batch", device)  # untimed warm-up
    todo = [(label, make) for label, clip, make in configurations(steps) if clip == "batch"]
    ratios: dict[str, list[float]] = {label: [] for label, _ in todo}
    floors: list[float] = []
    for _ in range(rounds):
        floor = (statistics.median(time_sgd(build_copy(base), X, y, steps, device)[1:])
                 + statistics.median(time_noise(d, steps, device)[1:]))
        floors.append(floor)
        for label, make in todo:
            times = time_unlearn(build_copy(base), X, y, make(), "batch", device)
            ratios[label].append(statistics.median(times[1:]) / floor)
    rows = []
    for label, got in ratios.items():
        med = statistics.median(got)
        print(f"{name:12} {d:>10} {label:44} {'batch':18} {statistics.median(floors) * 1e3:>10.3f} "
              f"{med:>7.2f} {min(got):>6.2f}-{max(got):.2f}")
        rows.append(dict(model=name, d=d, variant=label, clip="batch", rounds=rounds, ratio_floor=med,
                         ratio_floor_min=min(got), ratio_floor_max=max(got),
                         floor_ms=statistics.median(floors) * 1e3))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models and few steps (CPU smoke run)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--steps", type=int, default=None, help="noisy steps per configuration")
    parser.add_argument("--batch", type=int, default=None, help="batch size")
    parser.add_argument("--models", default="cnn,mlp,resnet18,transformer",
                        help="comma-separated subset of cnn,mlp,resnet18,transformer")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--compare-unfused", action="store_true",
                        help="only the batch-clipped rows, each followed by the step as it was before fusing")
    parser.add_argument("--compare-buffer", action="store_true",
                        help="only the per-sample rows, three times, each followed by the same row writing the "
                             "float32 gradient buffer and copying it (as before the float64 buffer was written)")
    parser.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                        help="only the batch- and model-clipped rows against their floor, in ROUNDS interleaved "
                             "rounds (median, min and max of the per-round ratio to the floor)")
    parser.add_argument("--samplers", action="store_true",
                        help="only the noise sampler table: keyed float64 vs torch.randn vs numpy, 1e6..1e8 values")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.samplers:
        torch.set_num_threads(1)
        rows = print_samplers(device)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(dict(device=str(device), torch=torch.__version__, samplers=rows), fh, indent=2)
        return 0
    steps = args.steps or (6 if args.quick else 60)
    batch = args.batch or (16 if args.quick else 128)
    if device.type == "cpu":
        torch.set_num_threads(1)
    models = builders(args.quick)
    rows = []
    print(f"device={device} torch={torch.__version__} batch={batch} steps={steps} quick={args.quick}")
    header = f"{'model':12} {'d':>10} {'variant':44} {'clip':18} {'median ms':>10} {'x SGD':>7} {'x floor':>8}"
    print(header)
    print("-" * len(header))
    if args.interleaved < 0:
        parser.error(f"--interleaved must be a positive number of rounds, got {args.interleaved}")
    if args.interleaved:
        print(f"interleaved rounds={args.interleaved}: columns are model, d, variant, clip, floor ms, "
              "median x floor, min-max x floor")
    for name in args.models.split(","):
        if name not in models:
            parser.error(f"unknown model {name!r}; choose from {', '.join(models)}")
        if args.interleaved:
            rows += run_interleaved(name, *models[name], batch, steps, device, args.interleaved)
            continue
        rows += run_model(name, *models[name], batch, steps, device, args.compare_unfused, args.compare_buffer)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(device=str(device), torch=torch.__version__, batch=batch, steps=steps,
                           quick=args.quick, rows=rows), fh, indent=2)
    return 0


def build_copy(model: nn.Module) -> nn.Module:
    """A fresh copy with the same weights (every configuration starts from the same parameters)."""
    return copy.deepcopy(model)


if __name__ == "__main__":
    raise SystemExit(main())
