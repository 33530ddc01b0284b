"""``certun inspect``: a human summary of a certificate, without verifying it."""

from __future__ import annotations

import argparse
from typing import Any

from certun.certificates import load_certificate, printable

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``inspect`` subcommand."""
    p = subparsers.add_parser("inspect", help="print a human summary of a certificate (no verification)",
                              epilog="exit codes: 0 printed, 2 usage error or unreadable certificate")
    p.add_argument("certificate", help="certificate file (JSON)")
    p.set_defaults(func=_inspect)


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
