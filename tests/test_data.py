"""The demo's data layer: the IDX parser, the Fashion-MNIST loader, the digits fallback, seeded splits."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certun.demo.data import (
    DatasetFormatError,
    load_data,
    load_fashion_mnist,
    make_loader,
    make_splits,
    read_idx,
)
from certun.errors import CertunError, InvalidParameterError

_CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype("int16"): 0x0B, np.dtype("int32"): 0x0C,
          np.dtype("float32"): 0x0D, np.dtype("float64"): 0x0E}


def idx_bytes(array: np.ndarray, *, code: int | None = None, shape: tuple[int, ...] | None = None) -> bytes:
    """Encode ``array`` as an IDX file by hand (big-endian header and payload), optionally lying in the header."""
    array = np.asarray(array)
    code = _CODES[array.dtype] if code is None else code
    shape = array.shape if shape is None else shape
    header = bytes([0, 0, code, len(shape)]) + b"".join(struct.pack(">I", s) for s in shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@given(st.sampled_from(sorted(_CODES, key=str)),
       st.lists(st.integers(0, 5), min_size=1, max_size=3),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_read_idx_round_trips_every_type(dtype, shape, gzipped, seed):
    """Any array written as IDX (plain or gzipped) reads back with the same shape, values and dtype."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = rng.standard_normal(size=shape).astype(dtype)
    raw = idx_bytes(array)
    if gzipped:
        raw = gzip.compress(raw)
    got = read_idx(raw)
    assert got.shape == array.shape and got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)


def test_read_idx_reads_a_gzipped_file_from_disk(tmp_path):
    """A tiny MNIST-like image file on disk parses to uint8 images of the declared shape."""
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images)))
    np.testing.assert_array_equal(read_idx(path), images)


@pytest.mark.parametrize(("raw", "message"), [
    (b"\x00\x00", "too short"),
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad IDX magic number"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x02" + struct.pack(">I", 1), "header needs 12 bytes"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00\x01", "truncated"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x00\x01", "trailing bytes"),
    (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
])
def test_read_idx_refuses_corrupt_files(raw, message):
    """Each kind of corruption raises DatasetFormatError with a message saying what is wrong."""
    with pytest.raises(DatasetFormatError, match=message):
        read_idx(raw)


def test_corrupt_file_error_names_the_file_and_sizes(tmp_path):
    """A truncated file's error names the path, the payload size and the size the header needs."""
    path = tmp_path / "labels.idx"
    path.write_bytes(idx_bytes(np.zeros(10, dtype=np.uint8))[:-3])
    with pytest.raises(DatasetFormatError) as info:
        read_idx(path)
    text = str(info.value)
    assert str(path) in text and "7 bytes" in text and "needs 10" in text
    assert isinstance(info.value, CertunError) and isinstance(info.value, ValueError)


def _fake_fashion(root, *, n_train=12, n_test=5, labels_for_train=None):
    """Write the four Fashion-MNIST IDX files with random content under ``root``."""
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte.gz": (rng.integers(0, 10, n_train) if labels_for_train is None
                                       else labels_for_train).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for name, array in files.items():
        (root / name).write_bytes(gzip.compress(idx_bytes(array)))
    return files


def test_load_fashion_mnist_scales_with_fixed_constants(tmp_path):
    """Pixels 0..255 map to [-1, 1] exactly (no data statistics), labels and shapes are kept."""
    files = _fake_fashion(tmp_path)
    data = load_fashion_mnist(tmp_path)
    raw = files["train-images-idx3-ubyte.gz"]
    assert data.pool_x.shape == (12, 1, 28, 28) and data.pool_x.dtype == np.float32
    np.testing.assert_allclose(data.pool_x[:, 0], raw.astype(np.float32) / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(data.pool_y, files["train-labels-idx1-ubyte.gz"])
    assert data.test_x.shape == (5, 1, 28, 28) and data.num_classes == 10 and data.name == "fashion-mnist"


def test_load_fashion_mnist_refuses_inconsistent_files(tmp_path):
    """Labels that disagree with the images in number, or are out of range, are refused."""
    _fake_fashion(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(11, dtype=np.uint8))))
    with pytest.raises(DatasetFormatError, match=r"train labels: expected shape \(12,\)"):
        load_fashion_mnist(tmp_path)
    _fake_fashion(tmp_path, labels_for_train=np.full(12, 10))
    with pytest.raises(DatasetFormatError, match="label 10"):
        load_fashion_mnist(tmp_path)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    """Asking for Fashion-MNIST where it is absent names the Debian package; auto falls back to digits."""
    with pytest.raises(DatasetFormatError, match="dataset-fashion-mnist"):
        load_data("fashion-mnist", root=tmp_path)
    data = load_data("auto", root=tmp_path)
    assert data.name == "digits" and "load_digits" in data.source and data.test_x is None
    assert data.pool_x.shape == (1797, 1, 8, 8) and data.pool_x.min() >= -1.0 and data.pool_x.max() <= 1.0


