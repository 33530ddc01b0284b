"""`certun plan` prints a table or JSON and exits non-zero with a one-line error on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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


def _plan_parser():
    import argparse

    from certun.cli import build_parser

    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["plan"]


def test_plan_help_states_the_real_ranges_and_every_option_is_explained():
    """--help gives eps in (0, 100], delta in [1e-300, 0.5]; every option has help, set-valued ones choices."""
    parser = _plan_parser()
    text = parser.format_help()
    assert "(0, 100]" in text and "[1e-300, 0.5]" in text and "(0, 1)" not in text
    for action in parser._actions:
        assert action.help and action.help.strip(), action.dest
    choices = {a.dest: a.choices for a in parser._actions}
    assert set(choices["mode"]) == {"noise_after_projection", "clip_noise_before_projection"}
    assert choices["variant"] and choices["method"]


@pytest.mark.parametrize("extra", [["--T", "5"], ["--sigma", "2"], ["--gamma", "0.1"], ["--lam", "0.5"],
                                   ["--C1", "1"], ["--C2", "1"], ["--max-T", "9"], ["--sigma0", "1"],
                                   ["--mode", "noise_after_projection"]])
def test_plan_refuses_options_the_variant_does_not_use(capsys, extra):
    """``--variant output_perturbation --T 5`` used to drop --T silently; now it exits 2 naming the option."""
    code = main(["plan", "--eps", "1", "--delta", "1e-5", "--C0", "10", "--variant", "output_perturbation",
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    name = extra[0].lstrip("-").replace("-", "_")
    assert f"{name}=" in err and "output_perturbation" in err


def test_output_perturbation_prints_no_contradictory_closed_form_line(capsys):
    """At eps = 1 the classic formula is invalid: no 'not available' row beside a note quoting its value."""
    assert main(["plan", "--eps", "1", "--delta", "1e-5", "--C0", "10", "--variant", "output_perturbation"]) == 0
    out = capsys.readouterr().out
    assert "not available" not in out and "valid only for eps < 1" in out
    assert main(["plan", "--eps", "0.5", "--delta", "1e-5", "--C0", "10", "--variant", "output_perturbation"]) == 0
    assert "closed_form / exact" in capsys.readouterr().out


def test_plan_table_states_T_rule_and_the_cost_of_many_steps(capsys):
    """Without --gamma, T = C0/(gamma*C1) = 10,000: the table says which rule chose T and what it costs."""
    assert main(["plan", "--eps", "1", "--delta", "1e-5", "--C0", "10", "--C1", "1"]) == 0
    out = capsys.readouterr().out
    assert "T rule: T = C0/(gamma*C1)" in out
    assert "T = 10000 noisy steps" in out and "set gamma or T explicitly" in out
