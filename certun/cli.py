"""The ``certun`` command line: one subcommand per job, each defined next to the code it runs.

Each module in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommand and
sets ``func`` (taking the parsed args, returning an exit code). Bad input prints the error's message
on one line and exits 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from certun.errors import CertunError

_COMMAND_MODULES = (
    "certun.plan_cli",
    "certun.audit.cli",
    "certun.certificates.cli",
    "certun.demo",
)


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
        print(f"certun {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