def test_load_data_refuses_unknown_names():
    """An unknown data name is an InvalidParameterError listing the choices."""
    with pytest.raises(InvalidParameterError, match="fashion-mnist"):
        load_data("mnist")


@given(st.integers(50, 3000), st.integers(0, 2**32 - 1), st.booleans(),
       st.floats(0.01, 0.9), st.floats(0.0, 0.3), st.floats(0.0, 0.3))
def test_splits_are_a_deterministic_partition(n, seed, has_test, forget_fraction, val, pub):
    """Same seed, same splits; the parts are disjoint; forget is round(fraction · |train|) records of train."""
    labels = np.random.default_rng(seed).integers(0, 10, n)
    kwargs = dict(seed=seed, has_test=has_test, forget_fraction=forget_fraction, validation_fraction=val,
                  public_fraction=pub)
    a, b = make_splits(labels, **kwargs), make_splits(labels, **kwargs)
    for name in ("train", "validation", "public", "forget", "retain", "test"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or np.array_equal(x, y)
    parts = [a.train, a.validation, a.public] + ([] if has_test else [a.test])
    joined = np.concatenate(parts)
    assert joined.size == np.unique(joined).size == n  # disjoint and covering the pool
    assert a.forget.size == max(1, round(forget_fraction * a.train.size))
    assert np.array_equal(np.union1d(a.forget, a.retain), a.train)
    assert np.intersect1d(a.forget, a.retain).size == 0


def test_splits_change_with_the_seed():
    """A different seed gives a different train set and forget set."""
    labels = np.zeros(1000, dtype=np.int64)
    a, b = make_splits(labels, seed=0, has_test=True), make_splits(labels, seed=1, has_test=True)
    assert not np.array_equal(a.train, b.train) and not np.array_equal(a.forget, b.forget)


def test_forget_class_takes_exactly_that_class_of_train():
    """--forget-class forgets every training record of the class and nothing else."""
    labels = np.arange(600) % 6
    s = make_splits(labels, seed=3, has_test=True, forget_class=4)
    assert np.array_equal(s.forget, s.train[labels[s.train] == 4])
    assert not np.any(labels[s.retain] == 4)


def test_max_train_caps_train_only():
    """--quick's cap keeps at most max_train training records and leaves the other parts alone."""
    labels = np.zeros(1200, dtype=np.int64)
    full = make_splits(labels, seed=0, has_test=True)
    small = make_splits(labels, seed=0, has_test=True, max_train=100)
    assert small.train.size == 100 and np.isin(small.train, full.train).all()
    assert np.array_equal(small.validation, full.validation) and small.forget.size == 10


@pytest.mark.parametrize(("kwargs", "name"), [
    (dict(forget_fraction=0.0), "forget_fraction"),
    (dict(forget_fraction=1.0), "forget_fraction"),
    (dict(forget_class=7), "forget_class"),
    (dict(validation_fraction=0.6, public_fraction=0.5), "validation_fraction"),
    (dict(max_train=1), "max_train"),
])
def test_bad_split_arguments_are_refused(kwargs, name):
    """Out-of-range fractions, an absent class or an empty train set raise naming the argument."""
    labels = np.arange(100) % 5
    with pytest.raises(InvalidParameterError, match=name):
        make_splits(labels, seed=0, has_test=True, **kwargs)


def test_loader_records_dataset_indices_and_replays_its_order():
    """A subset loader exposes pool positions as Subset.indices; two loaders with one seed give one order."""
    x = np.arange(40, dtype=np.float32).reshape(20, 1, 2, 1)
    y = np.arange(20)
    idx = np.array([3, 5, 7, 11, 13, 17])
    first = make_loader(x, y, idx, batch_size=4, shuffle=True, seed=9)
    second = make_loader(x, y, idx, batch_size=4, shuffle=True, seed=9)
    assert list(first.dataset.indices) == idx.tolist()
    order = [t.tolist() for _, t in first]
    assert order == [t.tolist() for _, t in second]
    assert sorted(i for batch in order for i in batch) == idx.tolist()
