"""A cryptographically keyed, float64, positional Gaussian noise source (docs/noise.md).

Why it exists: the released iterate is only as private as its noise is unguessable and correctly
shaped. torch's CPU generator keeps 32 bits of seed (brute-forced), CUDA's Philox is not a
cryptographic generator, and float32 Box–Muller on 24-bit uniforms never leaves a disc of radius
√(48 ln 2) ≈ 5.768, which a test can see (docs/theory.md#floating-point-and-randomness).

Generator. ChaCha20 (RFC 8439) with a 256-bit key, run as a keystream: the 64-byte block number
``b`` of draw ``t`` is ChaCha20(key, counter=b, nonce=``b"cun\\x01"`` ‖ t as 8 little-endian bytes)
applied to zero bytes, read as eight little-endian uint64 words. Pair ``j`` of draw ``t`` uses words
``3j, 3j+1, 3j+2`` of that stream; coordinates ``2j`` and ``2j+1`` are pair ``j``. So the value of
coordinate ``i`` depends only on (key, t, i): any split into (offset, count) pieces gives the same
bits, and a piece starts at its block without generating the prefix. The 32-bit block counter covers
2³² blocks = 2³⁵ words per draw; positions beyond :data:`MAX_COORDINATES` are refused rather than
let the counter wrap (OpenSSL would carry into the nonce).

Sampler (Box–Muller in float64, three words per pair). With words (w0, w1, w2):

- ``u1 = (w0·2⁶⁴ + w1 + ½)·2⁻¹²⁸`` evaluated in float64 from exactly representable pieces
  (``w0 >> 11``, ``w0 & 2047``, ``w1 >> 11``, ``w1 & 2047``), so ``2⁻¹²⁹ ≤ u1 ≤ 1``: never 0;
  rounding may give 1.0, never more;
- ``θ = 2π·((w2 >> 11) + ½)·2⁻⁵³``, taken as octant ``o`` (top 3 of the 53 bits) plus
  ``φ = (f + ½)·2⁻⁵⁰·π/4 ∈ (0, π/4)`` (odd octants use the mirrored ``f``), which is the same real
  angle; cos and sin of θ are then exact sign changes and swaps of ``cos φ``, ``sin φ``. ``sin φ``
  is a Taylor polynomial to φ¹⁷ (truncation below 1e-19 relative) in plain IEEE arithmetic and
  ``cos φ = √((1 − sin φ)(1 + sin φ))``. This is several times faster than libm ``cos``/``sin`` on
  ``[0, 2π)``, reduces the argument exactly, and leaves ``log`` the only libm call;
- ``z = √(−2 ln u1)·(cos θ, sin θ)``.

Stated bounds (argued in docs/noise.md, "What is proved and what is argued"):

- ``|z| ≤ r_max = √(2·129·ln 2) ≈ 13.37`` for every pair (``w0 = w1 = 0`` attains it); an exact
  Gaussian pair has radius above r_max with probability exactly 2⁻¹²⁹.
- Coupling: let (U, V) be exact uniforms whose first 128 and 53 binary digits are the words. Then the
  sampler's pair lies within :data:`DISPLACEMENT` = 2⁻²⁰ (in units of one standard deviation) of the
  exact pair √(−2 ln U)(cos 2πV, sin 2πV), except when U < 2⁻¹¹¹, an event of probability
  :data:`TAIL_MASS_PER_PAIR` = 2⁻¹¹¹ that contains the whole tail beyond r_max. The float64
  evaluation (rounding of u1, ``log`` within 2¹⁰ ulp, far looser than any libm documents, ``sqrt``,
  the polynomial) moves the pair by less than 2⁻³⁵ where U < ½ and 2⁻²⁵ near U = 1; with the
  radial cell error (< 2⁻²⁰·², only where U < 2⁻⁶⁴) the total stays below 2⁻²⁰, so it adds nothing
  to the mass.
- :func:`tail_residual` (pairs · 2⁻¹¹¹, rounded up) is the mass misplaced over many pairs; the
  accountant's 1e-12 relative slack absorbs it when it is ≤ 1e-13·δ.

Not proved: that a displacement of 2⁻²⁰σ per coordinate, and the discreteness of float64 outputs,
cannot be exploited (the discrete Gaussian on a grid is the rigorous route, evaluated in
docs/noise.md). Values are bit-identical across calls and splits on one platform; another platform's
``log`` may differ in the last ulp.

The module imports without torch; :meth:`NoiseGenerator.normal_torch` imports it lazily.
"""

