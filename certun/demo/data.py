"""Data for ``certun demo``: an IDX parser, Fashion-MNIST or scikit-learn's digits, seeded splits.

Nothing here downloads anything. Fashion-MNIST is read from the Debian package
``dataset-fashion-mnist`` (gzipped IDX files under ``/usr/share/datasets/fashion-mnist/``); when those
files are absent the demo falls back to scikit-learn's bundled ``load_digits`` and says so.

Pre-processing uses fixed constants (pixels scaled to [-1, 1]), never statistics of the training set:
a mean or standard deviation computed over D would depend on the forget set too, and everything that
depends on D must be unlearned or rebuilt from retain data (docs/theory.md#soundness-rules).

Record identifiers are dataset indices: positions in the pool the training split is drawn from (the
Fashion-MNIST training file, or the digits array), which is what the certificate's Merkle roots commit
to (``id_scheme="dataset-index"``).
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from certun._validation import integer, real_in_range
from certun.errors import DatasetFormatError, InvalidParameterError

__all__ = [
    "DATA_CHOICES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "DatasetFormatError",
    "DemoData",
    "Splits",
    "fashion_mnist_available",
    "load_data",
    "load_digits_data",
    "load_fashion_mnist",
    "make_loader",
    "make_splits",
    "read_idx",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
DATA_CHOICES = ("auto", "fashion-mnist", "digits")

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


# ----------------------------------------------------------------------------------------- IDX files
def read_idx(source: str | os.PathLike[str] | bytes) -> np.ndarray:
    """Parse an IDX file (the MNIST format), gzipped or not, into a numpy array in native byte order.

    Format: two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions ``n``, then ``n`` big-endian uint32 sizes and the data in
    C order. The payload must hold exactly ``prod(sizes)`` items: a truncated or padded file is refused.

    Args:
        source: a path, or the file's bytes (gzip is detected from its magic bytes ``1f 8b``).

    Returns:
        An array of shape ``sizes``; ubyte files give ``uint8``.

    Raises:
        DatasetFormatError: the file cannot be read or is not a well-formed IDX file; the message says
            what was found and what was expected.
    """
    name = "<bytes>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
    else:
        name = os.fspath(source)
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            raise DatasetFormatError(f"cannot read IDX file {name}: {exc}") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DatasetFormatError(f"{name}: corrupt gzip stream: {exc}") from exc
    if len(raw) < 4:
        raise DatasetFormatError(f"{name}: {len(raw)} bytes, too short for an IDX header (4 bytes at least)")
    if raw[0] != 0 or raw[1] != 0:
        raise DatasetFormatError(f"{name}: bad IDX magic number {raw[:4].hex()}: the first two bytes must be 00 00")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DatasetFormatError(f"{name}: unknown IDX type code 0x{code:02X}; valid codes are {valid}")
    if ndim == 0:
        raise DatasetFormatError(f"{name}: IDX header declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{name}: header needs {header} bytes for {ndim} dimensions, file has {len(raw)}")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        raise DatasetFormatError(
            f"{name}: payload is {got} bytes but the header's shape {shape} of {dtype.name} needs {expected}"
            + (" (file truncated)" if got < expected else " (trailing bytes)"))
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


# ----------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True, kw_only=True)
class DemoData:
    """A labelled image pool (the training file) and a separate test set, pre-processed.

    Attributes:
        name: ``"fashion-mnist"`` or ``"digits"``.
        source: where the data came from, in words (printed in the report).
        classes: class names, index = label.
        pool_x, pool_y: images ``(N, 1, H, W)`` float32 in [-1, 1] and int64 labels; record
            identifiers are positions in this pool.
        test_x, test_y: the held-out test set, same format (``None`` when the source has no separate
            test set; :func:`make_splits` then carves one out of the pool).
    """

    name: str
    source: str
    classes: tuple[str, ...]
    pool_x: np.ndarray
    pool_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, ``(channels, height, width)``."""
        return tuple(self.pool_x.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


def _scale(images: np.ndarray, maximum: float) -> np.ndarray:
    """Pixels ``[0, maximum]`` -> float32 ``[-1, 1]`` with a leading channel axis (fixed constants only)."""
    x = images.astype(np.float32) * np.float32(2.0 / maximum) - np.float32(1.0)
    return x[:, None, :, :]


def fashion_mnist_available(root: str | os.PathLike[str] = FASHION_MNIST_DIR) -> bool:
    """Whether the four Fashion-MNIST IDX files exist under ``root``."""
    return all((Path(root) / f).is_file() for f in _FASHION_FILES.values())


def load_fashion_mnist(root: str | os.PathLike[str] = FASHION_MNIST_DIR) -> DemoData:
    """Fashion-MNIST from the Debian package's IDX files: 60,000 training and 10,000 test images.

    Raises:
        DatasetFormatError: a file is missing or malformed, or images and labels disagree in number,
            size or label range.
    """
    root = Path(root)
    arrays = {}
    for key, filename in _FASHION_FILES.items():
        path = root / filename
        if not path.is_file():
            raise DatasetFormatError(f"Fashion-MNIST file {path} not found (install the Debian package "
                                     "dataset-fashion-mnist, or use --data digits)")
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != (28, 28):
            raise DatasetFormatError(f"{split} images: expected uint8 of shape (N, 28, 28), got "
                                     f"{images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetFormatError(f"{split} labels: expected shape ({images.shape[0]},), got {labels.shape}")
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise DatasetFormatError(f"{split} labels: found label {int(labels.max())}, expected 0..9")
    return DemoData(
        name="fashion-mnist",
        source=f"Fashion-MNIST, IDX files in {root} (Debian package dataset-fashion-mnist)",
        classes=FASHION_MNIST_CLASSES,
        pool_x=_scale(arrays["train_images"], 255.0),
        pool_y=arrays["train_labels"].astype(np.int64),
        test_x=_scale(arrays["test_images"], 255.0),
        test_y=arrays["test_labels"].astype(np.int64),
    )


def load_digits_data() -> DemoData:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, no separate test set).

    Raises:
        DatasetFormatError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DatasetFormatError("the digits fallback needs scikit-learn (pip install 'certun[demo]')") from exc
    bunch = load_digits()
    images = np.asarray(bunch.images)  # (1797, 8, 8), values 0..16
    return DemoData(
        name="digits",
        source="scikit-learn's bundled load_digits (8x8 handwritten digits; Fashion-MNIST files not used)",
        classes=tuple(str(i) for i in range(10)),
        pool_x=_scale(images, 16.0),
        pool_y=np.asarray(bunch.target, dtype=np.int64),
        test_x=None,
        test_y=None,
    )


def load_data(which: str = "auto", *, root: str | os.PathLike[str] = FASHION_MNIST_DIR) -> DemoData:
    """The demo's data: ``"fashion-mnist"``, ``"digits"``, or ``"auto"`` (Fashion-MNIST if installed).

    Raises:
        InvalidParameterError: ``which`` is not one of :data:`DATA_CHOICES`.
        DatasetFormatError: Fashion-MNIST was asked for explicitly and is missing or malformed.
    """
    if which not in DATA_CHOICES:
        raise InvalidParameterError("data", which, "one of " + ", ".join(DATA_CHOICES))
    if which == "digits" or (which == "auto" and not fashion_mnist_available(root)):
        return load_digits_data()
    return load_fashion_mnist(root)


# ----------------------------------------------------------------------------------------- splits
@dataclass(frozen=True, kw_only=True)
class Splits:
    """Disjoint index sets into :attr:`DemoData.pool_x` (sorted int64 arrays).

    ``train`` is the training set D; ``forget`` ⊂ ``train`` is D_f and ``retain`` = ``train`` ∖
    ``forget``. ``validation`` monitors training. ``public`` is never part of D: it is used only
    with ``--public-center`` and otherwise ignored, so D is the same with or without a centre.
    ``test`` indexes the pool only when the data has no separate test set (else it is ``None``).
    """

    train: np.ndarray
    validation: np.ndarray
    public: np.ndarray
    forget: np.ndarray
    retain: np.ndarray
    test: np.ndarray | None = None


def _test_cut(order: np.ndarray, test_fraction: float) -> tuple[np.ndarray, int]:
    """The test split (the first ``max(1, round(test_fraction · n))`` of ``order``, sorted) and its size."""
    test_fraction = real_in_range("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    n_test = max(1, round(test_fraction * order.size))
    return np.sort(order[:n_test]), n_test


def _train(train_order: np.ndarray, max_train: int | None, held_out: float, n: int) -> np.ndarray:
    """The training records (at most ``max_train``, sorted); raises when fewer than 2 are left."""
    if max_train is not None:
        train_order = train_order[:integer("max_train", max_train, "an integer >= 2 or None", low=2)]
    if train_order.size < 2:
        raise InvalidParameterError("validation_fraction + public_fraction", held_out,
                                    f"small enough to leave at least 2 training records of {n}")
    return np.sort(train_order)


def make_splits(
    labels: np.ndarray,
    *,
    seed: int,
    has_test: bool,
    validation_fraction: float = 1 / 12,
    public_fraction: float = 1 / 6,
    test_fraction: float = 0.2,
    forget_fraction: float | None = 0.1,
    forget_class: int | None = None,
    max_train: int | None = None,
) -> Splits:
    """Seeded, deterministic splits of a labelled pool into train / validation / public (/ test) and forget.

    The pool is permuted once with ``numpy.random.default_rng(seed)`` and cut in order: test (only
    when the data has no separate test set), validation, public, and the rest is train. The forget set
    is a uniformly random ``round(forget_fraction · |train|)`` of train (at least one record), or every
    training record of class ``forget_class``. Nothing here looks at the data beyond the labels of a
    requested forget class.

    Args:
        labels: the pool's labels (only their number is used, and the values for ``forget_class``).
        seed: any integer; the same seed and arguments give the same splits.
        has_test: whether the data has a separate test set (else ``test_fraction`` of the pool is one).
        validation_fraction, public_fraction, test_fraction: shares of the pool, in [0, 1), (0, 1) for test.
        forget_fraction: share of train to forget (ignored when ``forget_class`` is given).
        forget_class: forget a whole class instead.
        max_train: keep at most this many training records (the rest of train is dropped; used by
            ``--quick``).

    Raises:
        InvalidParameterError: a fraction out of range, an absent class, or a split that leaves the
            training, retain or forget set empty.
    """
    labels = np.asarray(labels)
    n = int(labels.shape[0])
    validation_fraction = real_in_range("validation_fraction", validation_fraction, low=0.0, high=1.0, high_open=True)
    public_fraction = real_in_range("public_fraction", public_fraction, low=0.0, high=1.0, high_open=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    test, cut = (None, 0) if has_test else _test_cut(order, test_fraction)
    n_val = round(validation_fraction * n)
    n_pub = round(public_fraction * n)
    validation = np.sort(order[cut:cut + n_val])
    public = np.sort(order[cut + n_val:cut + n_val + n_pub])
    train = _train(order[cut + n_val + n_pub:], max_train, validation_fraction + public_fraction, n)
    forget = _forget_set(labels, train, seed, forget_fraction, forget_class)
    retain = np.setdiff1d(train, forget, assume_unique=True)
    if retain.size == 0:
        raise InvalidParameterError("forget set", f"{forget.size} of {train.size} training records",
                                    "a proper subset of train (the retain set would be empty)")
    return Splits(train=train.astype(np.int64), validation=validation.astype(np.int64),
                  public=public.astype(np.int64), forget=forget.astype(np.int64), retain=retain.astype(np.int64),
                  test=None if test is None else test.astype(np.int64))


def _forget_set(labels: np.ndarray, train: np.ndarray, seed: int, forget_fraction: float | None,
                forget_class: int | None) -> np.ndarray:
    """Every training record of ``forget_class``, or a random ``forget_fraction`` of train (at least one)."""
    if forget_class is not None:
        if isinstance(forget_class, bool) or not isinstance(forget_class, (int, np.integer)):
            raise InvalidParameterError("forget_class", forget_class, "an integer class label")
        forget = train[labels[train] == int(forget_class)]
        if forget.size == 0:
            present = sorted(int(c) for c in np.unique(labels[train]))
            raise InvalidParameterError("forget_class", forget_class, f"a class present in train: {present}")
        return forget
    if forget_fraction is None:
        raise InvalidParameterError("forget_fraction", None, "in (0, 1) when no forget_class is given")
    forget_fraction = real_in_range("forget_fraction", forget_fraction, low=0.0, high=1.0, low_open=True,
                                    high_open=True)
    n_forget = max(1, round(forget_fraction * train.size))
    # a second, independent stream so that changing the fraction does not reshuffle train
    chooser = np.random.default_rng([seed, 1])
    return np.sort(chooser.choice(train, size=n_forget, replace=False))


# ----------------------------------------------------------------------------------------- loaders
def make_loader(x: np.ndarray, y: np.ndarray, indices: np.ndarray | None = None, *, batch_size: int,
                shuffle: bool, seed: int | None = None) -> Any:
    """A ``torch`` ``DataLoader`` over ``(x[i], y[i])`` for ``i`` in ``indices`` (all rows if ``None``).

    With ``indices`` the loader's dataset is a ``torch.utils.data.Subset`` of the whole array, so the
    torch backend records the pool positions as identifiers (``id_scheme="dataset-index"``). Shuffling
    uses its own ``torch.Generator`` seeded with ``seed``, never the global RNG, so that two loaders
    built with the same arguments give the same batches in the same order.
    """
    import torch
    from torch.utils.data import DataLoader, Subset, TensorDataset

    batch_size = integer("batch_size", batch_size, "an integer >= 1", low=1)
    dataset: Any = TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y)))
    if indices is not None:
        dataset = Subset(dataset, [int(i) for i in indices])
    generator = None
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(0 if seed is None else int(seed))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)
