"""The keyed float64 noise source: key space, positional values, tails, the disc test (docs/noise.md).

Each property is checked by a function that also runs on a control: torch's 32-bit-seeded float32
``randn``, the source the noise module replaces. The control must FAIL each check, so that no check
passes vacuously.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from noise_fixtures import TorchSeeded
from scipy import stats

from certun.audit.implementation import R_DISC_TEST, disc_exceedances
from certun.backends import noise
from certun.backends.noise import (
    KEY_BYTES,
    MAX_ABS_Z,
    MAX_COORDINATES,
    NoiseGenerator,
    derive_key,
    describe,
    fresh_key,
    pairs_from_words,
    seed_secret,
    tail_residual,
)
from certun.errors import InvalidParameterError

KEY = bytes(range(KEY_BYTES))


def _flip(key: bytes, bit: int) -> bytes:
    b = bytearray(key)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


# --- key space ----------------------------------------------------------------------------------


def _high_key_bits_matter(source) -> bool:
    """Keys differing only in bit 40, or only in the last byte, give different noise."""
    base = source(KEY).normal(0, 64)
    return all(not np.array_equal(base, source(_flip(KEY, bit)).normal(0, 64)) for bit in (40, 8 * KEY_BYTES - 1))


def test_every_key_bit_matters_and_the_control_does_not():
    """A 32-bit seed space is brute-forced; every one of the 256 key bits must change the noise."""
    assert _high_key_bits_matter(NoiseGenerator)
    assert not _high_key_bits_matter(TorchSeeded)
    base = NoiseGenerator(KEY).normal(0, 8)
    assert all(not np.array_equal(base, NoiseGenerator(_flip(KEY, bit)).normal(0, 8)) for bit in range(256))


def test_torch_generator_keeps_32_bits_of_seed():
    """The reason for this module: manual_seed(s) and manual_seed(s ^ 2**40) give the same stream."""
    a = torch.randn(16, generator=torch.Generator().manual_seed(5))
    b = torch.randn(16, generator=torch.Generator().manual_seed(5 ^ 2**40))
    assert torch.equal(a, b)


@pytest.mark.parametrize("key", [bytes(31), bytes(33), b"", "x" * 32, 12345, None, [0] * 32])
def test_bad_keys_are_refused_without_printing_them(key):
    with pytest.raises(InvalidParameterError) as info:
        NoiseGenerator(key)
    assert info.value.name == "key"
    assert "x" * 32 not in str(info.value) and "\\x00" not in str(info.value)


def test_generator_never_shows_its_key():
    g = NoiseGenerator(b"K" * KEY_BYTES)
    assert "KKKK" not in repr(g)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(g)


def test_fresh_keys_are_256_bits_and_distinct():
    keys = {fresh_key() for _ in range(64)}
    assert len(keys) == 64 and all(len(k) == KEY_BYTES for k in keys)


def test_seed_secret_uses_every_bit_of_the_seed():
    s = 123456789
    assert seed_secret(s) != seed_secret(s ^ 2**40)
    assert seed_secret(s) != seed_secret(s ^ 2**200)
    assert seed_secret(s) != seed_secret(-s)
    assert seed_secret(s) == seed_secret(s) and len(seed_secret(s)) == 32


@pytest.mark.parametrize("seed", [True, 1.0, "1", None, 2**5000])
def test_seed_secret_refuses_non_integers(seed):
    with pytest.raises(InvalidParameterError):
        seed_secret(seed)


def test_derive_key_depends_on_every_byte_of_context_and_secret():
    secret = seed_secret(0)
    context = bytes(range(40))
    base = derive_key(secret, context)
    assert len(base) == KEY_BYTES
    for i in range(len(context)):
        changed = bytearray(context)
        changed[i] ^= 1
        assert derive_key(secret, bytes(changed)) != base
    assert derive_key(secret, context + b"\x00") != base  # no silent truncation or padding
    assert derive_key(_flip(secret, 255), context) != base
    assert derive_key(secret, context) == base


@pytest.mark.parametrize(("secret", "context"), [(bytes(15), b""), ("s" * 32, b""), (bytes(32), "ctx"),
                                                 (bytes(32), None)])
def test_derive_key_refuses_bad_types_and_short_secrets(secret, context):
    with pytest.raises(InvalidParameterError):
        derive_key(secret, context)


# --- positional ---------------------------------------------------------------------------------


def _pieces_equal_whole(source, n: int, cuts: list[int], draw: int = 3) -> bool:
    whole = source.normal(draw, n)
    edges = [0, *cuts, n]
    pieces = [source.normal(draw, b - a, offset=a) for a, b in itertools.pairwise(edges)]
    return np.array_equal(np.concatenate(pieces), whole)


def test_pieces_equal_the_whole_and_the_control_is_not_positional():
    """Any split into (offset, count) pieces gives the same bits: needed for sharded runs."""
    n = 2 * noise._CHUNK_PAIRS + 1001  # crosses chunk boundaries
    cuts = [1, 2, 3, 7, 8, 17, 24, 25, 1000, noise._CHUNK_PAIRS * 2 - 1, noise._CHUNK_PAIRS * 2 + 1, n - 1]
    g = NoiseGenerator(KEY)
    assert _pieces_equal_whole(g, n, cuts)
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert _pieces_equal_whole(g, 5000, sorted(rng.choice(np.arange(1, 5000), 6, replace=False).tolist()))
    assert not _pieces_equal_whole(TorchSeeded(KEY), 1000, [7, 500])


@given(draw=st.integers(0, 2**64 - 1), start=st.integers(0, MAX_COORDINATES - 400), n=st.integers(1, 400),
       cuts=st.lists(st.integers(1, 399), max_size=6))
def test_any_split_anywhere_gives_the_same_bits(draw, start, n, cuts):
    """Property: for any draw, any start and any cut points, the pieces are the whole, bit for bit."""
    g = NoiseGenerator(KEY)
    inner = sorted({c for c in cuts if c < n})
    assert _pieces_equal_whole(_Shifted(g, start), n, inner, draw=draw)


def test_no_two_positions_share_a_keystream_block():
    """An attacker choosing (draw, offset) cannot make two coordinates reuse keystream: the last block
    of one draw, the first of the next, and the same block of two draws are all different."""
    g = NoiseGenerator(KEY)
    last = 2**32 - 1
    blocks = {g.keystream(t, b, 1) for t in (0, 1, 2**63, 2**64 - 1) for b in (0, 1, last)}
    assert len(blocks) == 12


@pytest.mark.parametrize(("workers", "offset", "count"), [(2, 0, 4 * 2**17 + 3), (3, 1, 5 * 2**17 + 1),
                                                       (7, 5, 2**17 + 9), (1024, 0, 10)])
def test_threads_give_the_same_bits(workers, offset, count):
    g = NoiseGenerator(KEY)
    assert np.array_equal(g.normal(6, count, offset=offset, workers=workers), g.normal(6, count, offset=offset))


@pytest.mark.parametrize("workers", [0, -1, 1025, 1.5, True])
def test_bad_worker_counts_are_refused(workers):
    with pytest.raises(InvalidParameterError) as info:
        NoiseGenerator(KEY).normal(0, 4, workers=workers)
    assert info.value.name == "workers"


def test_single_coordinates_match_the_whole():
    g = NoiseGenerator(KEY)
    whole = g.normal(9, 50)
    assert np.array_equal(np.array([g.normal(9, 1, offset=i)[0] for i in range(50)]), whole)


def test_draws_differ_and_the_same_key_repeats():
    g = NoiseGenerator(KEY)
    a, b = g.normal(0, 1000), g.normal(1, 1000)
    assert not np.any(a == b)
    assert np.array_equal(NoiseGenerator(KEY).normal(0, 1000), a)
    assert not np.array_equal(g.normal(2**64 - 1, 16), g.normal(0, 16))
    assert g.normal(0, 0).shape == (0,)


def test_normal_torch_gives_the_same_float64_values():
    g = NoiseGenerator(KEY)
    t = g.normal_torch(4, 101, offset=3, device="cpu")
    assert t.dtype == torch.float64 and t.device.type == "cpu"
    assert np.array_equal(t.numpy(), g.normal(4, 101, offset=3))


def test_keystream_pieces_across_the_last_counter_values():
    """OpenSSL carries a wrapping 32-bit counter into the nonce; we stop before, and pieces agree there."""
    g = NoiseGenerator(KEY)
    last = 2**32 - 1
    two = g.keystream(7, last - 1, 2)
    assert two == g.keystream(7, last - 1, 1) + g.keystream(7, last, 1)
    assert two[64:] != g.keystream(7, 0, 1)
    with pytest.raises(InvalidParameterError):
        g.keystream(7, last, 2)
    with pytest.raises(InvalidParameterError):
        g.keystream(7, 2**32, 1)


def test_positions_up_to_the_counter_limit_and_refusal_beyond():
    g = NoiseGenerator(KEY)
    end = MAX_COORDINATES
    assert _pieces_equal_whole(_Shifted(g, end - 100), 100, [1, 33, 50])
    assert np.all(np.isfinite(g.normal(0, 100, offset=end - 100)))
    for offset, count in ((end - 1, 2), (end, 1), (2**70, 1)):
        with pytest.raises(InvalidParameterError):
            g.normal(0, count, offset=offset)


class _Shifted:
    def __init__(self, g: NoiseGenerator, base: int) -> None:
        self.g, self.base = g, base

    def normal(self, draw: int, count: int, *, offset: int = 0) -> np.ndarray:
        return self.g.normal(draw, count, offset=self.base + offset)


@pytest.mark.parametrize(("kwargs", "name"), [({"draw": -1, "count": 1}, "draw"), ({"draw": 2**64, "count": 1}, "draw"),
                                              ({"draw": 0, "count": -1}, "count"),
                                              ({"draw": 0, "count": 1.0}, "count"),
                                              ({"draw": True, "count": 1}, "draw"),
                                              ({"draw": 0, "count": 1, "offset": -2}, "offset")])
def test_bad_positions_are_refused(kwargs, name):
    with pytest.raises(InvalidParameterError) as info:
        NoiseGenerator(KEY).normal(**kwargs)
    assert info.value.name == name


# --- the sampler and its tails ------------------------------------------------------------------


def _reference_pair(w0: int, w1: int, w2: int) -> tuple[float, float]:
    """The sampler's formula in 50-digit arithmetic."""
    import mpmath

    with mpmath.workdps(50):
        u = (mpmath.mpf(w0) * 2**64 + w1 + mpmath.mpf(1) / 2) / mpmath.mpf(2) ** 128
        theta = 2 * mpmath.pi * ((w2 >> 11) + mpmath.mpf(1) / 2) / mpmath.mpf(2) ** 53
        r = mpmath.sqrt(-2 * mpmath.log(u))
        return float(r * mpmath.cos(theta)), float(r * mpmath.sin(theta))


