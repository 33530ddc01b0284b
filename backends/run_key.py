"""The run's noise key: a secret (fresh from the OS, or a user seed for tests and audits) bound to every run input.

``key = derive_key(secret, context)`` where ``context`` is the RFC 8785 canonical JSON of every input
of the noisy phase (starting-model digest, centre digest, retain/forget fingerprints, schedule, clip
mode, post-processing mode, noise mode, buffers/frozen modes, unlearned parameter names, dtype,
backend). The same secret with any other input gives independent noise, so two released models never
share a draw that their difference would cancel. The noiseless fine-tuning options are left out on
purpose: fine-tuning runs after the single rounding, on retain data only, so two releases that differ
only in it are jointly a post-processing of one noisy iterate (nothing cancels), and leaving them out
lets an owner replay the noisy phase of a fine-tuned release (the demo's per-epoch curve does).
Draw ``t`` of the generator is noisy step ``t``; the σ0 draw (model clipping's initial noise, output
perturbation) is draw ``T``. Before any work the run is refused if the sampler's tail residual could
exceed ``TAIL_SLACK · δ``.
Source: docs/theory.md#floating-point-and-randomness.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from certun.accountant.schedule import Schedule, Variant
from certun.backends import noise
from certun.backends._options import opening_secret
from certun.certificates.canonical import canonical_bytes
from certun.certificates.noise_check import TAIL_SLACK, noise_draws, sampler_pairs
from certun.certificates.provenance import resolve_seed
from certun.errors import InvalidParameterError

__all__ = ["KEY_DERIVATION", "RunKey", "check_tail", "draw_index", "noise_record", "run_context", "run_key"]

#: Name of the context encoding, recorded in the certificate (``execution.noise.key_derivation``).
KEY_DERIVATION = "certun.noise-key.v1"


@dataclass(frozen=True, repr=False)
class RunKey:
    """The secret of a run, where it came from, and the key derived from it and the run's context."""

    secret: bytes
    origin: str  # "os" or "user_seed"
    key: bytes
    seed: int | None = None

    def __repr__(self) -> str:  # never print key material
        return f"RunKey(origin={self.origin!r}, key=<{8 * len(self.key)} bits>)"

    def aux_seed(self) -> int:
        """Seed for the run's *other* randomness (dropout, re-initialisation), derived from but unlike the key."""
        return int.from_bytes(hashlib.sha256(b"certun.aux-seed.v2\x00" + self.key).digest()[:8], "little") >> 1

    def generator(self) -> noise.NoiseGenerator:
        """The run's noise generator."""
        return noise.NoiseGenerator(self.key)


def run_context(*, model_before: str, center: str | None, retain_fingerprint: bytes, forget_fingerprint: bytes,
                schedule: Schedule, options: Mapping[str, Any], unlearned_parameters: tuple[str, ...] | list[str],
                dtype: str, backend: str) -> bytes:
    """Canonical bytes (RFC 8785) of every input of the run, the context the key is derived with."""
    return canonical_bytes({
        "derivation": KEY_DERIVATION,
        "backend": backend,
        "model_before": model_before,
        "center": center,
        "retain": retain_fingerprint.hex(),
        "forget": forget_fingerprint.hex(),
        "schedule": schedule.to_dict(),
        "options": dict(options),
        "unlearned_parameters": list(unlearned_parameters),
        "dtype": dtype,
    })


def run_key(seed: int | Mapping[str, Any] | None, context: bytes) -> RunKey:
    """A fresh OS key (``seed=None``), the key of a user seed (testing/audit only), or the key of a previous
    run's opening (an audit replay of that run), always bound to ``context``."""
    if seed is None:
        secret, origin, value = noise.fresh_key(), "os", None
    elif isinstance(seed, Mapping):
        secret, origin, value = opening_secret(seed)
    else:
        value = resolve_seed(seed)
        secret, origin = noise.seed_secret(value), "user_seed"
    return RunKey(secret=secret, origin=origin, key=noise.derive_key(secret, context), seed=value)


def draw_index(schedule: Schedule, step: int | None) -> int:
    """The generator draw of noisy step ``step``; ``None`` for the σ0 draw (index ``T``)."""
    return schedule.T if step is None else step


def _draws(schedule: Schedule) -> int:
    sigma0 = schedule.sigma0 if schedule.variant in (Variant.MODEL_CLIPPING, Variant.OUTPUT_PERTURBATION) else None
    return noise_draws(schedule.variant.value, schedule.T, sigma0)


def check_tail(schedule: Schedule, d: int) -> float:
    """The sampler's tail residual over the run; refuses (before any work) one above ``TAIL_SLACK · δ``."""
    pairs = sampler_pairs(d, _draws(schedule))
    residual = float(noise.tail_residual(pairs))
    limit = TAIL_SLACK * schedule.target.delta
    if residual > limit:
        raise InvalidParameterError(
            "schedule", f"<delta {schedule.target.delta:g} with d={d} and T={schedule.T}>",
            f"a delta of at least {residual / TAIL_SLACK:.3g}: the sampler may misplace {residual:.3g} of probability "
            f"mass over {pairs} Box-Muller pairs, more than {TAIL_SLACK:g}·delta "
            "(docs/theory.md#floating-point-and-randomness)")
    return residual


#: The fields of :func:`certun.backends.noise.describe` the certificate's closed ``execution.noise`` holds.
_DESCRIBED = ("generator", "key_bits", "sampler", "max_abs_z", "tail_mass_per_pair", "positional")


def noise_record(schedule: Schedule, d: int, key: RunKey) -> dict[str, Any]:
    """``execution.noise`` of the certificate: generator, key bits, sampler, key origin, draws, pairs, residual."""
    described = noise.describe()
    record: dict[str, Any] = {name: described[name] for name in _DESCRIBED}
    bound = record["max_abs_z"]
    record["max_abs_z"] = None if bound is None or not math.isfinite(float(bound)) else float(bound)
    record["key_bits"] = int(record["key_bits"])
    record["tail_mass_per_pair"] = float(record["tail_mass_per_pair"])
    record["positional"] = bool(record["positional"])
    kdf = described.get("key_derivation")
    draws = _draws(schedule)
    pairs = sampler_pairs(d, draws)
    return {**record, "key_origin": key.origin,
            "key_derivation": f"{kdf} over {KEY_DERIVATION}" if kdf else KEY_DERIVATION,
            "draws": draws, "pairs": pairs, "tail_residual": float(noise.tail_residual(pairs))}
