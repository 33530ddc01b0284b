"""What a certificate must say about its noise source, and the sampler's tail residual recomputed.

The released bytes are covered only if the noise was drawn from an unguessable key and a sampler
whose distribution is the Gaussian up to a negligible total-variation residual. The certificate
records both in ``execution.noise``; this module checks the record against the mechanism: at least
128 key bits, the number of draws the mechanism makes, and the residual ``pairs · tail_mass_per_pair``
(``pairs = draws · ⌈d/2⌉`` Box–Muller pairs) recomputed from d and T, which must stay below
``TAIL_SLACK · δ`` (the accountant's outputs carry a 1e-12 relative slack; the residual may use a
tenth of it). Source: docs/theory.md#floating-point-and-randomness.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["MIN_KEY_BITS", "TAIL_SLACK", "USER_SEED_NOTE", "noise_draws", "noise_problems", "sampler_pairs"]

#: Fraction of δ the sampler's tail residual may take.
TAIL_SLACK = 1e-13
#: Fewest key bits that make the noise unguessable.
MIN_KEY_BITS = 128
#: What a key derived from a user seed is (verify WARNs).
USER_SEED_NOTE = ("the noise key came from a user seed: testing/audit only, not a secret key (anyone who guesses "
                  "the seed regenerates and subtracts the noise)")


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
    if noise["key_bits"] < MIN_KEY_BITS:
        problems.append(f"execution.noise.key_bits is {noise['key_bits']}: an unguessable key needs at least "
                        f"{MIN_KEY_BITS} bits")
    draws = noise_draws(variant, m["T"], m.get("sigma0"))
    if noise["draws"] != draws:
        problems.append(f"execution.noise.draws is {noise['draws']} but the mechanism draws {draws} noise vectors")
    pairs = sampler_pairs(ex["d"], draws)
    if noise["pairs"] != pairs:
        problems.append(f"execution.noise.pairs is {noise['pairs']} but d={ex['d']} and {draws} draws make {pairs}")
    bound = pairs * float(noise["tail_mass_per_pair"])
    if noise["tail_residual"] < bound * (1.0 - 1e-9):
        problems.append(f"execution.noise.tail_residual {noise['tail_residual']!r} understates the recomputed "
                        f"{pairs} pairs x {noise['tail_mass_per_pair']!r} = {bound!r}")
    residual = max(bound, float(noise["tail_residual"]))
    limit = TAIL_SLACK * float(doc["claim"]["delta"])
    if residual > limit:
        problems.append(f"the sampler's tail residual {residual:.3g} exceeds {TAIL_SLACK:g}·delta = {limit:.3g}: "
                        "the claimed delta does not cover the sampler's misplaced probability mass")
    return problems
