"""Tensor digests (independent of file format and memory layout) and the seed commitment."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from certun.certificates import model_digest, open_seed_commitment, seed_commitment, tensor_digest
from certun.certificates._digest import root_digest
from certun.errors import InvalidParameterError


def _reference_digest(name: str, array: np.ndarray) -> str:
    """The encoding of docs/certificates.md written out independently (the oracle)."""
    a = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<")))

    def lp(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b

    body = (b"certun.tensor.v1\x00" + lp(name.encode()) + lp(a.dtype.name.encode())
            + struct.pack("<Q", a.ndim) + b"".join(struct.pack("<Q", d) for d in a.shape) + lp(a.tobytes()))
    return "sha256:" + hashlib.sha256(body).hexdigest()


arrays = hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.int64, np.float16, np.bool_]),
                    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))


@given(arrays, st.text(min_size=1, max_size=8))
def test_tensor_digest_matches_reference_encoding(array, name):
    """The digest is SHA-256 of the documented length-prefixed encoding."""
    assert tensor_digest(name, array) == _reference_digest(name, array)


@given(arrays)
def test_digest_ignores_layout_and_byte_order(array):
    """Fortran order, a strided view and big-endian storage of the same values hash alike."""
    want = tensor_digest("w", array)
    assert tensor_digest("w", np.asfortranarray(array)) == want
    assert tensor_digest("w", array.astype(array.dtype.newbyteorder(">"))) == want
    doubled = np.repeat(array[..., None], 2, axis=-1)[..., 0] if array.ndim else array
    assert tensor_digest("w", doubled) == want


def test_digest_depends_on_name_dtype_shape_and_values():
    """Each of name, dtype, shape and a single value changes the digest."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    base = tensor_digest("w", a)
    b = a.copy()
    b[1, 2] = np.nextafter(b[1, 2], np.float32(np.inf))
    assert len({base, tensor_digest("v", a), tensor_digest("w", a.astype(np.float64)),
                tensor_digest("w", a.reshape(3, 2)), tensor_digest("w", b)}) == 5


def test_torch_tensors_hash_like_numpy():
    """A torch tensor (CPU, grad-tracking, or bfloat16) hashes without importing torch in certun."""
    torch = pytest.importorskip("torch")
    a = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    t = torch.from_numpy(a.copy()).requires_grad_(True)
    assert tensor_digest("w", t) == tensor_digest("w", a)
    assert tensor_digest("w", t.t()) == tensor_digest("w", a.T)
    bf = torch.ones(3, dtype=torch.bfloat16)
    assert tensor_digest("w", bf) != tensor_digest("w", torch.ones(3, dtype=torch.float16))


def test_model_digest_is_order_independent_with_consistent_root():
    """The root does not depend on insertion order, and equals the root over the per-tensor digests."""
    a = {"b": np.ones(2), "a": np.zeros(3)}
    d1, d2 = model_digest(a), model_digest(list(reversed(list(a.items()))))
    assert d1 == d2
    assert root_digest(d1.tensors) == d1.root
    assert d1.shapes == {"a": (3,), "b": (2,)} and d1.dtypes == {"a": "float64", "b": "float64"}
    assert model_digest({"a": np.zeros(3)}).root != d1.root


def test_bad_tensors_are_refused():
    """Lists, object arrays, empty names and duplicate names raise typed errors."""
    with pytest.raises(InvalidParameterError, match="numpy array"):
        tensor_digest("w", [1.0, 2.0])
    with pytest.raises(InvalidParameterError, match="dtype"):
        tensor_digest("w", np.array(["x"], dtype=object))
    with pytest.raises(InvalidParameterError, match="name"):
        tensor_digest("", np.zeros(1))
    with pytest.raises(InvalidParameterError, match="unique"):
        model_digest([("w", np.zeros(1)), ("w", np.ones(1))])


# --------------------------------------------------------------------------------- seed commitment
@given(st.integers(min_value=0, max_value=2**64), st.integers(min_value=0, max_value=2**64))
def test_commitment_opens_only_with_its_seed(seed, other):
    """The opening verifies; another seed or another salt does not."""
    public, private = seed_commitment(seed)
    assert open_seed_commitment(public, private)
    if other != seed:
        assert not open_seed_commitment(public, {**private, "seed": other})
    assert not open_seed_commitment(public, {**private, "salt": "00" * 32})


def test_commitment_hides_the_seed():
    """The public part holds no seed, and two commitments to one seed differ (fresh salts)."""
    public, _ = seed_commitment(123456789)
    assert set(public) == {"scheme", "commitment"} and "123456789" not in str(public)
    assert seed_commitment(123456789)[0] != public
    assert seed_commitment(5, salt=b"s" * 32) == seed_commitment(5, salt=b"s" * 32)


@pytest.mark.parametrize("seed", [-1, True, 1.5, "7"])
def test_commitment_refuses_bad_seeds(seed):
    """Seeds are integers >= 0."""
    with pytest.raises(InvalidParameterError, match="seed"):
        seed_commitment(seed)
