"""Benchmark of the accountant: median time of plan and guarantee, and noise saved against closed forms.

Run: ``python benchmarks/accountant.py`` (add ``--repeat N`` for more samples). Prints a markdown table;
the numbers in docs/benchmarks.md come from this script. Targets (2-core CPU): gradient-clipping and
output-perturbation solves under 1 ms median; a model-clipping T solve (T up to 1e4) under 50 ms.
For scale it also times Opacus's ``get_noise_multiplier`` and dp_accounting's Gaussian calibration
when they are installed.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

from certun import guarantee, plan


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` in milliseconds over ``repeat`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


CASES: list[tuple[str, dict]] = [
    ("GC, lam=0, T=100", dict(eps=1.0, delta=1e-5, C0=1.0, C1=10.0, lam=0.0, gamma=1e-3, T=100)),
    ("GC, lam=50, T=47", dict(eps=1.0, delta=1e-5, C0=1.0, C1=10.0, lam=50.0, gamma=1e-3, T=47)),
    ("GC, lam=50, T chosen", dict(eps=1.0, delta=1e-5, C0=1.0, C1=10.0, lam=50.0, gamma=1e-3)),
    ("GC, eps=0.1, T=1000", dict(eps=0.1, delta=1e-5, C0=1.0, C1=1.0, lam=0.0, gamma=1e-3, T=1000)),
    ("GC, T for sigma=2", dict(eps=1.0, delta=1e-5, C0=1.0, C1=10.0, lam=0.0, gamma=1e-3, sigma=2.0)),
    ("OP, eps=1", dict(eps=1.0, delta=1e-5, C0=1.0, variant="output_perturbation")),
    ("OP, eps=0.1", dict(eps=0.1, delta=1e-5, C0=1.0, variant="output_perturbation")),
    ("MC, T for sigma (T=40)", dict(eps=1.0, delta=1e-5, C0=1.0, C2=1.0, sigma=0.5, variant="model_clipping")),
    ("MC, T for sigma (T~1e3)", dict(eps=1.0, delta=1e-5, C0=1.0, C2=1.0, sigma=0.3, variant="model_clipping")),
    ("MC, T for sigma (T~1e4)", dict(eps=1.0, delta=1e-5, C0=1.0, C2=1.0, sigma=0.265, variant="model_clipping")),
    ("MC, sigma for T=10", dict(eps=1.0, delta=1e-5, C0=1.0, C2=1.0, T=10, variant="model_clipping")),
    ("MC, sigma for T=200", dict(eps=1.0, delta=1e-5, C0=1.0, C2=1.0, T=200, variant="model_clipping")),
]


def closed_form_ratio(kwargs: dict, schedule) -> str:
    """σ_closed / σ_exact where a closed form exists."""
    variant = kwargs.get("variant", "gradient_clipping")
    if variant == "model_clipping" or "sigma" in kwargs:
        return "-"
    try:
        other = plan(**{**kwargs, "T": schedule.T} if variant != "output_perturbation" else kwargs,
                     method="closed_form")
    except Exception as exc:  # the closed form has a validity range; report it instead of a ratio
        return f"n/a ({type(exc).__name__})"
    if variant == "output_perturbation":
        return f"{other.sigma0 / schedule.sigma0:.3f}"
    return f"{other.sigma / schedule.sigma:.3f}"


def reference_timings(repeat: int) -> list[tuple[str, str]]:
    """Opacus and dp_accounting calibrations, for scale, when installed."""
    rows = []
    try:
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError:
        rows.append(("opacus get_noise_multiplier (RDP, q=0.01, 1000 steps)", "not installed"))
    else:
        ms = median_ms(lambda: get_noise_multiplier(target_epsilon=1.0, target_delta=1e-5, sample_rate=0.01,
                                                    steps=1000, accountant="rdp"), max(3, repeat // 20))
        rows.append(("opacus get_noise_multiplier (RDP, q=0.01, 1000 steps)", f"{ms:.3f}"))
    try:
        from dp_accounting import dp_event, mechanism_calibration, rdp
    except ImportError:
        rows.append(("dp_accounting calibrate_dp_mechanism (Gaussian, RDP)", "not installed"))
    else:
        def calibrate():
            return mechanism_calibration.calibrate_dp_mechanism(
                rdp.RdpAccountant, lambda s: dp_event.GaussianDpEvent(s), 1.0, 1e-5,
                mechanism_calibration.LowerEndpointAndGuess(1e-3, 1.0))
        rows.append(("dp_accounting calibrate_dp_mechanism (Gaussian, RDP)",
                     f"{median_ms(calibrate, max(3, repeat // 20)):.3f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    print(f"# certun accountant benchmark ({platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, repeat={args.repeat})\n")
    print("| case | T | sigma | plan median (ms) | guarantee median (ms) | sigma_closed / sigma_exact |")
    print("|---|---|---|---|---|---|")
    for name, kwargs in CASES:
        s = plan(**kwargs)
        repeat = args.repeat if s.T < 1000 else max(5, args.repeat // 20)
        t_plan = median_ms(lambda kwargs=kwargs: plan(**kwargs), repeat)
        t_guar = median_ms(lambda s=s: guarantee(s), repeat)
        sigma = s.sigma if s.sigma is not None else s.sigma0
        print(f"| {name} | {s.T} | {sigma:.6g} | {t_plan:.3f} | {t_guar:.3f} | {closed_form_ratio(kwargs, s)} |")
    print("\n| reference calibration | median (ms) |\n|---|---|")
    for name, value in reference_timings(args.repeat):
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
