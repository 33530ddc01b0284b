"""``certun demo`` options a user really passes: refused in one line before any data is read or model trained."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import certun.demo as demo
import certun.demo.data
from certun.cli import build_parser, main
from certun.demo import DemoConfig
from certun.errors import InvalidParameterError


@pytest.fixture
def no_training(monkeypatch):
    """Make reading data (the first expensive step) a test failure: options must be refused before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the demo started working before refusing its options")

    monkeypatch.setattr(certun.demo.data, "load_data", refuse)
    monkeypatch.setattr(certun.demo.data, "make_splits", refuse)


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["demo", "--quick", "--no-progress", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("option", "value", "valid"), [
    ("--delta", "0.7", "[1e-300, 0.5]"), ("--delta", "1e-301", "[1e-300, 0.5]"),
    ("--eps", "150", "(0, 100]"), ("--eps", "nan", "(0, 100]"), ("--C0", "1e-40", "[1e-30, 1e+30]"),
])
def test_a_target_the_accountant_refuses_fails_before_training(capsys, tmp_path, no_training, option, value, valid):
    """``certun demo --delta 0.7`` used to train for minutes and then fail in plan; now: exit 2, one line."""
    out = tmp_path / "out"
    code, err = _run(capsys, option, value, "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{option.lstrip('-')}=" in err and valid in err
    assert not out.exists()


def test_output_perturbation_refuses_T(capsys, tmp_path, no_training):
    """--T means nothing for output perturbation (one noise draw): refused, not dropped."""
    code, err = _run(capsys, "--variant", "output_perturbation", "--T", "5", "--out", str(tmp_path / "o"))
    assert code == 2 and "T=5" in err and "output_perturbation" in err


def test_out_that_is_an_existing_file_is_refused_before_any_work(capsys, tmp_path, no_training):
    """``--out results.txt`` (an existing file): a clear one-line error, the file untouched, no traceback."""
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    code, err = _run(capsys, "--out", str(existing))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "out=" in err and "existing file" in err
    assert existing.read_text() == "keep me"


def test_out_that_cannot_be_created_is_refused_before_any_work(capsys, tmp_path, no_training):
    """A folder under a file cannot be created (even as root): exit 2 naming --out, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _run(capsys, "--out", str(blocker / "sub" / "dir"))
    assert code == 2 and err.count("\n") == 1 and "out=" in err and "Traceback" not in err


def test_out_reuses_a_folder_and_replaces_only_the_demos_files(tmp_path):
    """An existing folder: the demo's four outputs are removed (rewritten later); other files stay."""
    (tmp_path / "certificate.json").write_text("{}")
    (tmp_path / "report.md").write_text("old")
    (tmp_path / "my-notes.txt").write_text("mine")
    assert demo.prepare_out_dir(tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-notes.txt"]


def test_out_with_a_folder_where_an_output_file_goes_is_refused(tmp_path):
    """``out/certificate.json`` being a folder would fail after training: refused up front."""
    (tmp_path / "certificate.json").mkdir()
    with pytest.raises(InvalidParameterError) as info:
        demo.prepare_out_dir(tmp_path)
    assert info.value.name == "out" and "certificate.json" in str(info.value)


def test_demo_config_takes_numpy_scalars_and_the_accountant_ranges():
    """Real numbers may be numpy scalars; eps and delta are checked against the accountant's domain."""
    config = DemoConfig(eps=np.float32(2.0), delta=np.float64(1e-6), C0=np.float32(3.0))
    assert config.eps == 2.0
    for kwargs, name in ((dict(delta=0.7), "delta"), (dict(eps=101.0), "eps"), (dict(lam=True), "lam"),
                         (dict(C1=float("inf")), "C1"), (dict(forget_fraction=np.float64(1.0)), "forget_fraction")):
        with pytest.raises(InvalidParameterError) as info:
            DemoConfig(**kwargs)
        assert info.value.name == name


def test_demo_help_states_ranges_and_explains_every_option():
    """--help: eps in (0, 100], delta in [1e-300, 0.5], what --out does; every option has help text."""
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["demo"]
    text = parser.format_help()
    assert "(0, 100]" in text and "[1e-300, 0.5]" in text and "existing file" in text
    for action in parser._actions:
        assert action.help and action.help.strip(), action.dest
    choices = {a.dest: a.choices for a in parser._actions}
    for dest in ("variant", "data", "model", "center", "clip"):
        assert choices[dest], dest
