"""benchmarks/scale.py's smoke run: the structure of its rows and table, and its refusals (no timing checked)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scale.py"

torch = pytest.importorskip("torch")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CLIPS = ("per_sample", "batch", "model")
LAYOUTS = ("replicated", "sharded", "fsdp")
#: FSDP2 refuses per-sample clipping (a sample's norm needs every shard): no such row is timed
TIMED = {(lay, c) for lay in LAYOUTS for c in CLIPS} - {("fsdp", "per_sample")}


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    """One ``--quick`` run on world sizes 1 and 2 (the MLP only, to stay short): its JSON and its stdout."""
    path = tmp_path_factory.mktemp("scale") / "scale.json"
    proc = _run("--quick", "--worlds", "1,2", "--models", "mlp", "--steps", "3", "--json", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(path.read_text()), proc.stdout


def test_every_world_layout_and_clip_has_a_timed_noisy_row(quick) -> None:
    result, _ = quick
    noisy = {(r["world"], r["layout"], r["clip"]): r for r in result["rows"] if r["what"] == "noisy step"}
    assert set(noisy) == {(w, lay, c) for w in (1, 2) for lay, c in TIMED}
    for r in noisy.values():
        assert "error" not in r, r
        for key in ("ms", "cpu_ms", "examples_per_s", "ratio_sgd", "ratio_floor", "ratio_floor_cpu", "ratio_base",
                    "ratio_base_cpu"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["examples_per_s"] == pytest.approx(result["batch"] / (r["ms"] / 1e3))


def test_baselines_are_measured_in_each_world(quick) -> None:
    """A DDP SGD row and an FSDP2 SGD row per world size, and per layout a floor that is at least its own SGD
    step (DDP for replicated and sharded, FSDP2 for fsdp), with the noisy rows' ratios taken to that step."""
    result, _ = quick
    for world in (1, 2):
        rows = [r for r in result["rows"] if r["world"] == world]
        (sgd,) = [r for r in rows if r["what"] == "DDP SGD"]
        (fsdp,) = [r for r in rows if r["what"] == "FSDP2 SGD"]
        assert sgd["ratio_sgd"] == 1.0 and sgd["local_batch"] == result["batch"] // world
        assert fsdp["ratio_base"] == 1.0 and fsdp["ratio_sgd"] == pytest.approx(fsdp["ms"] / sgd["ms"])
        own = {"replicated": sgd, "sharded": sgd, "fsdp": fsdp}
        floors = {r["layout"]: r for r in rows if r["what"].startswith("floor")}
        assert set(floors) == set(LAYOUTS)
        assert floors["fsdp"]["what"] == "floor = FSDP2 SGD + draw"
        for layout, f in floors.items():
            assert f["ms"] >= own[layout]["ms"] and f["ratio_floor"] == 1.0
        for r in rows:
            if r["what"] == "noisy step":
                assert r["ratio_base_cpu"] == pytest.approx(r["cpu_ms"] / own[r["layout"]]["cpu_ms"])


def test_the_table_is_markdown_with_one_line_per_row(quick) -> None:
    result, stdout = quick
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| model | d | W |") and set(lines[1]) <= {"|", "-"}
    assert len(lines) == 2 + len(result["rows"])


@pytest.mark.parametrize(("args", "named"), [
    (["--worlds", "0"], "'0'"),
    (["--worlds", "1,x"], "'1,x'"),
    (["--clips", "ghost"], "'ghost'"),
    (["--models", "resnet18"], "'resnet18'"),
    (["--batch", "2", "--worlds", "3"], "--batch 2"),
    (["--steps", "1"], "--steps 1"),
    (["--backend", "nccl", "--device", "cpu"], "'nccl'"),
    (["--backend", "mpi"], "'mpi'"),
])
def test_bad_options_are_refused_by_name(args: list[str], named: str, capsys) -> None:
    """argparse's exit (status 2, a message naming the value), before any process is spawned."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    import scale

    with pytest.raises(SystemExit) as exit_:
        scale.parse(args)
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err