from __future__ import annotations

import hashlib
import math
import operator
import secrets
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certun.backends._box_muller import _fill_pairs, _Workspace
from certun.errors import InvalidParameterError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "KEY_BYTES",
    "MAX_COORDINATES",
    "MAX_WORKERS",
    "MAX_ABS_Z",
    "TAIL_MASS_PER_PAIR",
    "DISPLACEMENT",
    "fresh_key",
    "seed_secret",
    "derive_key",
    "NoiseGenerator",
    "pairs_from_words",
    "describe",
    "tail_residual",
]

KEY_BYTES: int = 32
"""Key length in bytes (256-bit ChaCha20 keys)."""

MIN_SECRET_BYTES: int = 16
"""Shortest secret :func:`derive_key` accepts (128 bits)."""

_NONCE_TAG = b"cun\x01"  # domain separation of this stream's nonces (version 1)
_SEED_DOMAIN = b"certun/noise/seed-secret/v1\x00"
_HKDF_SALT = b"certun/noise/run-key/v1"

_BLOCK_WORDS = 8  # a ChaCha20 block is 64 bytes = 8 uint64 words
_WORDS_PER_PAIR = 3
_MAX_BLOCKS = 1 << 32  # the RFC 8439 block counter is 32 bits
MAX_PAIRS: int = (_MAX_BLOCKS * _BLOCK_WORDS) // _WORDS_PER_PAIR
MAX_COORDINATES: int = 2 * MAX_PAIRS
"""Coordinates one draw can have (≈ 2.3e10) before the 32-bit block counter would wrap."""
MAX_DRAWS: int = 1 << 64
MAX_WORKERS: int = 1024
"""Most threads one call of :meth:`NoiseGenerator.normal` takes."""

_CHUNK_PAIRS = 1 << 16  # 1.5 MiB of keystream and ~0.5 MiB per temporary at a time

# r_max = sqrt(258 ln 2), and the largest value any libm within 2^10 ulp can return for it.
_R_MAX_EXACT = math.sqrt(258 * math.log(2.0))
MAX_ABS_Z: float = _R_MAX_EXACT * (1 + 2.0**-40)
"""Upper bound on |z| for every coordinate the sampler can return."""
TAIL_BEYOND_MAX_PER_PAIR: float = 2.0**-129
"""P(an exact Gaussian pair has radius > r_max)."""
TAIL_MASS_PER_PAIR: float = 2.0**-111
"""Per pair: probability, under the coupling, that the sampler's pair is more than DISPLACEMENT away."""
DISPLACEMENT: float = 2.0**-20
"""Largest distance (in standard deviations) between coupled pairs outside the tail event."""


def _index(name: str, value: Any, low: int, high: int | None, valid: str) -> int:
    """``value`` as an int in [low, high) (high None: unbounded); bools and non-integers refused."""
    if isinstance(value, bool):
        raise InvalidParameterError(name, value, valid)
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidParameterError(name, value, valid) from None
    if v < low or (high is not None and v >= high):
        raise InvalidParameterError(name, v, valid)
    return v


