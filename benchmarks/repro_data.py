"""Data for the reproduction benchmark: arrays, train/validation/test splits, forget sets, public halves.

Two sources, neither downloads anything: scikit-learn's bundled ``digits`` (8×8 images, 1797 samples)
and Fashion-MNIST from the Debian package's IDX files (``/usr/share/datasets/fashion-mnist/``), both read
through ``certun.data`` when that module exists, else by the minimal readers below (same scaling).

The split of the pooled data into train / validation / test is fixed (seed 0) so that every seed of
the benchmark is scored on the same test set; what varies per seed is the forget set, the model
initialisation and the noise. Hyperparameters are chosen on validation only (docs/results.md).
"""

from __future__ import annotations

import gzip
import importlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DATASETS",
    "FASHION_DIR",
    "FORGET_SCENARIOS",
    "Split",
    "Splits",
    "forget_mask",
    "load_arrays",
    "make_splits",
    "read_idx",
]

DATASETS = ("digits", "fashion-mnist")
FORGET_SCENARIOS = ("random10", "class")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """Read one (gzipped) IDX file as a numpy array: the MNIST container format (magic, dims, data)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4]!r})")
    dtype_code, ndim = raw[2], raw[3]
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{dtype_code:02x}")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} values")
    return data.reshape(shape)


def _scale(images: np.ndarray, maximum: float) -> np.ndarray:
    """Pixels ``[0, maximum]`` -> float32 ``[-1, 1]`` with a channel axis (the scaling certun.data uses)."""
    x = np.asarray(images).astype(np.float32) * np.float32(2.0 / maximum) - np.float32(1.0)
    return x.reshape(len(x), 1, *x.shape[-2:])


def _from_certun_data(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The pooled arrays from ``certun.data`` (pool and test set together), or ``None`` if it is absent."""
    try:
        data_module = importlib.import_module("certun.data")
    except ModuleNotFoundError:
        return None
    loader = getattr(data_module, "load_fashion_mnist" if name == "fashion-mnist" else "load_digits_data", None)
    if loader is None:
        return None
    data = loader()
    xs, ys = [data.pool_x], [data.pool_y]
    if data.test_x is not None:
        xs.append(data.test_x)
        ys.append(data.test_y)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def load_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """All samples of a data set pooled: images ``(n, 1, h, w)`` float32 in [-1, 1] and int64 labels.

    Uses ``certun.data`` when it is installed, else the minimal readers here (same scaling).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    pooled = _from_certun_data(name)
    if pooled is not None:
        return pooled
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return _scale(bunch.images, 16.0), bunch.target.astype(np.int64)
    if not FASHION_DIR.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST not found in {FASHION_DIR}; install the Debian package "
                                "(dataset-fashion-mnist) or use --data digits")
    parts = [(read_idx(FASHION_DIR / f"{p}-images-idx3-ubyte.gz"), read_idx(FASHION_DIR / f"{p}-labels-idx1-ubyte.gz"))
             for p in ("train", "t10k")]
    return (np.concatenate([_scale(x, 255.0) for x, _ in parts]),
            np.concatenate([y.astype(np.int64) for _, y in parts]))


@dataclass(frozen=True)
class Split:
    """One part of the data: images and labels (numpy)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask_or_index: np.ndarray) -> Split:
        """The samples selected by a boolean mask or an index array."""
        return Split(self.x[mask_or_index], self.y[mask_or_index])


@dataclass(frozen=True)
class Splits:
    """Train / validation / test parts of one data set (fixed across seeds)."""

    name: str
    train: Split
    val: Split
    test: Split
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, ``(1, h, w)``."""
        return tuple(self.train.x.shape[1:])


def make_splits(name: str, *, n_train: int | None = None, n_val: int | None = None,
                n_test: int | None = None) -> Splits:
    """Shuffle the pooled data once (seed 0) and cut it into train / validation / test.

    Defaults: digits 60/20/20 % of its 1797 samples; Fashion-MNIST 10 000 / 2 000 / 5 000 samples
    (a subset, to fit a shared 2-core CPU). Smaller sizes give the ``--quick`` mode.
    """
    x, y = load_arrays(name)
    order = np.random.default_rng(0).permutation(len(y))
    if name == "digits":
        n_train = n_train or int(0.6 * len(y))
        n_val = n_val or int(0.2 * len(y))
        n_test = n_test or len(y) - int(0.6 * len(y)) - int(0.2 * len(y))
    else:
        n_train, n_val, n_test = n_train or 10_000, n_val or 2_000, n_test or 5_000
    if n_train + n_val + n_test > len(y):
        raise ValueError(f"{name} has {len(y)} samples, asked for {n_train}+{n_val}+{n_test}")
    tr, va, te = np.split(order[:n_train + n_val + n_test], [n_train, n_train + n_val])
    return Splits(name=name, train=Split(x[tr], y[tr]), val=Split(x[va], y[va]), test=Split(x[te], y[te]),
                  n_classes=int(y.max()) + 1)


def forget_mask(y: np.ndarray, scenario: str, seed: int, *, fraction: float = 0.1) -> tuple[np.ndarray, str]:
    """Boolean mask of the forget set and a description.

    ``random10``: a uniformly random ``fraction`` of the samples. ``class``: every sample of one class,
    drawn from the seed. Neither choice influences any hyperparameter (docs/theory.md#soundness-rules).
    """
    rng = np.random.default_rng(10_000 + seed)
    mask = np.zeros(len(y), dtype=bool)
    if scenario == "random10":
        mask[rng.choice(len(y), size=max(1, round(fraction * len(y))), replace=False)] = True
        return mask, f"random {fraction:.0%} of train"
    if scenario == "class":
        cls = int(rng.integers(int(y.max()) + 1))
        mask[y == cls] = True
        return mask, f"all of class {cls}"
    raise ValueError(f"unknown forget scenario {scenario!r}; valid: {', '.join(FORGET_SCENARIOS)}")
