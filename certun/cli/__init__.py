"""The ``certun`` command line: one subcommand per job, each defined next to the code it runs.

Each module in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommand and
sets ``func`` (taking the parsed args, returning an exit code). Exit codes are the same for every
subcommand: 0 ok, 1 failed verification, 2 usage error or unreadable input. Bad input prints the
error's message on one line and exits 2; no traceback reaches the user (set ``CERTUN_DEBUG=1`` to see
one for an unexpected error).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from certun.errors import CertunError

_COMMAND_MODULES = (
    "certun.plan_cli",
    "certun.audit.cli",
    "certun.certificates.cli",
    "certun.demo",
)


#: The exit codes of every subcommand (docs/certificates.md#exit-codes).
EXIT_CODES = "exit codes: 0 ok, 1 failed verification, 2 usage error or unreadable input"
_AUDIT_EXIT_CODES = ("exit codes: 0 ok, 1 a claim was refuted, 2 usage error or unreadable input, "
                     "3 inconclusive (a control went undetected)")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    from certun import __version__

    parser = argparse.ArgumentParser(
        prog="certun",
        description="Certified machine unlearning: plan noise, run unlearning, verify certificates.",
    )
    parser.add_argument("--version", action="version", version=f"certun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for name, subparser in sub.choices.items():
        if not subparser.epilog:
            subparser.epilog = _AUDIT_EXIT_CODES if name == "audit" else EXIT_CODES
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
    from certun.certificates.report import printable

    return printable(" ".join(text.split("\n")))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
