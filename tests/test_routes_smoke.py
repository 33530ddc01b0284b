"""Smoke test of ``benchmarks/routes.py --quick``: every route runs on every forget set and ends in a
certificate that verifies; the table has a row per route.

No accuracy or timing is asserted (two epochs on 300 digits say nothing about utility); what is checked
is the structure, the guarantees the certificates claim, that each route's per-epoch replay is the
released model, and that an unverified certificate is reported and fails the run.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPT = BENCHMARKS / "routes.py"

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

ROUTES = ("gradient clipping", "model clipping", "output perturbation", "retrain from scratch",
          "retrain from public weights", "SISA")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    """Run ``routes.py --quick --json`` once in a subprocess; its JSON and its stdout."""
    path = tmp_path_factory.mktemp("routes") / "routes.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(path.read_text()), proc.stdout


@pytest.fixture
def routes_module(monkeypatch):
    """``benchmarks/routes.py`` and ``routes_run.py`` imported in-process."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import routes
    import routes_run

    return routes, routes_run


def test_every_route_runs_on_every_forget_set_and_verifies(quick) -> None:
    results, _ = quick
    assert results["scenarios"] == ["random10", "one"]
    for scenario in results["scenarios"]:
        runs = [r for r in results["runs"] if r["scenario"] == scenario]
        assert sorted(r["route"] for r in runs) == sorted(ROUTES)
        assert all(r["verified"] is True for r in runs)
        assert all(r["grads"] > 0 and r["cpu_s"] >= 0 and 0 <= r["acc_final"] <= 1 for r in runs)
    one = [r for r in results["runs"] if r["scenario"] == "one"]
    assert all(r["n_retain"] == results["n"]["train"] - 1 for r in one)


def test_guarantees_are_the_target_for_noisy_routes_and_exact_otherwise(quick) -> None:
    results, _ = quick
    for run in results["runs"]:
        if run["route"] in ROUTES[:3]:
            assert 0 < run["eps"] <= 1.0 and 0 < run["delta"] <= 1e-5, run["route"]
            assert run["acc_start"] is not None  # accuracy right after the noisy phase
        else:
            assert (run["eps"], run["delta"]) == (0.0, 0.0), run["route"]


def test_the_replayed_curve_ends_at_the_released_model(quick) -> None:
    """The per-epoch accuracies come from a replay: it must end exactly where the released model is."""
    results, _ = quick
    curved = [r for r in results["runs"] if r["route"] != "SISA"]
    epochs = results["settings"]["epochs"]
    for run in curved:
        assert len(run["curve_acc"]) == epochs + 1 and run["replay_diff"] == 0.0, run["route"]
        assert run["curve_acc"][-1] == run["acc_final"]
        assert run["curve_grads"][-1] == run["grads"]


def test_markdown_has_a_row_per_route_and_forget_set(quick) -> None:
    _, stdout = quick
    rows = [line for line in stdout.splitlines() if line.startswith("| ") and "verify" in line]
    assert len(rows) == 2 * len(ROUTES)
    for route in ROUTES:
        assert sum(line.startswith(f"| {route} |") for line in rows) == 2
    assert stdout.count("| route | guarantee") == 2


def test_an_unverified_certificate_is_reported_and_fails_the_run(quick, routes_module, monkeypatch, capsys) -> None:
    routes, _ = routes_module
    results = copy.deepcopy(quick[0])
    results["runs"][-1]["verified"] = False
    monkeypatch.setattr(routes, "run", lambda *a, **k: copy.deepcopy(results))
    assert routes.main(["--quick"]) == 1
    captured = capsys.readouterr()
    assert "certificate did NOT verify: SISA" in captured.err
    assert "0/1 verify" in captured.out


def test_verified_rejects_another_model_and_a_missing_certificate(routes_module) -> None:
    """The helper behind the 'verify' column: True for the released model only."""
    _, routes_run = routes_module
    import certun

    torch.manual_seed(0)
    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:10], y[:10]), batch_size=5)
    released = certun.unlearn(torch.nn.Linear(3, 2), loader, certun.plan(1.0, 1e-5, variant="retrain"),
                              model_factory=lambda: torch.nn.Linear(3, 2), finetune_epochs=1, progress=False,
                              loss_fn=torch.nn.functional.cross_entropy, retain_ids=list(range(10)),
                              forget_ids=[10, 11])
    assert routes_run.verified(released.certificate, released.model)
    other = copy.deepcopy(released.model)
    with torch.no_grad():
        other.bias.add_(1e-3)
    assert not routes_run.verified(released.certificate, other)
    assert not routes_run.verified(None, released.model)
