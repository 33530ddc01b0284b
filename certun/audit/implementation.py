"""``certun audit --implementation``: does this platform behave as the proof assumes?

The accountant's bounds are about real Gaussians added to real vectors inside exact balls
(docs/theory.md#floating-point-and-randomness). This audit measures the pieces that make that true on
the running machine: the noise key space, the sampler's maximum and tail rate against the analytic
values, its moments, the disc test that catches float32 Box–Muller, positional consistency, float64
arithmetic on the device, and whether clipping and projection ever leave their radius at large d.
Each check is a function that takes the thing it checks, so the tests can hand it a broken one
(torch's 32-bit-seeded float32 ``randn``, a projection without margin) and see it FAIL.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from certun.backends.noise import (
    KEY_BYTES,
    MAX_ABS_Z,
    NoiseGenerator,
    pairs_from_words,
    seed_secret,
)

__all__ = [
    "Check",
    "ImplementationReport",
    "NormalSource",
    "audit_implementation",
    "check_disc",
    "check_float64_device",
    "check_key_space",
    "check_max_abs_z",
    "check_moments",
    "check_norm_overshoot",
    "check_positional",
    "check_tail_rate",
    "format_implementation",
]

#: Radius float32 Box–Muller on 24-bit uniforms never exceeds: √(48 ln 2) ≈ 5.768. It has an atom
#: there (u = 2⁻²⁴, mass 2⁻²⁴ per pair) that float32 rounding scatters to either side, so the test
#: counts radii beyond R_DISC·(1 + 1e-5); an exact Gaussian is there with probability exp(−R²/2).
R_DISC = math.sqrt(48 * math.log(2))
R_DISC_TEST = R_DISC * (1 + 1e-5)
#: A two-sided Poisson or z-score check fails below this p-value (about 3.3 standard deviations).
P_FAIL = 1e-3
_Z_FAIL = 5.0

#: Sizes of the full and the quick audit.
FULL = {"tail_n": 20_000_000, "moment_n": 10_000_000, "disc_pairs": 1 << 27, "norm_d": 10_000_000}
QUICK = {"tail_n": 2_000_000, "moment_n": 1_000_000, "disc_pairs": 1 << 22, "norm_d": 1_000_000}


class NormalSource(Protocol):
    """Anything that returns coordinates [offset, offset + count) of draw ``draw`` as float64."""

    def normal(self, draw: int, count: int, *, offset: int = 0) -> np.ndarray: ...


@dataclass(frozen=True)
class Check:
    """One row of the report: what was measured, what the proof needs, and the verdict."""

    name: str
    measured: str
    expected: str
    passed: bool
    note: str = ""

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass(frozen=True)
class ImplementationReport:
    """Every check of one run; exit code 0 when all pass, 1 otherwise."""

    device: str
    quick: bool
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "quick": self.quick, "passed": self.passed, "exit_code": self.exit_code,
                "checks": [{**asdict(c), "verdict": c.verdict} for c in self.checks]}


def _poisson_p(count: int, expected: float) -> float:
    """Two-sided p-value of ``count`` under Poisson(expected)."""
    from scipy import stats

    if expected <= 0:
        return 1.0 if count == 0 else 0.0
    return float(min(1.0, 2 * min(stats.poisson.cdf(count, expected), stats.poisson.sf(count - 1, expected))))


def _key(i: int) -> bytes:
    return seed_secret(i)  # audit keys are public on purpose: this checks the generator, not a run


def check_key_space(make: Callable[[bytes], NormalSource] = NoiseGenerator, key_bits: int = 8 * KEY_BYTES) -> Check:
    """A key of ≥ 128 bits, and flipping any one of bits 32, 40, 64, 128 or the last changes the noise."""
    base_key = _key(0)
    base = make(base_key).normal(0, 64)
    bits = [b for b in (32, 40, 64, 128, 8 * len(base_key) - 1) if b < 8 * len(base_key)]
    same = []
    for bit in bits:
        flipped = bytearray(base_key)
        flipped[bit // 8] ^= 1 << (bit % 8)
        if np.array_equal(make(bytes(flipped)).normal(0, 64), base):
            same.append(bit)
    ok = key_bits >= 128 and not same
    measured = f"{key_bits}-bit key; " + ("every flipped bit changes the noise" if not same
                                          else f"flipping bits {same} changes nothing")
    return Check("generator key space", measured, ">= 128 bits, all bits matter", ok)


def check_max_abs_z(sampler: Callable[[np.ndarray], np.ndarray] = pairs_from_words,
                    bound: float = MAX_ABS_Z) -> Check:
    """Crafted words w0 = w1 = 0 give the largest radius √(258 ln 2); nothing exceeds the stated bound."""
    r_max = math.sqrt(258 * math.log(2))
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**64, size=(4096, 3), dtype=np.uint64)
    words[:, 0] >>= rng.integers(0, 64, size=4096).astype(np.uint64)
    words[0] = 0
    z = sampler(words)
    top = float(np.max(np.abs(z))) if np.all(np.isfinite(z)) else math.nan
    ok = math.isfinite(top) and r_max * (1 - 2**-40) <= top <= bound
    return Check("sampler max |z|", f"{top:.15g}", f"sqrt(258 ln 2) = {r_max:.15g} <= bound {bound:.15g}", ok)


def check_tail_rate(source: NormalSource, n: int, threshold: float = 4.0, bound: float = MAX_ABS_Z) -> Check:
    """Values beyond ``threshold`` at the Gaussian rate (two-sided Poisson test), none beyond the bound."""
    z = source.normal(1, n)
    count = int(np.count_nonzero(np.abs(z) > threshold))
    expected = n * math.erfc(threshold / math.sqrt(2))
    top = float(np.max(np.abs(z)))
    p = _poisson_p(count, expected)
    ok = p >= P_FAIL and top <= bound
    return Check("sampler tail rate", f"{count} of {n} beyond {threshold:g} (p = {p:.3g}); max {top:.4f}",
                 f"~{expected:.0f} (Poisson), max <= {bound:.4f}", ok)


def check_moments(source: NormalSource, n: int) -> Check:
    """Mean, variance, skewness and excess kurtosis within 5 standard errors of N(0, 1)."""
    z = source.normal(2, n)
    mean = float(z.mean())
    c = z - mean
    m2 = float(np.mean(c * c))
    m3 = float(np.mean(c**3)) / m2**1.5
    m4 = float(np.mean(c**4)) / m2**2 - 3.0
    scores = {"mean": mean / math.sqrt(1 / n), "var": (m2 - 1) / math.sqrt(2 / n), "skew": m3 / math.sqrt(6 / n),
              "kurt": m4 / math.sqrt(24 / n)}
    worst = max(abs(s) for s in scores.values())
    measured = ", ".join(f"{k} {v:+.2f}" for k, v in scores.items()) + " (standard errors)"
    return Check("moments", measured, f"all within {_Z_FAIL:g}", bool(worst <= _Z_FAIL))


def disc_exceedances(source: NormalSource, n_pairs: int, *, chunk: int = 1 << 24) -> int:
    """Pairs (j, j+8) of each block of 16 coordinates with radius above :data:`R_DISC_TEST`.

    float32 ``torch.randn`` on CPU never has one; an exact Gaussian has one with probability ≈ 2⁻²⁴.
    """
    count, draw = 0, 3
    for start in range(0, 2 * n_pairs, chunk):
        x = source.normal(draw, min(chunk, 2 * n_pairs - start)).reshape(-1, 16)
        count += int(np.count_nonzero(x[:, :8] ** 2 + x[:, 8:] ** 2 > R_DISC_TEST**2))
        draw += 1
    return count


def check_disc(source: NormalSource, n_pairs: int) -> Check:
    """The disc test: pair radii beyond 5.768 at the Gaussian rate ≈ 2⁻²⁴ per pair (two-sided Poisson)."""
    count = disc_exceedances(source, n_pairs)
    expected = n_pairs * math.exp(-(R_DISC_TEST**2) / 2)
    p = _poisson_p(count, expected)
    # With fewer than ~7 expected, a count of 0 is not evidence against the source (no power).
    note = "" if expected >= 7 else "low power at this size: run without --quick"
    return Check("disc test (float32 Box-Muller)", f"{count} of {n_pairs} pairs beyond {R_DISC_TEST:.5f} (p = {p:.3g})",
                 f"~{expected:.2f} (Poisson)", p >= P_FAIL, note)


def check_positional(source: NormalSource, n: int = 100_003) -> Check:
    """Pieces equal the whole: coordinate i of draw t depends only on (key, t, i)."""
    whole = source.normal(5, n)
    cuts = [0, 1, 2, 7, 17, 4099, n // 2 + 1, n - 1, n]
    pieces = np.concatenate([source.normal(5, b - a, offset=a) for a, b in itertools.pairwise(cuts)])
    ok = bool(np.array_equal(pieces, whole))
    return Check("positional consistency", "pieces == whole" if ok else "pieces differ from the whole",
                 "bit-identical", ok)


def check_device_noise(device: str) -> Check:
    """``normal_torch`` on the device carries exactly the float64 values of ``normal``."""
    g = NoiseGenerator(_key(1))
    t = g.normal_torch(0, 4097, offset=3, device=device)
    ok = str(t.dtype) == "torch.float64" and np.array_equal(t.cpu().numpy(), g.normal(0, 4097, offset=3))
    return Check("noise on device", f"{t.dtype} on {t.device}", "float64, equal to the CPU values", ok)


def check_float64_device(device: str) -> Check:
    """float64 on the device: 53-bit significand, subnormals kept, and x + z rounded like IEEE (as numpy)."""
    import torch

    one = torch.ones(1, dtype=torch.float64, device=device)
    eps_ok = bool(((one + 2.0**-52) - one).item() == 2.0**-52)
    sub_ok = bool((torch.full((1,), 2.0**-1022, dtype=torch.float64, device=device) / 2**52).item() > 0)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(100_000) * 10.0 ** rng.integers(-8, 8, size=100_000)
    z = rng.standard_normal(100_000)
    added = (torch.from_numpy(x).to(device) + torch.from_numpy(z).to(device)).cpu().numpy()
    add_ok = bool(np.array_equal(added, x + z))
    ok = eps_ok and sub_ok and add_ok
    measured = f"epsilon {'ok' if eps_ok else 'WRONG'}, subnormals {'kept' if sub_ok else 'flushed'}, " \
               f"addition {'IEEE' if add_ok else 'differs from IEEE'}"
    return Check("float64 addition on device", measured, "IEEE binary64", ok)


def norm_overshoot_vectors(d: int, device: str) -> dict[str, Any]:
    """float32 vectors on which a float32 norm undershoots: Gaussian, and one spike on a sea of ones."""
    import torch

    gen = torch.Generator().manual_seed(0)
    gauss = (3.0 * torch.randn(d, generator=gen)).to(device)
    spike = torch.ones(d)
    spike[0] = 1e4
    return {"gaussian": gauss, "spike+ones": spike.to(device)}


def check_norm_overshoot(fn: Callable[[Any, float], Any], name: str, d: int, device: str = "cpu",
                         C: float = 1.0) -> Check:
    """``fn(x, C)`` (in place, float32, length d) must leave ‖x‖ ≤ C measured in float64; FAIL if over."""
    import torch

    worst, worst_name = 0.0, ""
    for label, x in norm_overshoot_vectors(d, device).items():
        y = fn(x, C)
        r = float(torch.linalg.vector_norm(y.to(torch.float64)).item())
        if not math.isfinite(r):
            r = math.inf
        if r >= worst:
            worst, worst_name = r, label
    ok = worst <= C
    return Check(f"norm after {name} (d = {d:.0e})", f"{worst:.9f} ({worst_name})", f"<= C = {C:g}", ok,
                 "" if ok else "float32 norm undershoots: the accountant's radius is false at this d")


def audit_implementation(device: str = "cpu", quick: bool = False, *, source: NormalSource | None = None,
                         sizes: dict[str, int] | None = None) -> ImplementationReport:
    """Run every check on ``device``; ``sizes`` overrides the quick or full sizes (tests)."""
    from certun.backends.torch import clip, project_ball

    size = {**(QUICK if quick else FULL), **(sizes or {})}
    src = source if source is not None else NoiseGenerator(_key(2))
    checks = [
        check_key_space(),
        check_max_abs_z(),
        check_tail_rate(src, size["tail_n"]),
        check_moments(src, size["moment_n"]),
        check_disc(src, size["disc_pairs"]),
        check_positional(src),
        check_device_noise(device),
        check_float64_device(device),
        check_norm_overshoot(project_ball, "project_ball", size["norm_d"], device),
        check_norm_overshoot(clip, "clip", size["norm_d"], device),
    ]
    return ImplementationReport(device=device, quick=quick, checks=tuple(checks))


def format_implementation(report: ImplementationReport) -> str:
    """A PASS/FAIL table, one row per check, then a one-line summary."""
    rows = [("check", "measured", "expected", "verdict")]
    rows += [(c.name, c.measured, c.expected, c.verdict + (f" ({c.note})" if c.note else "")) for c in report.checks]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3]]).rstrip()
             for row in rows]
    failed = [c.name for c in report.checks if not c.passed]
    size = "quick" if report.quick else "full"
    lines.append(f"PASS: every check holds on {report.device} ({size})" if not failed
                 else f"FAIL: {len(failed)} of {len(report.checks)} checks failed on {report.device} ({size}): "
                 + ", ".join(failed))
    return "\n".join(lines)
