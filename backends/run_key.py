"""The run's noise key: a secret (fresh from the OS, or a user seed for tests and audits) bound to every run input.

``key = derive_key(secret, context)`` where ``context`` is the RFC 8785 canonical JSON of every input
of the noisy phase (starting-model digest, centre digest, retain/forget fingerprints, schedule, clip
mode, post-processing mode, noise mode, buffers/frozen/attributes modes, the loss's qualified name, the
digests of frozen parameters, public buffers and public attributes, unlearned parameter names, dtype,
backend). The same secret with any other input gives independent noise, so two released models never
share a draw that their difference would cancel. The noiseless fine-tuning options are left out on
purpose: fine-tuning runs after the single rounding, on retain data only, so two releases that differ
only in it are jointly a post-processing of one noisy iterate (nothing cancels), and leaving them out
lets an owner replay the noisy phase of a fine-tuned release (the demo's per-epoch curve does).
The retain data itself (contents and order, which identifier fingerprints miss when batches come
without ids) keys each step: noisy step ``t`` is draw ``t`` of the generator keyed by
``derive_key(key, "certun.retain-prefix.v1" || h_t)``, where ``h_t`` is a running SHA-256 over the
retain batches consumed up to and including step ``t`` (read before its draw, :func:`chain_batch`),
so a seed never repeats noise across runs whose data differ, draws stay positional within a step,
and the same inputs reproduce the run. The σ0 draw (model clipping's initial noise, output
perturbation) comes before any batch: draw ``T`` of the run key's own generator.
Before any work the run is refused if the sampler's tail residual could
exceed ``TAIL_SLACK · δ``.
Source: docs/theory.md#floating-point-and-randomness.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from certun.accountant import Schedule, Variant
from certun.backends import noise
from certun.backends._options import opening_secret
from certun.certificates.noise_check import TAIL_SLACK, noise_draws, sampler_pairs
from certun.certificates.provenance import KEY_DERIVATION, resolve_seed, run_context
from certun.errors import InvalidParameterError

__all__ = ["KEY_DERIVATION", "RETAIN_PREFIX_START", "RunKey", "chain_batch", "check_tail", "draw_index",
           "loss_name", "noise_record", "run_context", "run_key"]

_STEP_DOMAIN = b"certun.retain-prefix.v1\x00"
#: The running retain hash before any batch.
RETAIN_PREFIX_START = hashlib.sha256(_STEP_DOMAIN).digest()


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
        """The run's noise generator (the σ0 draw, before any batch)."""
        return noise.NoiseGenerator(self.key)

    def step_generator(self, retain_prefix: bytes) -> noise.NoiseGenerator:
        """The generator of a noisy step, keyed by the running hash of the retain batches read so far."""
        return noise.NoiseGenerator(noise.derive_key(self.key, _STEP_DOMAIN + bytes(retain_prefix)))


def chain_batch(running: bytes, batch: Any) -> bytes:
    """The running retain hash after ``batch``: ``SHA-256(running || digest(batch))``.

    Tensors and numpy arrays digest alike (dtype name, shape, little-endian C-order bytes), so the
    torch and numpy backends key the same data the same way.
    """
    h = hashlib.sha256(bytes(running))
    _feed(h, batch, 0)
    return h.digest()


def _feed(h: Any, value: Any, depth: int) -> None:
    import numpy as np

    if depth > 32:
        raise InvalidParameterError("data", "<batch nested more than 32 levels>", "a batch of tensors or arrays")
    if hasattr(value, "detach") and hasattr(value, "dtype") and hasattr(value, "shape"):  # a torch tensor
        import torch

        t = value.detach().to("cpu")
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.contiguous()
        try:
            data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""  # hashed in place, not copied
        except (RuntimeError, TypeError):  # a quantized tensor: its values as text
            data = repr(t.dequantize().tolist() if t.is_quantized else t.tolist()).encode()
        _array(h, str(t.dtype).replace("torch.", ""), tuple(t.shape), data)
    elif isinstance(value, (np.ndarray, np.generic)) and np.asarray(value).dtype != object:
        a = np.ascontiguousarray(value)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        _array(h, a.dtype.name, a.shape, a.reshape(-1).view(np.uint8) if a.size else b"")
    elif isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray)):
        items = list(value)
        h.update(b"L" + struct.pack("<Q", len(items)))
        for item in items:
            _feed(h, item, depth + 1)
    elif isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: repr(kv[0]))
        h.update(b"D" + struct.pack("<Q", len(items)))
        for k, v in items:
            _feed(h, repr(k), depth + 1)
            _feed(h, v, depth + 1)
    else:
        text = f"{type(value).__qualname__}:{value!r}".encode("utf-8", "surrogatepass")
        h.update(b"S" + struct.pack("<Q", len(text)) + text)


def _array(h: Any, dtype: str, shape: tuple[int, ...], data: Any) -> None:
    """Feed one array: its dtype, shape and raw bytes (``data``: bytes or a contiguous uint8 view, read in place)."""
    head = f"{dtype}{list(shape)}".encode()
    h.update(b"A" + struct.pack("<Q", len(head)) + head + struct.pack("<Q", memoryview(data).nbytes))
    h.update(data)


def loss_name(loss_fn: Any) -> str:
    """The loss's qualified name (``torch.nn.functional.cross_entropy``; a loss module's class), for the key."""
    target = loss_fn if hasattr(loss_fn, "__qualname__") else type(loss_fn)
    return f"{getattr(target, '__module__', None)}.{getattr(target, '__qualname__', type(loss_fn).__name__)}"


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
