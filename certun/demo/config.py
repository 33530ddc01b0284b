"""What ``certun demo`` runs: the :class:`DemoConfig`, checked on construction, and the planning
hyperparameters it implies, all fixed from the architecture and a compute budget before any data is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from certun._validation import choice, integer, real_in_range
from certun.accountant import MAX_DELTA, MAX_EPS, MAX_SCALE, MIN_DELTA, MIN_SCALE
from certun.errors import InvalidParameterError

__all__ = ["CENTERS", "CLIPS", "DEFAULT_T", "QUICK_MAX_TEST", "QUICK_MAX_TRAIN", "QUICK_T", "ROUTES", "VARIANTS",
           "DemoConfig", "default_hyperparameters", "plan_schedule"]

VARIANTS = ("gradient_clipping", "model_clipping", "output_perturbation")
CENTERS = ("zero", "init", "public")
DEVICES = ("auto", "cpu", "cuda")
CLIPS = ("per_sample", "ghost", "batch")
#: How the demo unlearns: the paper's noisy fine-tuning (certified (eps, delta)), or an exact route
#: (retraining from public weights, SISA) whose certificates achieve (0, 0) (docs/theory.md#exact-routes).
ROUTES = ("noisy", "retrain-public", "sisa")
#: Options that only the noisy route reads, with their defaults: an exact route refuses any other value.
NOISY_ONLY = {"variant": "gradient_clipping", "clip": "per_sample", "C0": None, "T": None, "noise_seed": None}
#: Noisy steps of the default and the ``--quick`` run (a compute budget, fixed in advance).
DEFAULT_T, QUICK_T = 200, 20
#: ``--quick``: at most this many training records and test records.
QUICK_MAX_TRAIN, QUICK_MAX_TEST = 2000, 1000


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Everything ``certun demo`` does, fixed before any data is read.

    Hyperparameters left ``None`` (``C0``, ``T``) follow :func:`default_hyperparameters`. ``quick``
    also caps the data at :data:`QUICK_MAX_TRAIN` / :data:`QUICK_MAX_TEST` records; build it with
    :meth:`quick_defaults` to get the small epoch counts as well.
    """

    variant: str = "gradient_clipping"
    eps: float = 1.0
    delta: float = 1e-5
    forget_fraction: float = 0.1
    forget_class: int | None = None
    data: str = "auto"
    model: str = "mlp"
    center: str = "zero"
    clip: str = "per_sample"
    seed: int = 0
    noise_seed: int | None = None
    device: str = "auto"
    quick: bool = False
    C0: float | None = None
    C1: float = 1.0
    lam: float = 0.0
    T: int | None = None
    batch_size: int = 128
    train_epochs: int = 5
    train_lr: float = 0.05
    finetune_epochs: int = 3
    finetune_lr: float = 0.05
    public_epochs: int = 3
    route: str = "noisy"
    #: SISA's shards (S) and slices (R); read by ``route="sisa"`` only.
    shards: int = 5
    slices: int = 5

    @classmethod
    def quick_defaults(cls, **overrides: Any) -> DemoConfig:
        """The ``--quick`` configuration (CI smoke test, well under a minute on one CPU core)."""
        base = dict(quick=True, train_epochs=2, finetune_epochs=1, public_epochs=1)
        base.update(overrides)
        return cls(**base)

    def __post_init__(self) -> None:
        choice("variant", self.variant, VARIANTS)
        choice("center", self.center, CENTERS)
        choice("clip", self.clip, CLIPS)
        choice("model", self.model, ("mlp", "cnn"))
        choice("data", self.data, ("auto", "fashion-mnist", "digits"))
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise InvalidParameterError("device", self.device, "auto, cpu, cuda or cuda:N")
        # the accountant's own ranges, checked here so that a bad target fails before any training
        real_in_range("eps", self.eps, low=0.0, high=MAX_EPS, low_open=True)
        real_in_range("delta", self.delta, low=MIN_DELTA, high=MAX_DELTA)
        real_in_range("C1", self.C1, low=MIN_SCALE, high=MAX_SCALE)
        if self.C0 is not None:
            real_in_range("C0", self.C0, low=MIN_SCALE, high=MAX_SCALE)
        for name in ("train_lr", "finetune_lr"):
            real_in_range(name, getattr(self, name), low=0.0, low_open=True)
        real_in_range("lam", self.lam, low=0.0, high=MAX_SCALE)
        real_in_range("forget_fraction", self.forget_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.forget_class is not None:
            integer("forget_class", self.forget_class, "an integer >= 0", low=0)
        integer("seed", self.seed, "an integer >= 0", low=0)
        if self.noise_seed is not None:
            integer("noise_seed", self.noise_seed, "an integer in [0, 2**63)", low=0, high=2**63 - 1)
        if self.T is not None:
            integer("T", self.T, "an integer >= 1", low=1)
            if self.variant == "output_perturbation":
                raise InvalidParameterError("T", self.T, "omitted for output_perturbation",
                                            hint="output perturbation is one noise draw, no noisy steps")
        for name in ("batch_size", "train_epochs", "finetune_epochs", "public_epochs", "shards", "slices"):
            integer(name, getattr(self, name), "an integer >= 1", low=1)
        self._check_route()

    def _check_route(self) -> None:
        """Refuse options the chosen route does not read (they would be silently dropped otherwise)."""
        choice("route", self.route, ROUTES)
        if self.route == "noisy":
            return
        for name, default in NOISY_ONLY.items():
            if getattr(self, name) != default:
                raise InvalidParameterError(name, getattr(self, name), f"omitted with route {self.route}",
                                            hint="only the noisy route reads it: an exact route adds no noise")
        allowed = ("zero", "public") if self.route == "retrain-public" else ("zero",)
        if self.center not in allowed:
            raise InvalidParameterError("center", self.center, f"omitted with route {self.route}",
                                        hint="retrain-public always starts from the public weights; sisa "
                                        "trains each shard from a fresh initialisation")


def default_hyperparameters(config: DemoConfig, reference_norm: float) -> dict[str, float | int]:
    """The demo's planning hyperparameters, chosen before training from public information only.

    * ``C0``: centred at 0, the L2 norm of a default PyTorch initialisation of the architecture
      (``reference_norm``, seed 0), rounded up: the noise then leaves, after the projection, a
      random point of the size of a fresh initialisation, a reasonable start for fine-tuning.
      Centred at a data-independent point (``init``, ``public``), a trust radius of a tenth of that
      norm: the projection keeps the centre's quality and the noise is ten times smaller.
    * ``C1 = 1`` (gradient clipping norm), ``lam = 0``, ``T = 200`` noisy steps (20 with ``--quick``).
    * ``gamma = C0 / (C1·T)``, so that ``T`` is the paper's optimal number of steps ``T* = C0/(γ C1)``
      for λ = 0 (docs/theory.md#gradient-clipping).
    * Model clipping: ``C2 = C0`` and the same γ and T. Output perturbation: only ``C0``.

    Nothing here looks at the data, let alone at the forget set (docs/theory.md#soundness-rules).
    """
    if config.C0 is not None:
        C0 = float(config.C0)
    elif config.center == "zero":
        C0 = float(math.ceil(reference_norm))
    else:
        C0 = math.ceil(reference_norm) / 10.0
    T = config.T if config.T is not None else (QUICK_T if config.quick else DEFAULT_T)
    return {"C0": C0, "C1": float(config.C1), "lam": float(config.lam), "T": int(T),
            "gamma": C0 / (float(config.C1) * T)}


def plan_schedule(config: DemoConfig, hyper: dict[str, float | int]) -> Any:
    """The :class:`~certun.Schedule` of the chosen variant at (ε, δ) (exact calibration of σ)."""
    from certun.accountant import plan

    if config.variant == "output_perturbation":
        return plan(config.eps, config.delta, hyper["C0"], variant="output_perturbation")
    if config.variant == "model_clipping":
        return plan(config.eps, config.delta, hyper["C0"], None, hyper["lam"], gamma=hyper["gamma"],
                    T=hyper["T"], variant="model_clipping", C2=hyper["C0"])
    return plan(config.eps, config.delta, hyper["C0"], hyper["C1"], hyper["lam"], gamma=hyper["gamma"],
                T=hyper["T"], variant="gradient_clipping")
