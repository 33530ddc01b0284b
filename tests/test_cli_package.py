"""The command line is one package with static imports: what ``certun --help`` lists is what
``certun.cli.COMMANDS`` names, and starting it imports no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import certun.cli as cli

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["plan", "audit", "verify", "inspect", "receipt", "demo"]


def test_the_subcommands_are_the_modules_of_the_package():
    """One module per subcommand, named after it, in the order the help lists them."""
    assert [m.__name__ for m in cli.COMMANDS] == [f"certun.cli.{name}" for name in SUBCOMMANDS]
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == SUBCOMMANDS


def test_no_subcommand_is_loaded_by_string():
    """Neither importlib nor __import__ in the CLI package: a reader finds every subcommand by its import."""
    for path in sorted((ROOT / "certun" / "cli").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.alias)}
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "importlib" not in names and "import_module" not in names and "__import__" not in calls, path


def test_every_subcommand_help_ends_with_its_exit_codes(capsys):
    """The exit codes stay documented in every subcommand's help (0 ok, 1 failed, 2 usage)."""
    for name in SUBCOMMANDS:
        try:
            cli.main([name, "--help"])
        except SystemExit as exc:
            assert exc.code == 0
        out = capsys.readouterr().out
        assert "exit codes: 0" in out and "2 usage error" in out, name


def test_starting_the_cli_and_the_demo_imports_no_torch():
    """``certun plan`` and ``certun verify`` must work without torch: the CLI and the demo import it on use."""
    code = "import sys, certun.cli, certun.demo; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
