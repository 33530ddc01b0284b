"""`certun audit`: one line per case, JSON output, and exit codes 0 (ok), 1 (refuted), 3 (no power), 2 (bad input)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from certun.accountant import plan
from certun.audit import under_noised
from certun.cli import main

torch.set_num_threads(1)


def test_quick_prints_one_line_per_case_and_exits_zero(capsys):
    """--quick passes the correct cases, detects both controls and exits 0."""
    assert main(["audit", "--quick", "--N", "20000", "--seed", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + 5 + 1  # header, five cases, summary
    verdicts = {line.split()[0]: line.split()[-1] for line in lines[1:-1]}
    assert verdicts == {"gc": "pass", "gc/under-noised": "detected", "mc": "pass", "mc/reused-noise": "detected",
                        "op": "pass"}
    assert lines[-1].startswith("ok:")


def test_json_report(capsys):
    """--json gives the report: seed, exit code and per-case ε̂ with confidence and claim."""
    assert main(["audit", "--variant", "model_clipping", "--C2", "1", "--sigma", "0.5", "--N", "5000",
                 "--seed", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seed"] == 1 and report["exit_code"] == 0
    labels = [c["label"] for c in report["cases"]]
    assert labels == ["model_clipping", "model_clipping/reused-noise"]
    for case in report["cases"]:
        assert {"eps_lower", "confidence", "claimed_eps", "n_runs", "verdict"} <= set(case)


def test_false_claim_exits_one(tmp_path, capsys):
    """A schedule whose claim is false (σ from ε_R = ε) is refuted as a real case: exit 1."""
    path = tmp_path / "lie.json"
    path.write_text(json.dumps(under_noised(plan(1.0, 1e-5, 1.0, 1.0, gamma=0.1, T=10)).to_dict()))
    assert main(["audit", "--schedule", str(path), "--no-controls", "--N", "20000", "--seed", "0"]) == 1
    assert "REFUTED" in capsys.readouterr().out


def test_too_few_runs_exit_three(capsys):
    """With 20 runs per start the controls cannot be detected: the audit says so and exits 3."""
    assert main(["audit", "--quick", "--N", "20", "--seed", "0"]) == 3
    assert "INCONCLUSIVE" in capsys.readouterr().out


def test_bad_input_exits_two_without_traceback():
    """A bad confidence exits 2 with the offending value and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "certun", "audit", "--quick", "--confidence", "1.5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "confidence=1.5 is invalid" in proc.stderr and "Traceback" not in proc.stderr


def test_canary_mode(capsys):
    """--canary runs the one-run canary audit: the real unlearning passes, skipped unlearning is detected."""
    assert main(["audit", "--canary", "--T", "10", "--gamma", "0.1", "--C0", "10", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "pass" in out and "detected" in out


def test_a_control_the_backend_refused_is_not_run_and_not_detected():
    """A control the backend refused to run showed nothing about the audit's power: its verdict is 'not run',
    it never counts as detected, and the report is inconclusive (exit 3), saying so."""
    from certun.audit.suite import AuditReport, Case, CaseResult
    from certun.cli.audit import format_report

    gc = plan(1.0, 1e-5, 1.0, 1.0, gamma=0.1, T=10)
    control = Case("gc/under-noised", under_noised(gc), control="sigma from eps_R = eps")
    refused = CaseResult(control, None, refusal="claimed eps 1 < recomputed 7.08")
    assert not refused.detected and not refused.ok and refused.verdict.startswith("not run")
    report = AuditReport((refused,), seed=0)
    assert report.powerless and not report.refuted and report.exit_code == 3
    text = format_report(report)
    assert "not run" in text and "detected" not in text.replace("not detected", "")
    assert "INCONCLUSIVE" in text.splitlines()[-1] and "not run" in text.splitlines()[-1]
    assert report.to_dict()["cases"][0]["verdict"].startswith("not run")
