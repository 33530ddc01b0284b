"""Honest reproduction of certified unlearning on real data: utility and compute against retraining.

Runs the reproduction experiments (see :mod:`repro_experiments`) on scikit-learn digits or
Fashion-MNIST (Debian package files; nothing is downloaded) and writes, under ``--out``:
``results.json`` (every run, every epoch), ``results.md`` (tables) and PNG plots. docs/results.md
quotes these outputs with the commands that produced them.

Examples::

    python benchmarks/reproduce.py --quick --out /tmp/repro            # seconds; the CI smoke test
    python benchmarks/reproduce.py --data fashion-mnist --arch mlp --out runs/fmnist-mlp
    python benchmarks/reproduce.py --data digits --experiments sigma lambda --seeds 0 1 2

Every certified run goes through ``certun.plan`` and the torch backend and gets a certificate.
Torch runs on one CPU thread unless ``--threads`` says otherwise; wall-clock numbers from a shared
CPU are indicative only, gradient evaluations are the comparable compute measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # the repro_* helpers live beside this script
    sys.path.insert(0, str(_HERE))

import torch  # noqa: E402
from repro_data import DATASETS  # noqa: E402
from repro_experiments import EXPERIMENTS, Settings, quick_settings, run_experiments  # noqa: E402
from repro_models import ARCHITECTURES  # noqa: E402
from repro_report import command_line, markdown_report, plot_anchored, plot_tradeoff  # noqa: E402

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny data, 2 epochs, one seed, ε = 1 (seconds)")
    p.add_argument("--data", choices=DATASETS, default=None, help="data set (default: digits with --quick, "
                   "else fashion-mnist)")
    p.add_argument("--arch", choices=ARCHITECTURES, default="mlp", help="model (default mlp)")
    p.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS),
                   help="which experiments to run (default all); 'main' holds experiments (1) and (3)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds reported (default 0 1 2)")
    p.add_argument("--eps", nargs="+", type=float, default=None, help="ε values of the main experiment")
    p.add_argument("--scenarios", nargs="+", choices=("random10", "class"), default=None,
                   help="forget scenarios (default both)")
    p.add_argument("--epochs", type=int, default=None, help="training / fine-tuning epochs")
    p.add_argument("--n-train", type=int, default=None, help="training-set size (subset)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu", help="torch device for every run, e.g. cuda (default cpu)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--from-json", type=Path, default=None,
                   help="re-render tables and plots from an earlier results.json instead of running")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    data = args.data or ("digits" if args.quick else "fashion-mnist")
    s = quick_settings(data, args.arch) if args.quick else Settings(data=data, arch=args.arch)
    changes = {}
    if args.seeds is not None:
        changes["seeds"] = tuple(args.seeds)
    if args.eps is not None:
        changes["eps_list"] = tuple(args.eps)
        changes["tradeoff_eps"] = tuple(e for e in s.tradeoff_eps if e in args.eps) or tuple(args.eps[:3])
    if args.scenarios is not None:
        changes["scenarios"] = tuple(args.scenarios)
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.n_train is not None:
        changes["n_train"] = args.n_train
    changes["device"] = args.device
    return replace(s, **changes)


def _environment(threads: int, device: str) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass  # not Linux: keep platform's answer
    return {"cpu": cpu, "torch_threads": str(threads), "torch": torch.__version__, "python": platform.python_version(),
            "os_cpu_count": str(os.cpu_count()), "device": device,
            "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "none (CPU run)"}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 on success."""
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        return _write(results, args.out, rerun=False)
    torch.set_num_threads(args.threads)
    settings = _settings(args)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # Opacus warns about its secure-RNG mode on every per-sample run; the noise here comes from the
        # backend's own generator, so the warning says nothing about these runs.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure.*RNG.*")
        results = run_experiments(settings, tuple(args.experiments),
                                  log=lambda msg: print(f"{time.perf_counter() - started:7.1f}s {msg}", flush=True))
    results["environment"] = _environment(args.threads, args.device)
    results["command"] = "python benchmarks/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["total_seconds"] = time.perf_counter() - started
    return _write(results, args.out, rerun=True)


def _write(results: dict, out: Path, *, rerun: bool) -> int:
    """Write results.json (only for a fresh run), results.md and the plots under ``out``."""
    settings = results["settings"]
    tag = f"{settings['data']}-{settings['arch']}"
    images = {}
    title = f"{settings['data']}, {settings['arch']}"
    if "main" in results and plot_tradeoff(results["main"], settings["tradeoff_eps"], out / f"tradeoff-{tag}.png",
                                           title=title):
        images["tradeoff"] = f"tradeoff-{tag}.png"
    if "anchored" in results and plot_anchored(results["anchored"], out / f"anchored-{tag}.png", title=title):
        images["anchored"] = f"anchored-{tag}.png"
    json_path = out / "results.json"
    if rerun:
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1, allow_nan=False))
        tmp.replace(json_path)
    report = markdown_report(results, images)
    report += "\n" + command_line(results) + "\n"
    (out / "results.md").write_text(report)
    print(report)
    print(f"wrote {out / 'results.md'} and {len(images)} plot(s)" + (f", {json_path}" if rerun else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
