"""Data for the reproduction benchmark: arrays, train/validation/test splits, forget sets, public halves.

Two sources, neither downloads anything: scikit-learn's bundled ``digits`` (8×8 images, 1797 samples)
and Fashion-MNIST from the Debian package's IDX files (``/usr/share/datasets/fashion-mnist/``), both read
by the demo's loaders (:mod:`certun.demo.data`: one IDX reader, one scaling to [-1, 1]).

The split of the pooled data into train / validation / test is fixed (seed 0) so that every seed of
the benchmark is scored on the same test set; what varies per seed is the forget set, the model
initialisation and the noise. Hyperparameters are chosen on validation only (docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from certun.demo.data import load_digits_data, load_fashion_mnist

__all__ = [
    "DATASETS",
    "FORGET_SCENARIOS",
    "Split",
    "Splits",
    "forget_mask",
    "load_arrays",
    "make_splits",
]

DATASETS = ("digits", "fashion-mnist")
FORGET_SCENARIOS = ("random10", "class")


def load_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """All samples of a data set pooled (the demo's pool, then its test set): images ``(n, 1, h, w)``
    float32 in [-1, 1] and int64 labels."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    data = load_fashion_mnist() if name == "fashion-mnist" else load_digits_data()
    xs, ys = [data.pool_x], [data.pool_y]
    if data.test_x is not None:
        xs.append(data.test_x)
        ys.append(data.test_y)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


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
    #: records outside train / validation / test that a public model may be pretrained on (``n_public``).
    public: Split | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, ``(1, h, w)``."""
        return tuple(self.train.x.shape[1:])


def make_splits(name: str, *, n_train: int | None = None, n_val: int | None = None,
                n_test: int | None = None, n_public: int = 0) -> Splits:
    """Shuffle the pooled data once (seed 0) and cut it into train / validation / test (/ public).

    Defaults: digits 60/20/20 % of its 1797 samples; Fashion-MNIST 10 000 / 2 000 / 5 000 samples
    (a subset, to fit a shared 2-core CPU). Smaller sizes give the ``--quick`` mode. ``n_public`` > 0
    also cuts a public split from the pooled records after those three (disjoint from all of them).
    """
    x, y = load_arrays(name)
    order = np.random.default_rng(0).permutation(len(y))
    if name == "digits":
        n_train = n_train or int(0.6 * len(y))
        n_val = n_val or int(0.2 * len(y))
        n_test = n_test or len(y) - int(0.6 * len(y)) - int(0.2 * len(y))
    else:
        n_train, n_val, n_test = n_train or 10_000, n_val or 2_000, n_test or 5_000
    if n_train + n_val + n_test + n_public > len(y):
        raise ValueError(f"{name} has {len(y)} samples, asked for {n_train}+{n_val}+{n_test}+{n_public}")
    tr, va, te, pu = np.split(order[:n_train + n_val + n_test + n_public],
                              [n_train, n_train + n_val, n_train + n_val + n_test])
    return Splits(name=name, train=Split(x[tr], y[tr]), val=Split(x[va], y[va]), test=Split(x[te], y[te]),
                  n_classes=int(y.max()) + 1, public=Split(x[pu], y[pu]) if n_public else None)


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
