"""`certun audit --implementation`: the report, and every check FAILs on a broken implementation.

Norm rows: today's float32 ``project_ball``/``clip`` leave their radius from d ≈ 1e5 (a spike on a
sea of ones hides the ones from a float32 sum), so the quick run (d = 1e6) reports FAIL there until
the float64 norms land; here the real functions are checked at d = 1e4, where they hold today.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from noise_fixtures import TorchSeeded

from certun.audit import implementation as impl
from certun.backends.noise import NoiseGenerator, seed_secret
from certun.backends.torch._steps import clip, project_ball
from certun.cli import main

torch.set_num_threads(1)

NOISE_ROWS = ["generator key space", "sampler max |z|", "sampler tail rate", "moments",
              "disc test (float32 Box-Muller)", "positional consistency", "noise on device",
              "float64 addition on device"]


class Scaled:
    def __init__(self, factor: float) -> None:
        self.g, self.factor = NoiseGenerator(seed_secret(7)), factor

    def normal(self, draw: int, count: int, *, offset: int = 0) -> np.ndarray:
        return self.factor * self.g.normal(draw, count, offset=offset)


class Truncated(Scaled):
    def normal(self, draw: int, count: int, *, offset: int = 0) -> np.ndarray:
        return np.clip(self.g.normal(draw, count, offset=offset), -3.5, 3.5)


def test_quick_report_structure_and_noise_rows(capsys):
    """The quick run prints JSON with every row; the noise and float64 rows pass on this CPU."""
    code = main(["audit", "--implementation", "--quick", "--json"])
    report = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in report["checks"]]
    assert names[:8] == NOISE_ROWS
    assert names[8:] == ["norm after project_ball (d = 1e+06)", "norm after clip (d = 1e+06)"]
    for row in report["checks"]:
        assert {"name", "measured", "expected", "passed", "verdict", "note"} <= set(row)
        assert row["verdict"] == ("PASS" if row["passed"] else "FAIL")
    assert all(row["passed"] for row in report["checks"][:8]), report["checks"][:8]
    assert code == report["exit_code"] == (0 if all(r["passed"] for r in report["checks"]) else 1)
    assert report["device"] == "cpu" and report["quick"] is True


def test_table_output_ends_with_a_summary(capsys):
    report = impl.audit_implementation("cpu", quick=True, sizes={"norm_d": 10_000})
    text = impl.format_implementation(report)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["check", "measured", "expected", "verdict"]
    assert len(lines) == 1 + 10 + 1
    assert report.passed and report.exit_code == 0 and lines[-1].startswith("PASS")


@pytest.mark.parametrize("fn", [project_ball, clip])
def test_norm_rows_hold_today_at_small_d(fn):
    assert impl.check_norm_overshoot(fn, fn.__name__, 10_000).passed


def test_norm_check_fails_a_projection_without_margin_and_passes_a_float64_one():
    def naive(x, C):
        return x.mul_(C / torch.linalg.vector_norm(x))

    def float64_norm(x, C):
        x.mul_(C * (1 - 1e-6) / torch.linalg.vector_norm(x, dtype=torch.float64).item())
        return x

    assert not impl.check_norm_overshoot(naive, "naive", 1_000_000).passed
    assert impl.check_norm_overshoot(float64_norm, "float64", 1_000_000).passed


def test_bad_device_is_a_one_line_error(capsys):
    assert main(["audit", "--implementation", "--quick", "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "device='tpu'" in err and "Traceback" not in err
    if not torch.cuda.is_available():
        assert main(["audit", "--implementation", "--quick", "--device", "cuda"]) == 2


# --- each noise check fails on the source it exists to catch -----------------------------------


def test_key_space_check_fails_torch_seeding():
    assert impl.check_key_space().passed
    assert not impl.check_key_space(TorchSeeded).passed
    assert not impl.check_key_space(NoiseGenerator, key_bits=64).passed


def test_positional_check_fails_torch_randn():
    assert not impl.check_positional(TorchSeeded(seed_secret(0))).passed


def test_disc_check_fails_float32_randn():
    """2^27 pairs: an exact Gaussian has ~8 pairs beyond 5.768, float32 randn none (p ≈ 7e-4)."""
    check = impl.check_disc(TorchSeeded(seed_secret(0)), 1 << 27)
    assert not check.passed and check.measured.startswith("0 of")


def test_max_abs_z_check_fails_a_24_bit_sampler():
    def float32_like(words):
        u = ((words[:, 0] >> np.uint64(40)).astype(np.float64) + 1) * 2.0**-24
        theta = 2 * math.pi * (words[:, 2] >> np.uint64(11)).astype(np.float64) * 2.0**-53
        r = np.sqrt(-2 * np.log(u))
        return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)

    assert impl.check_max_abs_z().passed
    assert not impl.check_max_abs_z(float32_like).passed


def test_tail_and_moment_checks_fail_wrong_distributions():
    assert not impl.check_tail_rate(Truncated(1.0), 1_000_000).passed
    assert not impl.check_tail_rate(Scaled(1.05), 1_000_000).passed
    assert not impl.check_moments(Scaled(1.01), 1_000_000).passed
    assert impl.check_moments(Scaled(1.0), 1_000_000).passed
