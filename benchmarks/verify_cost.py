"""Worst-case cost of ``certun verify``: certificates built to be slow, at the documented limits.

Prints one row per attack: the certificate's size and the wall time of ``verify()``. Each attack
sits at a limit of docs/certificates.md ("Threat model", cost limits): T at ``MAX_VERIFY_T`` with the
claim set to the float64 guarantee (so the exact mpmath path runs), a 1 MiB per-step schedule, and a
100 kB ``proofValue``. Run: ``python benchmarks/verify_cost.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import certificates_fixtures as fx

from certun.accountant import Guarantee, Schedule, Variant, guarantee
from certun.certificates import canonical_bytes, verify
from certun.certificates._verify import MAX_VERIFY_T


def _near_tie(T: int, per_step: bool) -> dict:
    """A gradient-clipping certificate with T steps whose claim equals the float64 guarantee."""
    base = Schedule(variant=Variant.GRADIENT_CLIPPING, T=T, C0=1.0, C1=10.0, lam=0.0, gammas=(1e-3,) * T,
                    sigmas=(1.65,) * T, target=Guarantee(1.0, 1e-5), achieved=Guarantee(1.0, 1e-5))
    g = guarantee(base)
    cert = fx.certificate()
    m = cert["mechanism"]
    m.update(T=T, sigma=None if per_step else 1.65, sigmas=[1.65] * T if per_step else None,
             gamma=None if per_step else 1e-3, gammas=[1e-3] * T if per_step else None,
             eps=g.eps, delta=1e-5, C0=1.0, C1=10.0, lam=0.0)
    cert["claim"].update(eps=g.eps, delta=1e-5)
    cert["execution"]["noisy_steps"] = T
    return fx.reseal(cert)


def main() -> None:
    huge_proof = fx.certificate(signed=True)
    huge_proof["proof"]["proofValue"] = "z" + "2" * 100_000
    rows = [
        (f"constant schedule, T = MAX_VERIFY_T = {MAX_VERIFY_T}, near tie", _near_tie(MAX_VERIFY_T, False)),
        ("per-step schedule, T = 20000, near tie", _near_tie(20_000, True)),
        ("T = 10**7 (refused before work)", _near_tie(10**7, False)),
        ("100 kB proofValue", huge_proof),
    ]
    print(f"{'attack':<62} {'bytes':>9} {'seconds':>8}  recompute")
    for name, cert in rows:
        size = len(canonical_bytes(cert))
        start = time.perf_counter()
        report = verify(cert)
        elapsed = time.perf_counter() - start
        print(f"{name:<62} {size:>9} {elapsed:>8.2f}  {report['recompute'].status.value}")


if __name__ == "__main__":
    main()
