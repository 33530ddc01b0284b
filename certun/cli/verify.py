"""``certun verify``: check a certificate on the command line.

Prints one line per check (``PASS  name  detail``) and then ``OK`` or ``FAILED``; ``--json`` prints the
same report as JSON. Exit codes, the same for every certun subcommand: 0 ok, 1 failed verification,
2 usage error or unreadable input (one line on stderr, never a traceback). ``certun receipt verify``
reuses this module's options and checks. Strings taken from files are printed escaped. See
docs/certificates.md#exit-codes.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from certun._validation import real_in_range
from certun.certificates import Report, load_public_key, load_public_key_file, printable, read_bytes, verify
from certun.cli._exit_codes import EXIT_CODES
from certun.errors import CertificateFormatError, InvalidParameterError

__all__ = ["add_verification_options", "register", "verified_report", "verified_report_and_bytes"]


def _limit(name: str, top: float | None = None) -> Any:
    """An argparse type for a policy limit: a finite number in [0, ``top``] (a bad one is a usage error)."""
    def parse(text: str) -> float:
        try:
            return real_in_range(name, float(text), low=0.0, high=top)
        except (ValueError, InvalidParameterError):
            valid = "a finite number >= 0" if top is None else f"a number in [0, {top:g}]"
            raise argparse.ArgumentTypeError(f"{name} must be {valid}, got {text!r}") from None

    return parse


def add_verification_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that verifies a certificate: keys, chain, policy limits, strictness."""
    p.add_argument("--trusted-key", metavar="KEY", action="append", default=[],
                   help="pinned Ed25519 public key: z6Mk..., did:key:... or PEM text; always a key, never a "
                        "file name (repeatable)")
    p.add_argument("--trusted-key-file", metavar="FILE", action="append", default=[],
                   help="file holding one pinned public key (repeatable)")
    p.add_argument("--require-signature", action="store_true",
                   help="fail an unsigned certificate even when no key is pinned")
    p.add_argument("--chain", metavar="DIR", help="folder with the previous certificates of the ledger")
    p.add_argument("--max-eps", type=_limit("--max-eps"), help="policy: fail if the claimed eps is larger")
    p.add_argument("--max-delta", type=_limit("--max-delta", top=1.0),
                   help="policy: fail if the claimed delta is larger")
    p.add_argument("--strict", action="store_true", help="every WARN is a FAIL")


def _usable_inputs(args: argparse.Namespace, model: Any) -> tuple[bytes, list[str]]:
    """Read what the command line names before verifying, so that a missing file, an unreadable key
    or a folder that is not one is a usage error (exit 2), not a failed check (exit 1)."""
    data = read_bytes(args.certificate)
    try:
        keys = [load_public_key(k) for k in args.trusted_key]
    except CertificateFormatError as exc:
        raise InvalidParameterError("--trusted-key", printable(str(exc))[:200], "an Ed25519 public key: z6Mk..., "
                                    "did:key:... or PEM text (key files go through --trusted-key-file)") from None
    keys += [load_public_key_file(f) for f in args.trusted_key_file]
    if model is not None and not os.path.isfile(model):
        raise CertificateFormatError(f"model file {printable(repr(model))} does not exist or is not a regular file")
    if args.chain is not None and not os.path.isdir(args.chain):
        raise CertificateFormatError(f"chain folder {printable(repr(args.chain))} is not a directory")
    return data, keys


def verified_report(args: argparse.Namespace, model: Any = None) -> Report:
    """Verify ``args.certificate`` with the options of :func:`add_verification_options`; an unusable input
    (missing file, bad key, a chain folder that is not one) raises a typed error (exit 2)."""
    return verified_report_and_bytes(args, model)[0]


def verified_report_and_bytes(args: argparse.Namespace, model: Any = None) -> tuple[Report, bytes]:
    """The report and the very bytes it verified (read once: a file swapped after the read changes nothing)."""
    data, keys = _usable_inputs(args, model)
    return verify(data, model=model, trusted_keys=keys, chain_dir=args.chain, max_eps=args.max_eps,
                  max_delta=args.max_delta, require_signature=args.require_signature, strict=args.strict,
                  allow_uncovered=getattr(args, "allow_uncovered", False)), data


def register(subparsers: Any) -> None:
    """Add the ``verify`` subcommand."""
    p = subparsers.add_parser(
        "verify", help="check a certificate: recompute its guarantee, digests, signature, chain",
        description="Run every check the inputs allow; exit 0 only if nothing failed and the guarantee "
                    "was recomputed and supports the claim.", epilog=EXIT_CODES)
    p.add_argument("certificate", help="certificate file (JSON)")
    p.add_argument("--model", metavar="FILE", help="the released model: .pt/.pth state_dict, .npz or .safetensors")
    p.add_argument("--allow-uncovered", action="store_true",
                   help="let the model file hold tensors the certificate does not cover (WARN instead of FAIL)")
    add_verification_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    report = verified_report(args, model=args.model)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    return 0 if report.ok else 1