def test_sampler_matches_the_formula_in_high_precision():
    """Random words, the eight octant edges and the extremes of u1: within a few ulps of the formula."""
    rng = np.random.default_rng(1)
    words = rng.integers(0, 2**64, size=(400, 3), dtype=np.uint64).tolist()
    for o in range(8):
        for f in (0, 1, 2**50 - 2, 2**50 - 1):
            words.append([2**63, 5, ((o << 50) | f) << 11])
    words += [[0, 0, 0], [0, 1, 2**64 - 1], [2**64 - 1, 2**64 - 1, 2**63], [1, 0, 2**62], [0, 2**64 - 1, 7 << 61]]
    z = pairs_from_words(np.array(words, dtype=np.uint64))
    for (w0, w1, w2), (x, y) in zip(words, z.tolist(), strict=True):
        rx, ry = _reference_pair(w0, w1, w2)
        scale = max(1.0, math.hypot(rx, ry))
        assert abs(x - rx) <= 2e-15 * scale and abs(y - ry) <= 2e-15 * scale, (w0, w1, w2)


def test_crafted_words_reach_the_stated_maximum_and_nothing_exceeds_it():
    """w0 = w1 = 0 gives u1 = 2^-129, the largest radius: sqrt(258 ln 2) ≈ 13.37, and no NaN anywhere."""
    z = pairs_from_words(np.zeros((1, 3), dtype=np.uint64))
    r_max = math.sqrt(258 * math.log(2))
    assert r_max * (1 - 2**-45) <= abs(z[0, 0]) <= MAX_ABS_Z
    assert math.isclose(describe()["max_abs_z"], 13.3728, rel_tol=1e-5)
    top = pairs_from_words(np.full((1, 3), 2**64 - 1, dtype=np.uint64))
    assert np.all(np.isfinite(top)) and np.all(np.abs(top) < 1e-7)  # u1 rounds to 1: radius 0, never NaN
    rng = np.random.default_rng(2)
    w = rng.integers(0, 2**64, size=(100_000, 3), dtype=np.uint64)
    w[:, 0] >>= rng.integers(0, 64, size=100_000).astype(np.uint64)  # every exponent of u1
    w[::2, 0] = 0
    z = pairs_from_words(w)
    assert np.all(np.isfinite(z)) and np.max(np.abs(z)) <= MAX_ABS_Z