def _secret_bytes(name: str, value: Any, *, exact: int | None = None, minimum: int = 0) -> bytes:
    """Bytes-like ``value`` as bytes; the error names only its type and length, never the secret."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidParameterError(name, f"<{type(value).__name__}>", "bytes")
    data = bytes(value)
    if exact is not None and len(data) != exact:
        raise InvalidParameterError(name, f"<{len(data)} bytes>", f"exactly {exact} bytes ({8 * exact} bits)")
    if len(data) < minimum:
        raise InvalidParameterError(name, f"<{len(data)} bytes>", f"at least {minimum} bytes ({8 * minimum} bits)")
    return data


def fresh_key() -> bytes:
    """A new 256-bit key from the operating system's CSPRNG; use one per run, never twice."""
    return secrets.token_bytes(KEY_BYTES)


def seed_secret(seed: int) -> bytes:
    """Secret bytes from a user-given integer seed, for tests and audits ONLY.

    A seed is guessable, so noise derived from it certifies nothing against someone who knows or
    can enumerate it; the whole integer is hashed (domain-separated), so no bits are dropped.
    """
    s = _index("seed", seed, -(1 << 4096), 1 << 4096, "an integer with |seed| < 2**4096")
    return hashlib.sha256(_SEED_DOMAIN + str(s).encode("ascii")).digest()


