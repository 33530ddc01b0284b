"""The ``certun`` command line: one module of this package per subcommand.

Each module in ``COMMANDS`` exposes ``register(subparsers)``, which adds its subcommand and sets
``func`` (taking the parsed args, returning an exit code); the imports are static, so the command
line is what this file lists. A new subcommand is one new module here and one line in ``COMMANDS``.
Exit codes are the same for every subcommand: 0 ok, 1 failed verification, 2 usage error or unreadable
input. Bad input prints the error's message on one line and exits 2; no traceback reaches the user (set
``CERTUN_DEBUG=1`` to see one for an unexpected error).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from certun.certificates import printable
from certun.cli import audit, demo, inspect, plan, receipt, verify
from certun.cli._exit_codes import AUDIT_EXIT_CODES, EXIT_CODES
from certun.errors import CertunError

__all__ = ["COMMANDS", "EXIT_CODES", "build_parser", "main"]

#: The subcommand modules, in the order ``certun --help`` lists them.
COMMANDS = (plan, audit, verify, inspect, receipt, demo)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    from certun import __version__

    parser = argparse.ArgumentParser(
        prog="certun",
        description="Certified machine unlearning: plan noise, run unlearning, verify certificates.",
    )
    parser.add_argument("--version", action="version", version=f"certun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    for name, subparser in sub.choices.items():
        if not subparser.epilog:
            subparser.epilog = AUDIT_EXIT_CODES if name == "audit" else EXIT_CODES
    parser.epilog = EXIT_CODES
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CertunError as exc:
        print(f"certun {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # an unexpected error: one line, exit 2, traceback only on request
        if os.environ.get("CERTUN_DEBUG") == "1":
            raise
        print(f"certun {args.command}: error: {type(exc).__name__}: {_one_line(str(exc))} "
              "(set CERTUN_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


def _one_line(text: str) -> str:
    """``text`` on one line with non-printable characters escaped (it may quote a file's content)."""
    return printable(" ".join(text.split("\n")))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
