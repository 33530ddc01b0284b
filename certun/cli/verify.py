"""``certun verify``, ``certun inspect`` and ``certun receipt verify``: certificates on the command line.

``verify`` prints one line per check (``PASS  name  detail``) and then ``OK`` or ``FAILED``; ``--json``
prints the same report as JSON. Exit codes, the same for every certun subcommand: 0 ok, 1 failed
verification, 2 usage error or unreadable input (one line on stderr, never a traceback).
``receipt verify`` first verifies the certificate with the same options as ``verify``. Strings taken
from files are printed escaped. See docs/certificates.md#exit-codes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

from certun.certificates.merkle import MerkleReceipt, verify_receipt
from certun.certificates.parse import load_certificate, strict_loads
from certun.certificates.parse import read_bytes as _read_bytes
from certun.certificates.report import printable
from certun.certificates.signing import load_public_key, load_public_key_file
from certun.certificates.verify import verify
from certun.errors import CertificateFormatError, InvalidParameterError

__all__ = ["register"]


def _limit(name: str, top: float = math.inf) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or value > top:
            valid = "finite and >= 0" if top == math.inf else f"in [0, {top:g}]"
            raise argparse.ArgumentTypeError(f"{name} must be {valid}, got {text!r}")
        return value

    return parse


EXIT_CODES = "exit codes: 0 ok, 1 failed verification, 2 usage error or unreadable input"


def _verification_options(p: argparse.ArgumentParser) -> None:
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
    data = _read_bytes(args.certificate)
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


def _report(args: argparse.Namespace, model: Any = None) -> Any:
    data, keys = _usable_inputs(args, model)
    return verify(data, model=model, trusted_keys=keys, chain_dir=args.chain, max_eps=args.max_eps,
                  max_delta=args.max_delta, require_signature=args.require_signature, strict=args.strict,
                  allow_uncovered=getattr(args, "allow_uncovered", False))


def register(subparsers: Any) -> None:
    """Add the ``verify``, ``inspect`` and ``receipt`` subcommands."""
    p = subparsers.add_parser(
        "verify", help="check a certificate: recompute its guarantee, digests, signature, chain",
        description="Run every check the inputs allow; exit 0 only if nothing failed and the guarantee "
                    "was recomputed and supports the claim.", epilog=EXIT_CODES)
    p.add_argument("certificate", help="certificate file (JSON)")
    p.add_argument("--model", metavar="FILE", help="the released model: .pt/.pth state_dict, .npz or .safetensors")
    p.add_argument("--allow-uncovered", action="store_true",
                   help="let the model file hold tensors the certificate does not cover (WARN instead of FAIL)")
    _verification_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_verify)

    p = subparsers.add_parser("inspect", help="print a human summary of a certificate (no verification)",
                              epilog="exit codes: 0 printed, 2 usage error or unreadable certificate")
    p.add_argument("certificate", help="certificate file (JSON)")
    p.set_defaults(func=_inspect)

    p = subparsers.add_parser("receipt", help="data-subject receipts: check a record is in a certified set")
    sub = p.add_subparsers(dest="receipt_command", metavar="ACTION", required=True)
    q = sub.add_parser("verify", help="check a Merkle receipt against a verified certificate",
                       description="Verify the certificate (same checks and options as certun verify), then "
                                   "check that the receipt proves its record is in the certificate's set and "
                                   "that the receipt's tree size is the set's recorded size. Exit 0 iff both hold.",
                       epilog=EXIT_CODES)
    q.add_argument("receipt", metavar="RECEIPT", help="receipt file (JSON), as handed to the data subject")
    q.add_argument("certificate", metavar="CERTIFICATE", help="certificate file (JSON)")
    q.add_argument("--set", choices=("forget", "retain"), default="forget", dest="which", metavar="{forget,retain}",
                   help="which set the record should be in (default: forget)")
    q.add_argument("--id", dest="record_id", metavar="ID", help="also require the receipt to be for this identifier")
    _verification_options(q)
    q.set_defaults(func=_receipt_verify)


def _verify(args: argparse.Namespace) -> int:
    report = _report(args, model=args.model)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report)
    return 0 if report.ok else 1


def _fmt(value: Any) -> str:
    return "-" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))


def _inspect(args: argparse.Namespace) -> int:
    cert = load_certificate(args.certificate)
    claim, m, ex, art = cert["claim"], cert["mechanism"], cert["execution"], cert["artifacts"]
    sigma = m["sigma"] if m["sigmas"] is None else f"{min(m['sigmas']):.6g}..{max(m['sigmas']):.6g} (varies)"
    gamma = m["gamma"] if m["gammas"] is None else f"{min(m['gammas']):.6g}..{max(m['gammas']):.6g} (varies)"
    lines = [
        f"certificate    {args.certificate}  (format_version {cert['format_version']}, issued {cert['issued_at']})",
        f"claim          ({_fmt(claim['eps'])}, {_fmt(claim['delta'])})-unlearning, variant {claim['variant']}"
        " [unverified: run certun verify]",
        f"mechanism      T={m['T']} sigma={_fmt(sigma)} gamma={_fmt(gamma)} C0={_fmt(m['C0'])} C1={_fmt(m['C1'])} "
        f"C2={_fmt(m['C2'])} lam={_fmt(m['lam'])} sigma0={_fmt(m['sigma0'])} mode={_fmt(m['mode'])} "
        f"method={m['method']}",
        f"accounting     {cert['accounting']['conversion']}; stored eps {_fmt(cert['accounting']['eps'])}, "
        f"alpha {_fmt(cert['accounting']['alpha'])}",
        f"execution      backend {ex['backend']}, clipping {_fmt(ex['clipping'])}, d={ex['d']} over "
        f"{len(ex['unlearned_parameters'])} tensors, {len(ex['frozen_parameters'])} frozen, "
        f"{ex['noisy_steps']} noisy steps, postprocess {_fmt(ex['postprocess'])}, {ex['device']}/{ex['dtype']}",
    ]
    for name in ("unlearned_model", "model_before", "center"):
        if art[name] is not None:
            value = art[name].get("root") or "committed (salted): " + art[name]["commitment"]
            lines.append(f"{name + ' ':<15}{value}")
    for name in ("retain_set", "forget_set"):
        s = art[name]
        lines.append(f"{name:<15}" + ("not recorded" if s is None else
                                     f"merkle root {s['merkle_root']} ({_fmt(s['size'])} records, ids: "
                                     f"{_fmt(s['id_scheme'])})"))
    commitment = cert["randomness"]["seed_commitment"]
    lines.append(f"seed           {'committed: ' + commitment['commitment'] if commitment else 'no commitment'}")
    noise = ex.get("noise")
    lines.append("noise          " + ("not recorded" if noise is None else
                                     f"{noise['generator']} ({noise['key_bits']}-bit key from "
                                     f"{'the OS' if noise['key_origin'] == 'os' else 'a user seed (testing only)'}), "
                                     f"sampler {noise['sampler']}, tail residual {noise['tail_residual']:.3g}"))
    chain = cert["chain"]
    lines.append(f"chain          sequence {chain['sequence']}, previous {_fmt(chain['previous'])}")
    proof = cert.get("proof")
    lines.append("signature      " + ("unsigned" if proof is None else
                                     f"{proof['cryptosuite']} by {proof['verificationMethod']} (not checked)"))
    lines.append(f"content digest {cert['content_digest']}")
    print("\n".join(printable(line) for line in lines))
    return 0


def _receipt_verify(args: argparse.Namespace) -> int:
    receipt = MerkleReceipt.from_dict(strict_loads(_read_bytes(args.receipt, what="receipt")))
    report = _report(args)
    if not report.ok:
        print(report)
        print("FAILED: the certificate does not verify, so no receipt can be checked against it")
        return 1
    cert = load_certificate(args.certificate)
    record = printable(repr(receipt.record_id))
    id_set = cert["artifacts"][f"{args.which}_set"]
    if id_set is None:
        print(f"FAILED: the certificate records no {args.which} set")
        return 1
    if id_set["scheme"] != receipt.scheme:
        print(f"FAILED: the receipt's tree scheme {printable(receipt.scheme)} is not the {args.which} set's "
              f"{id_set['scheme']}")
        return 1
    if id_set["size"] != receipt.tree_size:
        print(f"FAILED: the receipt is for a tree of {receipt.tree_size} records, but the certificate's {args.which} "
              f"set records size {id_set['size']!r}")
        return 1
    record_id: Any = args.record_id
    if record_id is not None and isinstance(receipt.record_id, int):
        try:
            record_id = int(record_id)
        except ValueError:
            raise InvalidParameterError("--id", record_id, "an integer, like the receipt's record_id") from None
    if verify_receipt(receipt, root=id_set["merkle_root"], record_id=record_id):
        print(f"OK: record {record} is in the certified {args.which} set of {receipt.tree_size} records "
              f"(root {id_set['merkle_root']}); the certificate verifies")
        return 0
    why = ("the receipt is for another record" if record_id is not None and str(record_id) != str(receipt.record_id)
           else "its audit path does not lead to the certificate's root")
    print(f"FAILED: record {record} is not proven to be in the certified {args.which} set: {why}")
    return 1
