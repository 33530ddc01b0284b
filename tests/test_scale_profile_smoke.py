"""benchmarks/scale_profile.py's smoke run: every layout and rank gets its parts (no timing checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scale_profile.py"

torch = pytest.importorskip("torch")


def test_a_two_rank_profile_splits_each_layouts_step_into_its_parts() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--size", "quick", "--steps", "3", "--batch", "8"], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| 2 |")]
    parts = {(r[1], r[2]) for r in rows}
    for layout in ("replicated", "sharded", "fsdp"):
        for part in ("gradient", "draw", "step key", "rest", "step", "collective: gathering the step's batches"):
            assert (layout, part) in parts, (layout, part)
    assert ("sharded", "collective: gathering the master's shards") in parts
    assert ("replicated", "collective: all-reducing the gradient") in parts
    assert all(len(r) == 7 for r in rows)  # W, layout, part, then wall and CPU for each of the 2 ranks


@pytest.mark.parametrize("args", [["--worlds", "0"], ["--layouts", "ddp"], ["--steps", "1"], ["--batch", "1"]])
def test_bad_options_exit_with_argparse_message(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
