"""The values the accountant hands out: :class:`Guarantee` and :class:`Schedule`.

A :class:`Schedule` is everything a backend needs to run the unlearning and everything a verifier
needs to recompute the guarantee (docs/theory.md#what-a-certificate-records). It is immutable and validated on
construction; change it with :func:`dataclasses.replace`, which re-validates.

Field contract (in the spirit of dp_accounting's events): a field's meaning never changes; a new field
is optional with a default that reproduces old behaviour; anything else bumps ``SCHEDULE_VERSION``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from certun._validation import choice, integer, real_number
from certun.errors import CertificateFormatError, CertunError, InvalidParameterError

__all__ = [
    "MAX_DELTA",
    "MAX_EPS",
    "MAX_SCALE",
    "MAX_STEPS",
    "MIN_DELTA",
    "MIN_SCALE",
    "SCHEDULE_VERSION",
    "Variant",
    "Mode",
    "Method",
    "Guarantee",
    "Schedule",
    "option",
    "scale",
]

SCHEDULE_VERSION = 1

E = TypeVar("E")

#: Domain of the accounting inputs (see docs/accountant.md "Numerics"): norms, step sizes and noise
#: scales in [MIN_SCALE, MAX_SCALE]; ε in (0, MAX_EPS]; δ in [MIN_DELTA, MAX_DELTA]; T ≤ MAX_STEPS.
MIN_SCALE = 1e-30
MAX_SCALE = 1e30
MAX_EPS = 100.0
MIN_DELTA = 1e-300
MAX_DELTA = 0.5
MAX_STEPS = 10_000_000


class Variant(str, enum.Enum):
    """Which unlearning algorithm the schedule is for (docs/theory.md#gradient-clipping, #model-clipping,
    #output-perturbation)."""

    GRADIENT_CLIPPING = "gradient_clipping"
    MODEL_CLIPPING = "model_clipping"
    OUTPUT_PERTURBATION = "output_perturbation"
    RETRAIN = "retrain"

    def __str__(self) -> str:
        return self.value


class Mode(str, enum.Enum):
    """Model-clipping step form (docs/theory.md#model-clipping).

    ``NOISE_AFTER_PROJECTION``: ``x ← Π_C2(x − γ(g + λx)) + N``, contraction radius ``r = 2·C2/σ``.
    ``CLIP_NOISE_BEFORE_PROJECTION``: ``x ← Π_C2(x − γ·clip(g + λx, C1) + N)``,
    ``r = 2·(C2 + γ·C1)/σ``.
    """

    NOISE_AFTER_PROJECTION = "noise_after_projection"
    CLIP_NOISE_BEFORE_PROJECTION = "clip_noise_before_projection"

    def __str__(self) -> str:
        return self.value


class Method(str, enum.Enum):
    """How σ (or T) was calibrated: ``exact`` numeric solving, or the paper's ``closed_form``."""

    EXACT = "exact"
    CLOSED_FORM = "closed_form"

    def __str__(self) -> str:
        return self.value


def scale(name: str, value: Any, why: str = "", *, allow_zero: bool = False) -> float:
    """A norm, step size or noise scale: a real number in [MIN_SCALE, MAX_SCALE] (far from under/overflow),
    or 0 where ``allow_zero``; ``why`` is appended to the error's "valid" text."""
    valid = f"a finite real number in [{MIN_SCALE:g}, {MAX_SCALE:g}]" + (" or 0" if allow_zero else "") + why
    x = real_number(name, value, valid)
    if not ((allow_zero and x == 0.0) or MIN_SCALE <= x <= MAX_SCALE):
        raise InvalidParameterError(name, value, valid)
    return x


def option(name: str, value: Any, options: Iterable[E]) -> E:
    """:func:`~certun._validation.choice` for option names (members of ``str`` enums): anything but a string,
    such as a numpy array whose ``==`` is element-wise and ambiguous, is refused like an unknown name."""
    opts = list(options)
    if not isinstance(value, str):
        shown = ", ".join(repr(getattr(o, "value", o)) for o in opts)
        raise InvalidParameterError(name, value, f"one of {shown}")
    return choice(name, value, opts)


def _scales(name: str, values: Any, *, positive: bool) -> tuple[float, ...]:
    """Validate a per-step list in one pass (T can be 1e4+, so no per-item Python calls on success)."""
    out = tuple(values)
    if out and all(type(v) is float for v in out):
        lo, hi = min(out), max(out)
        if (lo >= MIN_SCALE if positive else lo >= 0) and hi <= MAX_SCALE:
            return out
    # slow path: find and name the offending value
    return tuple(scale(name, v, allow_zero=not positive) for v in out)


@dataclass(frozen=True, slots=True)
class Guarantee:
    """An (ε, δ) pair, with the accounting details that produced it.

    ``log_delta`` is the natural log of δ and is the authoritative value when δ underflows float64
    (model clipping reaches 1e-300 and below); ``delta`` is then rounded *up* to the smallest positive
    float, never down to 0. ``eps_renyi`` and ``alpha`` are set for gradient clipping
    (docs/theory.md#gradient-clipping): the Rényi coefficient (``D_α ≤ α·eps_renyi``) and the order α at which the
    conversion was taken.
    """

    eps: float
    delta: float
    log_delta: float | None = None
    eps_renyi: float | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        for name in ("eps", "delta"):  # numpy scalars and 0-d tensors become Python floats (JSON-ready)
            value = getattr(self, name)
            if type(value) is not float:
                as_float = float(value) if isinstance(value, float) else real_number(name, value)
                object.__setattr__(self, name, as_float)
        if not (self.eps >= 0 and not math.isnan(self.eps)):
            raise InvalidParameterError("eps", self.eps, ">= 0 and not NaN")
        if not (0 <= self.delta <= 1):
            raise InvalidParameterError("delta", self.delta, "in [0, 1]")

    def as_tuple(self) -> tuple[float, float]:
        """``(eps, delta)``."""
        return (self.eps, self.delta)

    def __iter__(self):  # allows ``eps, delta = guarantee(s)``
        return iter((self.eps, self.delta))


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A planned unlearning run: the variant, every accounting input, and the guarantee.

    Per-step values are tuples of length ``T`` (``gammas``, ``sigmas``); use the properties
    ``sigma`` / ``gamma`` for the constant value (``None`` when they vary). ``sigma0`` is noise added
    once after the initial projection: optional for model clipping, and the only noise of output
    perturbation (which has ``T = 0``). ``achieved`` is derived: :func:`~certun.guarantee` of the
    other fields, computed on first use and cached on this instance, so a schedule built with
    :func:`dataclasses.replace` (new ``sigmas``, say) can never carry the old guarantee. The
    ``achieved=`` keyword is still accepted for compatibility and ignored; a verifier recomputes too.

    Source: docs/theory.md#gradient-clipping, #model-clipping, #output-perturbation (baselines),
    #what-a-certificate-records (what a certificate must record).
    """

    variant: Variant
    T: int
    C0: float | None = None
    C1: float | None = None
    C2: float | None = None
    lam: float = 0.0
    gammas: tuple[float, ...] = ()
    sigmas: tuple[float, ...] = ()
    sigma0: float | None = None
    mode: Mode | None = None
    target: Guarantee
    if TYPE_CHECKING:  # what a type checker sees: the derived, read-only guarantee

        @property
        def achieved(self) -> Guarantee:
            """The (eps, delta) guarantee of this schedule, recomputed from the fields."""
            ...
    else:
        #: ignored: the guarantee is recomputed from the fields (see :attr:`achieved`)
        achieved: InitVar[Guarantee | None] = None
    method: Method = Method.EXACT
    notes: tuple[str, ...] = field(default=())

    # ------------------------------------------------------------------ validation
    def __post_init__(self, *ignored: Any) -> None:
        """Check the fields every variant shares, then the variant's own rules (its mechanism's ``validate``).

        ``ignored`` receives the ``achieved=`` keyword, never trusted: the guarantee is derived on first use.
        """
        from certun.accountant._registry import mechanism, variant_of

        set_ = object.__setattr__
        set_(self, "variant", variant_of(self.variant))
        set_(self, "method", option("method", self.method, Method))
        if self.mode is not None:
            set_(self, "mode", option("mode", self.mode, Mode))
        valid_T = f"an integer in [0, {MAX_STEPS}]"
        set_(self, "T", integer("T", self.T, valid_T, low=0, high=MAX_STEPS))
        set_(self, "gammas", _scales("gamma", self.gammas, positive=False))
        set_(self, "sigmas", _scales("sigma", self.sigmas, positive=True))
        set_(self, "notes", tuple(str(n) for n in self.notes))
        for name in ("C0", "C1", "C2", "sigma0"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, scale(name, value))
        set_(self, "lam", scale("lam", self.lam, allow_zero=True))
        for name, value in mechanism(self.variant).validate(self).items():
            set_(self, name, value)

    # ------------------------------------------------------------------ conveniences
    def _guarantee(self) -> Guarantee:
        """The guarantee recomputed from the fields, cached on the instance (the fields are frozen)."""
        cached = self.__dict__.get("_achieved")
        if cached is None:
            from certun.accountant._registry import mechanism

            cached = mechanism(self.variant).guarantee(self, exact=False)
            object.__setattr__(self, "_achieved", cached)
        return cached

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles carry the fields only: the guarantee is recomputed, never transported."""
        state = dict(self.__dict__)
        state.pop("_achieved", None)
        return state

    def __repr__(self) -> str:
        """One readable line: constant σ/γ instead of T-long tuples, the derived guarantee and the notes."""
        parts = [f"variant={self.variant.value!r}", f"T={self.T}"]
        if self.mode is not None:
            parts.append(f"mode={self.mode.value!r}")
        parts += [f"{k}={getattr(self, k)!r}" for k in ("C0", "C1", "C2", "sigma0") if getattr(self, k) is not None]
        if self.T:
            parts.append(f"lam={self.lam!r}")
            for one, many in (("gamma", "gammas"), ("sigma", "sigmas")):
                value = getattr(self, one)
                parts.append(f"{one}={value!r}" if value is not None else f"{many}=<{self.T} values>")
        parts.append(f"method={self.method.value!r}")
        parts.append(f"target=({self.target.eps!r}, {self.target.delta!r})")
        try:
            a = self.achieved
            parts.append(f"achieved=({a.eps!r}, {a.delta!r})")
        except CertunError as exc:  # a repr must not raise
            parts.append(f"achieved=<not computable: {exc}>")
        if self.notes:
            parts.append(f"notes={self.notes!r}")
        return f"Schedule({', '.join(parts)})"

    @property
    def sigma(self) -> float | None:
        """The constant per-step σ, or ``None`` if it varies or there are no steps."""
        return _constant(self.sigmas)

    @property
    def gamma(self) -> float | None:
        """The constant step size γ, or ``None`` if it varies or there are no steps."""
        return _constant(self.gammas)

    @property
    def eps(self) -> float:
        """The target ε."""
        return self.target.eps

    @property
    def delta(self) -> float:
        """The target δ."""
        return self.target.delta

    # ------------------------------------------------------------------ JSON round trip
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every input of the accounting plus target and achieved guarantee.

        Constant schedules are written as ``sigma``/``gamma`` (and ``sigmas``/``gammas`` null);
        varying ones as lists. ``Schedule.from_dict(s.to_dict()) == s``.
        """
        sigma, gamma = self.sigma, self.gamma
        a = self.achieved
        return {
            "schedule_version": SCHEDULE_VERSION,
            "variant": self.variant.value,
            "mode": self.mode.value if self.mode is not None else None,
            "method": self.method.value,
            "C0": self.C0,
            "C1": self.C1,
            "C2": self.C2,
            "lam": self.lam,
            "T": self.T,
            "gamma": gamma,
            "gammas": None if (gamma is not None or not self.gammas) else list(self.gammas),
            "sigma": sigma,
            "sigmas": None if (sigma is not None or not self.sigmas) else list(self.sigmas),
            "sigma0": self.sigma0,
            "eps": self.target.eps,
            "delta": self.target.delta,
            "achieved_eps": a.eps,
            "achieved_delta": a.delta,
            "achieved_log_delta": a.log_delta,
            "eps_renyi": a.eps_renyi,
            "alpha": a.alpha,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Rebuild a schedule from :meth:`to_dict` output; refuses unknown versions and keys."""
        if not isinstance(data, Mapping):
            raise CertificateFormatError(f"a schedule must be a JSON object, got {type(data).__name__}")
        version = data.get("schedule_version")
        if version != SCHEDULE_VERSION:
            raise CertificateFormatError(
                f"unknown schedule_version {version!r}; this certun reads version {SCHEDULE_VERSION}"
            )
        known = set(cls(variant=Variant.RETRAIN, T=0, target=Guarantee(0.0, 0.0)).to_dict())
        unknown = sorted(set(data) - known)
        if unknown:
            raise CertificateFormatError(f"unknown schedule keys {unknown}; valid keys are {sorted(known)}")
        missing = sorted(k for k in ("variant", "T", "eps", "delta", "achieved_eps", "achieved_delta")
                         if k not in data)
        if missing:
            raise CertificateFormatError(f"schedule is missing keys {missing}")
        T = data["T"]
        if isinstance(T, bool) or not isinstance(T, int):
            raise CertificateFormatError(f"schedule T must be an integer, got {T!r}")
        sigmas = _expand(data, "sigma", "sigmas", T)
        gammas = _expand(data, "gamma", "gammas", T)
        try:
            Guarantee(  # the stored values must form a guarantee, though the schedule recomputes its own
                float(data["achieved_eps"]),
                float(data["achieved_delta"]),
                log_delta=data.get("achieved_log_delta"),
                eps_renyi=data.get("eps_renyi"),
                alpha=data.get("alpha"),
            )
            return cls(
                variant=data["variant"],
                mode=data.get("mode"),
                method=data.get("method", "exact"),
                T=T,
                C0=data.get("C0"),
                C1=data.get("C1"),
                C2=data.get("C2"),
                lam=data.get("lam", 0.0),
                gammas=gammas,
                sigmas=sigmas,
                sigma0=data.get("sigma0"),
                target=Guarantee(float(data["eps"]), float(data["delta"])),
                notes=tuple(data.get("notes") or ()),
            )
        except (TypeError, InvalidParameterError) as exc:
            raise CertificateFormatError(f"invalid schedule: {exc}") from exc


if not TYPE_CHECKING:  # after @dataclass, which read the InitVar above
    Schedule.achieved = property(
        Schedule._guarantee,
        doc="The (eps, delta) guarantee of this schedule: ``guarantee(self)``, recomputed from the fields, "
            "never stored.")


def _constant(values: tuple[float, ...]) -> float | None:
    if values and min(values) == max(values):
        return values[0]
    return None


def _expand(data: Mapping[str, Any], scalar_key: str, list_key: str, T: int) -> tuple[float, ...]:
    scalar, values = data.get(scalar_key), data.get(list_key)
    if scalar is not None and values is not None:
        raise CertificateFormatError(f"schedule gives both {scalar_key!r} and {list_key!r}; give one")
    if values is not None:
        if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
            raise CertificateFormatError(f"schedule {list_key!r} must be a list")
        return tuple(values)
    if scalar is not None:
        if T < 1:
            raise CertificateFormatError(f"schedule gives {scalar_key!r} but T={T} has no steps")
        return (scalar,) * T
    return ()