def test_largest_value_of_a_big_sample_is_a_gaussian_extreme():
    """2e7 values: the maximum lies below the analytic bound and where an exact Gaussian's would.

    P(max |z| < 5 for 2e7 exact normals) = (1 - 5.7e-7)^(2e7) ≈ 1e-5.
    """
    z = NoiseGenerator(KEY).normal(11, 20_000_000)
    top = float(np.max(np.abs(z)))
    assert 5.0 < top <= MAX_ABS_Z


def test_moments_and_kolmogorov_smirnov():
    """1e6 values: mean, variance, skewness, excess kurtosis within 5 standard errors; KS not rejected."""
    n = 1_000_000
    z = NoiseGenerator(KEY).normal(12, n)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5 / math.sqrt(n / 2)  # the two halves of a pair


# --- the disc test ------------------------------------------------------------------------------


def test_disc_test_detects_float32_randn():
    """Control: float32 randn's pairs never leave the disc (up to float32 rounding); at 2^27 pairs an exact
    Gaussian has ~8 outside (P(0) = 3e-4)."""
    x = torch.randn(1 << 22, generator=torch.Generator().manual_seed(0)).double().numpy().reshape(-1, 16)
    assert np.max(np.hypot(x[:, :8], x[:, 8:])) <= R_DISC_TEST
    assert disc_exceedances(TorchSeeded(KEY), 1 << 27) == 0


