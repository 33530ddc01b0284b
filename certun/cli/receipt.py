"""``certun receipt verify``: check a data subject's Merkle receipt against a verified certificate.

The certificate is verified first, with the same options as ``certun verify``; strings taken from files
are printed escaped. See docs/certificates.md#exit-codes.
"""

from __future__ import annotations

import argparse
from typing import Any

from certun.certificates import MerkleReceipt, load_certificate, printable, read_bytes, strict_loads, verify_receipt
from certun.cli._exit_codes import EXIT_CODES
from certun.cli.verify import add_verification_options, verified_report_and_bytes
from certun.errors import InvalidParameterError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``receipt`` subcommand (one action, ``verify``)."""
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
    add_verification_options(q)
    q.set_defaults(func=_receipt_verify)


def _receipt_verify(args: argparse.Namespace) -> int:
    receipt = MerkleReceipt.from_dict(strict_loads(read_bytes(args.receipt, what="receipt")))
    report, data = verified_report_and_bytes(args)
    if not report.ok:
        print(report)
        print("FAILED: the certificate does not verify, so no receipt can be checked against it")
        return 1
    cert = load_certificate(data)  # the bytes that were verified, never a second read of the file
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
