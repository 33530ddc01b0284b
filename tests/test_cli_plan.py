"""`certun plan` prints a table or JSON and exits non-zero with a one-line error on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

from certun.cli import main


def test_plan_table(capsys):
    """The table shows σ, T, the achieved guarantee and the closed-form σ with the ratio."""
    assert main(["plan", "--eps", "1", "--delta", "1e-5", "--C0", "1", "--C1", "10", "--lam", "50",
                 "--gamma", "1e-3", "--T", "47"]) == 0
    out = capsys.readouterr().out
    assert "0.6893879464" in out and "closed_form / exact" in out and "47" in out


def test_plan_json_keys(capsys):
    """--json prints schedule.to_dict() with the documented keys."""
    assert main(["plan", "--eps", "1", "--delta", "1e-5", "--C0", "1", "--C1", "10", "--lam", "0",
                 "--sigma", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("variant", "T", "sigma", "eps", "delta", "achieved_eps", "achieved_delta", "method"):
        assert key in d
    assert d["sigma"] == 2.0 and d["achieved_eps"] <= 1.0


def test_plan_model_clipping(capsys):
    """Model clipping via the CLI finds T from the recursion."""
    assert main(["plan", "--eps", "1", "--delta", "1e-5", "--C0", "30", "--C2", "1", "--sigma", "0.5",
                 "--variant", "model_clipping", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["T"] == 40


def test_plan_bad_input_exits_nonzero_without_traceback():
    """Bad input exits 2 with the error message and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "certun", "plan", "--eps", "1", "--delta", "2", "--C0", "1",
                           "--C1", "1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "delta=2.0 is invalid" in proc.stderr
    assert "Traceback" not in proc.stderr
