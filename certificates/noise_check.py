"""What a certificate must say about its noise source, and the sampler's tail residual recomputed.

The released bytes are covered only if the noise was drawn from an unguessable key and a sampler
whose distribution is the Gaussian up to a negligible total-variation residual. The certificate
records both in ``execution.noise``; this module checks the record against :data:`KNOWN_SOURCES`, the
table of noise sources certun ships (an unknown generator, sampler or key derivation FAILs, and key
bits, tail mass, ``max_abs_z`` and ``positional`` must be the table's), and against the mechanism: the
number of draws it makes and the residual ``pairs · tail_mass_per_pair`` (``pairs = draws · ⌈d/2⌉``
Box–Muller pairs) recomputed from d, T and the *table's* tail mass (never the record's), which must
stay below ``TAIL_SLACK · δ`` (the accountant's outputs carry a 1e-12 relative slack; the residual may
use a tenth of it). A noisy run must commit to its key (``randomness.seed_commitment``), with the key
scheme when the key came from the OS. Source: docs/theory.md#floating-point-and-randomness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from certun.certificates._commitment import COMMITMENT_SCHEME, KEY_COMMITMENT_SCHEME

__all__ = ["KNOWN_SOURCES", "MIN_KEY_BITS", "TAIL_SLACK", "USER_SEED_NOTE", "noise_draws", "noise_problems",
           "sampler_pairs", "table_residual"]

#: Fraction of δ the sampler's tail residual may take.
TAIL_SLACK = 1e-13
#: Fewest key bits that make the noise unguessable.
MIN_KEY_BITS = 128
#: What a key derived from a user seed is (verify WARNs).
USER_SEED_NOTE = ("the noise key came from a user seed: testing/audit only, not a secret key (anyone who guesses "
                  "the seed regenerates and subtracts the noise)")


#: The noise sources certun ships, keyed by (generator, sampler, key_derivation) as the backends record
#: them (:func:`certun.backends.noise.describe` and ``certun.backends.run_key.noise_record``), with
#: what is true of each: key bits, the sampler's misplaced mass per Box–Muller pair, the largest
#: |z| it returns and whether coordinate values depend only on (key, draw, position).
#: The shipped sampler's constants, written out here so that certificates never import the backends (the
#: backends import certificates; tests/test_verify_review.py checks them against ``noise.describe()``).
_KEY_BITS = 256
_TAIL_MASS_PER_PAIR = 2.0**-111
_MAX_ABS_Z = math.sqrt(258 * math.log(2)) * (1 + 2.0**-40)

KNOWN_SOURCES: Mapping[tuple[str, str, str], Mapping[str, Any]] = {
    ("chacha20-rfc8439", "box-muller-f64-u128", "hkdf-sha256 over certun.noise-key.v2"): {
        "key_bits": _KEY_BITS, "tail_mass_per_pair": _TAIL_MASS_PER_PAIR, "max_abs_z": _MAX_ABS_Z,
        "positional": True},
}


def table_residual(pairs: int, tail_mass_per_pair: float) -> float:
    """``pairs · tail_mass_per_pair`` rounded up to a float (the bound never understates the mass)."""
    exact = Fraction(int(pairs)) * Fraction(tail_mass_per_pair)
    value = float(exact)
    return value if Fraction(value) >= exact else math.nextafter(value, math.inf)


def noise_draws(variant: str, T: int, sigma0: float | None) -> int:
    """Standard-normal d-vectors the mechanism draws: one per noisy step, plus one for σ0 where it is used."""
    if variant == "retrain":
        return 0
    extra = 1 if sigma0 is not None and variant in ("model_clipping", "output_perturbation") else 0
    return int(T) + extra


def sampler_pairs(d: int, draws: int) -> int:
    """Box–Muller pairs over a run: ``draws · ⌈d/2⌉``."""
    return int(draws) * ((int(d) + 1) // 2)


def noise_problems(doc: Mapping[str, Any]) -> list[str]:
    """Every problem of a (schema-valid) certificate's noise record, one sentence each (``[]`` if none)."""
    m, ex = doc["mechanism"], doc["execution"]
    noise = ex.get("noise")
    variant = m["variant"]
    if noise is None:
        if variant == "retrain":
            return []
        return ["execution.noise is absent: the certificate does not record how its noise was generated. "
                "Certificates made before certun recorded it drew noise from torch's or numpy's generator seeded "
                "with at most 63 bits (torch's CPU generator keeps 32), which can be brute-forced and subtracted, "
                "and from a float32 sampler with a truncated tail: the released model is not covered. Run the "
                "unlearning again with this version (docs/theory.md#floating-point-and-randomness)"]
    problems = []
    source = (noise["generator"], noise["sampler"], noise["key_derivation"])
    known = KNOWN_SOURCES.get(source)
    if known is None:
        return [f"execution.noise names an unknown noise source (generator {noise['generator']!r}, sampler "
                f"{noise['sampler']!r}, key_derivation {noise['key_derivation']!r}); certun certifies only "
                f"{[list(k) for k in KNOWN_SOURCES]} (docs/theory.md#floating-point-and-randomness)"]
    for name, value in known.items():
        if noise[name] != value:
            problems.append(f"execution.noise.{name} is {noise[name]!r} but {source[0]} with {source[1]} has "
                            f"{value!r}")
    if noise["key_bits"] < MIN_KEY_BITS:
        problems.append(f"execution.noise.key_bits is {noise['key_bits']}: an unguessable key needs at least "
                        f"{MIN_KEY_BITS} bits")
    problems.extend(_commitment_problems(doc, noise["key_origin"]))
    draws = noise_draws(variant, m["T"], m.get("sigma0"))
    if noise["draws"] != draws:
        problems.append(f"execution.noise.draws is {noise['draws']} but the mechanism draws {draws} noise vectors")
    pairs = sampler_pairs(ex["d"], draws)
    if noise["pairs"] != pairs:
        problems.append(f"execution.noise.pairs is {noise['pairs']} but d={ex['d']} and {draws} draws make {pairs}")
    bound = table_residual(pairs, known["tail_mass_per_pair"])
    if noise["tail_residual"] < bound * (1.0 - 1e-9):
        problems.append(f"execution.noise.tail_residual {noise['tail_residual']!r} understates the recomputed "
                        f"{pairs} pairs x {known['tail_mass_per_pair']!r} = {bound!r}")
    limit = TAIL_SLACK * float(doc["claim"]["delta"])
    if bound > limit:
        problems.append(f"the sampler's tail residual {bound:.3g} exceeds {TAIL_SLACK:g}·delta = {limit:.3g}: "
                        "the claimed delta does not cover the sampler's misplaced probability mass")
    return problems


def _commitment_problems(doc: Mapping[str, Any], key_origin: str) -> list[str]:
    """A noisy run must commit to its key; a key from the OS is committed with the key scheme (the
    integer-seed scheme means the noise came from a user seed, whatever ``key_origin`` says)."""
    randomness = doc.get("randomness") or {}
    commitment = randomness.get("seed_commitment")
    if commitment is None:
        return ["randomness.seed_commitment is null on a noisy run: nothing binds the run to the key its noise "
                "was drawn from (certun commits every run's key)"]
    if key_origin == "os" and commitment["scheme"] != KEY_COMMITMENT_SCHEME:
        return [f"execution.noise.key_origin is 'os' but randomness.seed_commitment uses {commitment['scheme']!r}, "
                f"the scheme of an integer user seed ({COMMITMENT_SCHEME}); an OS key is committed with "
                f"{KEY_COMMITMENT_SCHEME}"]
    return []