def derive_key(secret: bytes, context: bytes) -> bytes:
    """The run key: HKDF-SHA256 of ``secret`` (≥ 16 bytes) with ``context`` as its info.

    ``context`` is the caller's canonical encoding of every run input, so a key is never reused
    across runs that differ in any input.
    """
    ikm = _secret_bytes("secret", secret, minimum=MIN_SECRET_BYTES)
    if not isinstance(context, (bytes, bytearray, memoryview)):
        raise InvalidParameterError("context", f"<{type(context).__name__}>", "bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_HKDF_SALT, info=bytes(context))
    return hkdf.derive(ikm)


def pairs_from_words(words: np.ndarray) -> np.ndarray:
    """The sampler alone: an (n, 3) array of uint64 words to (n, 2) float64 standard normals.

    Exposed so that tests and audits can feed crafted words (``w0 = w1 = 0`` gives the largest radius).
    """
    w = np.ascontiguousarray(words, dtype=np.uint64)
    if w.ndim != 2 or w.shape[1] != _WORDS_PER_PAIR:
        raise InvalidParameterError("words", f"<array of shape {w.shape}>", "an (n, 3) array of uint64")
    out = np.empty((w.shape[0], 2), dtype=np.float64)
    ws = _Workspace(min(_CHUNK_PAIRS, w.shape[0]))
    for start in range(0, w.shape[0], _CHUNK_PAIRS):
        _fill_pairs(w[start:start + _CHUNK_PAIRS], out[start:start + _CHUNK_PAIRS], ws)
    return out


class NoiseGenerator:
    """Standard normals keyed by a 256-bit secret, addressed by (draw, coordinate).

    The key is kept private: it appears in no repr, error message or description.
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = _secret_bytes("key", key, exact=KEY_BYTES)

    def __repr__(self) -> str:
        return "NoiseGenerator(<256-bit key>)"

    def __reduce__(self) -> Any:  # never serialise the key by accident
        raise TypeError("NoiseGenerator holds a secret key and is not picklable")

    def keystream(self, draw: int, block: int, n_blocks: int) -> bytes:
        """Raw ChaCha20 keystream: ``n_blocks`` 64-byte blocks of draw ``draw`` from block ``block``."""
        t = _index("draw", draw, 0, MAX_DRAWS, f"an integer in [0, {MAX_DRAWS})")
        b = _index("block", block, 0, _MAX_BLOCKS, f"an integer in [0, {_MAX_BLOCKS})")
        n = _index("n_blocks", n_blocks, 0, _MAX_BLOCKS - b + 1,
                   f"an integer in [0, {_MAX_BLOCKS - b}] (the 32-bit block counter must not wrap)")
        buf = bytearray(64 * n + 15)
        self._keystream_into(t, b, memoryview(buf)[: 64 * n + 15], n)
        return bytes(buf[: 64 * n])

    def _keystream_into(self, draw: int, block: int, buf: memoryview, n_blocks: int,
                        zeros: bytes | None = None) -> None:
        """``n_blocks`` keystream blocks into ``buf``; ``zeros``: at least that many zero bytes to encrypt,
        reused by a caller that asks for many pieces (a fresh 1.5 MiB of zeros per piece costs a few %)."""
        nonce = block.to_bytes(4, "little") + _NONCE_TAG + draw.to_bytes(8, "little")
        enc = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()
        plain = bytes(64 * n_blocks) if zeros is None else memoryview(zeros)[: 64 * n_blocks]
        enc.update_into(plain, buf)

    def normal(self, draw: int, count: int, *, offset: int = 0, workers: int = 1,
               out: np.ndarray | None = None) -> np.ndarray:
        """Coordinates ``[offset, offset + count)`` of the ``draw``-th N(0, I) vector, float64.

        Positional: coordinate i of draw t depends only on (key, t, i), so pieces equal the whole.
        ``workers`` > 1 fills contiguous pieces in that many threads (numpy and OpenSSL release the
        GIL); by positionality the bits do not depend on it. ``out``: a contiguous float64 array of
        ``count`` values to fill and return (a reused buffer saves the page faults of a fresh one).
        """
        t = _index("draw", draw, 0, MAX_DRAWS, f"an integer in [0, {MAX_DRAWS})")
        n = _index("count", count, 0, None, "an integer >= 0")
        i0 = _index("offset", offset, 0, None, "an integer >= 0")
        k = _index("workers", workers, 1, MAX_WORKERS + 1, f"an integer in [1, {MAX_WORKERS}]")
        if i0 + n > MAX_COORDINATES:
            raise InvalidParameterError(
                "offset + count", i0 + n, f"at most {MAX_COORDINATES}",
                "one draw covers this many coordinates before ChaCha20's 32-bit block counter would wrap")
        out = np.empty(n, dtype=np.float64) if out is None else _buffer(out, n)
        # Pieces of whole chunks (even length, so each piece but the last starts a pair).
        piece = 2 * _CHUNK_PAIRS * max(1, -(-n // (2 * _CHUNK_PAIRS * k)))
        if k == 1 or n <= piece:
            self._fill(t, i0, out)
            return out
        from concurrent.futures import ThreadPoolExecutor

        starts = range(0, n, piece)
        with ThreadPoolExecutor(max_workers=min(k, len(starts))) as pool:
            list(pool.map(lambda s: self._fill(t, i0 + s, out[s:s + piece]), starts))
        return out

    def _fill(self, t: int, i0: int, out: np.ndarray) -> None:
        """Write coordinates ``[i0, i0 + len(out))`` of draw ``t`` into ``out`` (validated by the caller)."""
        n = out.shape[0]
        if n == 0:
            return
        j0, j1 = i0 // 2, (i0 + n + 1) // 2  # pairs [j0, j1) hold the coordinates
        chunk = min(_CHUNK_PAIRS, j1 - j0)
        max_blocks = (_WORDS_PER_PAIR * chunk + _BLOCK_WORDS - 1) // _BLOCK_WORDS + 1
        raw, zeros = bytearray(64 * max_blocks + 15), bytes(64 * max_blocks)
        pairs = np.empty((chunk, 2), dtype=np.float64)
        ws = _Workspace(chunk)
        for j in range(j0, j1, chunk):
            m = min(chunk, j1 - j)
            word0 = _WORDS_PER_PAIR * j
            block = word0 // _BLOCK_WORDS
            skip = word0 - block * _BLOCK_WORDS
            n_blocks = (skip + _WORDS_PER_PAIR * m + _BLOCK_WORDS - 1) // _BLOCK_WORDS
            self._keystream_into(t, block, memoryview(raw)[: 64 * n_blocks + 15], n_blocks, zeros)
            words = np.frombuffer(raw, dtype="<u8", count=skip + _WORDS_PER_PAIR * m)[skip:]
            words = words.reshape(m, _WORDS_PER_PAIR)
            if 2 * j >= i0 and 2 * (j + m) <= i0 + n:  # the whole chunk is wanted: write in place
                _fill_pairs(words, out[2 * j - i0: 2 * (j + m) - i0].reshape(m, 2), ws)
                continue
            _fill_pairs(words, pairs[:m], ws)
            flat = pairs[:m].reshape(-1)
            lo = max(i0, 2 * j) - 2 * j  # first wanted coordinate inside this chunk
            hi = min(i0 + n, 2 * (j + m)) - 2 * j
            out[2 * j + lo - i0: 2 * j + hi - i0] = flat[lo:hi]

    def normal_torch(self, draw: int, count: int, *, offset: int = 0, device: Any = None,
                     workers: int = 1, out: torch.Tensor | None = None) -> torch.Tensor:
        """The same values as :meth:`normal`, as a float64 torch tensor on ``device``.

        ``out``: a contiguous float64 CPU tensor of ``count`` values to fill and return instead (then
        ``device``, if given, must be the CPU: a draw is never silently left on another device than asked).
        """
        import torch

        if out is not None:
            if not isinstance(out, torch.Tensor) or out.device.type != "cpu":
                raise InvalidParameterError("out", type(out).__name__, "a float64 CPU torch.Tensor")
            if device is not None and torch.device(device).type != "cpu":
                raise InvalidParameterError("device", str(device), "None or the CPU when out= is given (out is a "
                                            "CPU buffer); copy the filled buffer to the device yourself")
            self.normal(draw, count, offset=offset, workers=workers, out=out.detach().numpy())
            return out
        values = torch.from_numpy(self.normal(draw, count, offset=offset, workers=workers))
        return values if device is None else values.to(device)


def _buffer(out: Any, n: int) -> np.ndarray:
    """``out`` if it can hold a draw of ``n`` values in place, else a clear error."""
    if (not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != (n,)
            or not out.flags.c_contiguous or not out.flags.writeable):
        shape = getattr(out, "shape", None)
        raise InvalidParameterError("out", f"{type(out).__name__} of shape {shape}",
                                    f"a writable contiguous float64 array of shape ({n},)")
    return out


def describe() -> dict[str, object]:
    """What a certificate records about the noise source (JSON-serialisable, no secrets)."""
    return {
        "generator": "chacha20-rfc8439",
        "key_bits": 8 * KEY_BYTES,
        "key_derivation": "hkdf-sha256",
        "nonce": "63756e01 || draw (8 bytes little-endian)",
        "stream": "pair j = little-endian uint64 words 3j, 3j+1, 3j+2; coordinates 2j, 2j+1",
        "sampler": "box-muller-f64-u128",
        "u1_bits": 128,
        "angle_bits": 53,
        "max_abs_z": MAX_ABS_Z,
        "tail_beyond_max_per_pair": TAIL_BEYOND_MAX_PER_PAIR,
        "tail_mass_per_pair": TAIL_MASS_PER_PAIR,
        "displacement": DISPLACEMENT,
        "max_coordinates": MAX_COORDINATES,
        "positional": True,
    }


def tail_residual(pairs: int) -> float:
    """Upper bound (rounded up) on the mass the sampler misplaces over ``pairs`` pairs: pairs·2⁻¹¹¹.

    The integrator's check is one line: ``tail_residual(T * ceil(d / 2)) <= 1e-13 * delta``.
    """
    p = _index("pairs", pairs, 0, None, "an integer >= 0")
    exact = Fraction(p) * Fraction(1, 1 << 111)
    value = float(exact)
    return value if Fraction(value) >= exact else math.nextafter(value, math.inf)