def test_disc_test_finds_nothing_for_the_generator():
    """2^27 pairs: expect 2^27 · 2^-24 = 8 pairs outside the disc (Poisson; P(0) = 3e-4); float32 randn has 0."""
    n_pairs = 1 << 27
    count = disc_exceedances(NoiseGenerator(KEY), n_pairs)
    expected = n_pairs * math.exp(-(R_DISC_TEST**2) / 2)
    assert stats.poisson.cdf(count, expected) > 1e-3 and stats.poisson.sf(count - 1, expected) > 1e-3
    assert count >= 1


# --- what the certificate records ---------------------------------------------------------------


def test_describe_is_json_and_states_the_bounds():
    import json

    d = describe()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["generator"] == "chacha20-rfc8439" and d["key_bits"] == 256 and d["positional"] is True
    assert d["tail_beyond_max_per_pair"] == 2.0**-129
    assert math.isclose(math.exp(-d["max_abs_z"] ** 2 / 2), 2.0**-129, rel_tol=1e-9)
    assert d["tail_mass_per_pair"] >= d["tail_beyond_max_per_pair"]


def test_tail_residual_rounds_up_and_scales():
    assert tail_residual(0) == 0.0
    assert tail_residual(1) == 2.0**-111
    from fractions import Fraction

    for pairs in (3, 2**53 + 1, 10**20 + 7, 2**200 + 1):
        assert Fraction(tail_residual(pairs)) >= Fraction(pairs, 2**111)
    delta = 1e-5
    assert tail_residual(10**8 * 500_000) <= 1e-13 * delta  # T = 1e5 steps of d = 1e9 is absorbed
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(InvalidParameterError):
            tail_residual(bad)
