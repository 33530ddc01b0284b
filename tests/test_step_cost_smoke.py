"""benchmarks/step_cost.py (interleaved and table modes) and step_pairs.py: the structure of their rows and their
refusals (no timing checked)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "step_cost.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytest.importorskip("torch")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


def test_interleaved_rounds_give_one_row_per_batch_clipped_variant_with_its_spread(tmp_path):
    out = tmp_path / "rows.json"
    done = _run("--quick", "--device", "cpu", "--models", "cnn", "--steps", "3", "--interleaved", "2",
                "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["gradient_clipping", "model_clipping/noise_after_projection",
                                            "model_clipping/clip_noise_before_projection"]
    for r in rows:
        assert r["clip"] == "batch" and r["rounds"] == 2
        assert math.isfinite(r["ratio_floor"]) and r["floor_ms"] > 0
        assert r["ratio_floor_min"] <= r["ratio_floor"] <= r["ratio_floor_max"]
    assert "min-max x floor" in done.stdout


def test_a_negative_number_of_rounds_is_refused_with_what_is_valid():
    done = _run("--quick", "--device", "cpu", "--models", "cnn", "--interleaved", "-1")
    assert done.returncode == 2
    assert "--interleaved must be a positive number of rounds, got -1" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_default_table_has_the_floor_and_every_variant(tmp_path):
    out = tmp_path / "rows.json"
    done = _run("--quick", "--device", "cpu", "--models", "cnn", "--steps", "3", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    labels = [(r["variant"], r["clip"]) for r in rows]
    assert labels[:3] == [("plain SGD", "-"), ("draw of d Gaussians (keyed, cpu)", "-"), ("floor = SGD + draw", "-")]
    assert ("gradient_clipping", "per_sample") in labels
    assert ("model_clipping/noise_after_projection", "batch") in labels
    assert all("error" not in r and math.isfinite(r["ratio_floor"]) for r in rows), rows


PAIRS = ROOT / "benchmarks" / "step_pairs.py"


def _pairs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PAIRS), *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


def test_paired_steps_give_one_row_per_batch_clipped_variant_with_quartiles(tmp_path):
    """benchmarks/step_pairs.py: every counted noisy step has its floor step; quartiles bracket the median."""
    out = tmp_path / "pairs.json"
    done = _pairs("--quick", "--models", "cnn", "--steps", "4", "--runs", "2", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["gradient_clipping", "model_clipping/noise_after_projection",
                                            "model_clipping/clip_noise_before_projection"]
    for r in rows:
        assert r["pairs"] == 2 * 3  # two counted runs of four steps, the first pair of each dropped
        assert r["floor_ms"] > 0 and r["ratio_floor_q1"] <= r["ratio_floor"] <= r["ratio_floor_q3"]


@pytest.mark.parametrize(("args", "message"), [(("--steps", "2"), "--steps must be at least 3"),
                                               (("--runs", "0"), "--runs must be at least 1"),
                                               (("--models", "vgg"), "unknown model 'vgg'")])
def test_paired_steps_refuse_bad_arguments_with_what_is_valid(args, message):
    done = _pairs("--quick", *args)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_update_passes_prints_every_pass_the_fused_updates_and_sgd():
    script = ROOT / "benchmarks" / "update_passes.py"
    done = subprocess.run([sys.executable, str(script), "--rounds", "1", "--scale", "0.001"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("d=10305 ")  # the six sizes scaled and rounded, at least 1 each
    labels = [line[:56].strip() for line in lines[2:]]
    assert labels[-4:] == ["fused: gradient clipping", "fused: model clipping, noise after projection",
                           "fused: model clipping, clip-noise-before-projection",
                           "SGD's float32 update (add_ per parameter)"]
    assert len(labels) == 11 and all(float(line[56:]) >= 0 for line in lines[2:])
    bad = subprocess.run([sys.executable, str(script), "--scale", "2"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "--scale must be in (0, 1], got 2.0" in bad.stderr and "Traceback" not in bad.stderr


def test_draw_workers_prints_one_row_per_worker_count_and_refuses_zero():
    script = ROOT / "benchmarks" / "draw_workers.py"
    done = subprocess.run([sys.executable, str(script), "--d", "300000", "--repeats", "1", "--max-workers", "3"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # it exits non-zero if a split changed a bit
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["1", "2", "3"] and rows[0][2] == "1.00"
    bad = subprocess.run([sys.executable, str(script), "--max-workers", "0"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--max-workers must be at least 1, got 0" in bad.stderr
