"""The run options: every option set an enum defined once here, every option validated once, here.

Every option is checked before any work starts and refused with an
:class:`~certun.errors.InvalidParameterError` that names the value and what is valid (no misspelt option
falls back to a default). Options are accepted as enum members or as their string values.
"""

from __future__ import annotations

import dataclasses
import enum
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from certun._validation import choice, integer, real_number
from certun.accountant import Mode, Schedule, Variant
from certun.backends._checkpoint_file import check_options as check_checkpoint
from certun.certificates.provenance import resolve_seed
from certun.errors import InvalidParameterError

__all__ = [
    "After",
    "AttributesMode",
    "BufferMode",
    "ClipMode",
    "Clipping",
    "FrozenMode",
    "Noise",
    "NoiseMode",
    "Postprocess",
    "RunOptions",
    "Unlearned",
    "UnsafeNoiseWarning",
    "clipping_for",
]


class ClipMode(str, enum.Enum):
    """How gradients are clipped where the variant clips: each sample's (Opacus hooks, certun's
    ``nn.Linear`` path or ``torch.func``), each sample's by ghost clipping, or the minibatch mean."""

    PER_SAMPLE = "per_sample"
    GHOST = "ghost"
    BATCH = "batch"


class Postprocess(str, enum.Enum):
    """After the noisy phase: project back onto the C0 ball (free, docs/theory.md#utility-limit), or not."""

    PROJECT_C0 = "project_C0"
    NONE = "none"


class NoiseMode(str, enum.Enum):
    """Fresh noise at every step; the reused draw is an audit control that voids the guarantee."""

    FRESH = "fresh"
    REUSE_FIRST_DRAW_UNSAFE = "reuse_first_draw_UNSAFE"


class BufferMode(str, enum.Enum):
    """Model buffers: refuse data-dependent ones, recompute norm statistics from retain data, or assert public."""

    REJECT = "reject"
    RECOMPUTE = "recompute"
    PUBLIC = "public"


class FrozenMode(str, enum.Enum):
    """Parameters left out of the unlearned set: refuse them, or assert they are independent of D."""

    REJECT = "reject"
    PUBLIC = "public"


class AttributesMode(str, enum.Enum):
    """Arrays kept as plain module attributes: refuse them, or assert they are independent of D."""

    REJECT = "reject"
    PUBLIC = "public"


class _Group:
    """A typed group of backend keywords: ``keywords()`` gives the fields set away from their defaults."""

    #: field -> the backend keyword it stands for (where the names differ)
    _KEYWORDS: ClassVar[dict[str, str]] = {}

    def keywords(self) -> dict[str, Any]:
        """The backend keywords this group sets (fields left at their default are not passed)."""
        default = type(self)()
        return {self._KEYWORDS.get(f.name, f.name): getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not getattr(default, f.name)
                and getattr(self, f.name) != getattr(default, f.name)}


@dataclass(frozen=True, kw_only=True)
class Unlearned(_Group):
    """What is unlearned, and what the caller declares independent of D (the torch backend's model options)."""

    params: Any = None
    frozen: FrozenMode | str = FrozenMode.REJECT
    attributes: AttributesMode | str = AttributesMode.REJECT
    buffers: BufferMode | str = BufferMode.REJECT


@dataclass(frozen=True, kw_only=True)
class Clipping(_Group):
    """How gradients are clipped where the variant clips."""

    _KEYWORDS: ClassVar[dict[str, str]] = {"mode": "clip"}

    mode: ClipMode | str = ClipMode.PER_SAMPLE


@dataclass(frozen=True, kw_only=True)
class After(_Group):
    """What runs after the noisy phase, on retain data only (post-processing, docs/theory.md#definition)."""

    postprocess: Postprocess | str = Postprocess.PROJECT_C0
    finetune_epochs: int = 0
    finetune_lr: float = 0.05


@dataclass(frozen=True, kw_only=True)
class Noise(_Group):
    """Where the noise comes from: the key's seed (``None``: fresh from the OS), the mode, a test source."""

    _KEYWORDS: ClassVar[dict[str, str]] = {"mode": "noise_mode", "source": "noise_source"}

    mode: NoiseMode | str = NoiseMode.FRESH
    seed: int | Mapping[str, Any] | None = None
    source: Callable[[int, int], Any] | None = None


class UnsafeNoiseWarning(UserWarning):
    """A run whose noise does not satisfy docs/theory.md#soundness-rules (audit controls only); it gets no
    certificate."""


def _mode(name: str, value: Any, options: type[enum.Enum]) -> str:
    """The string value of the option ``value`` (an enum member or its value) of ``options``."""
    return choice(name, value, options).value


def opening_secret(opening: Any) -> tuple[bytes, str, int | None]:
    """``(secret, origin, seed)`` of a run's key opening (``result.seed_opening``), for an audit replay.

    The owner of a run, or a trusted auditor holding its opening, replays the committed run exactly by
    passing the opening as ``seed``; the run key is still derived from every run input, so the replay
    reproduces the noise only for the same inputs. Raises InvalidParameterError on anything else.
    """
    valid = "the seed_opening mapping of a previous run (keys scheme, secret, salt, origin)"
    if not isinstance(opening, Mapping):
        raise InvalidParameterError("seed", f"<{type(opening).__name__}>", valid)
    secret_hex, origin = opening.get("secret"), opening.get("origin")
    try:
        secret = bytes.fromhex(secret_hex) if isinstance(secret_hex, str) else b""
    except ValueError:
        secret = b""
    if len(secret) < 16 or origin not in ("os", "user_seed"):
        raise InvalidParameterError("seed", "<opening>", valid)
    seed = opening.get("seed")
    return secret, origin, None if seed is None else resolve_seed(seed)


def clipping_for(schedule: Schedule, clip: str) -> str | None:
    """The gradient clipping a run actually does: ``clip`` where the variant clips gradients, else ``None``.

    Gradient clipping (docs/theory.md#gradient-clipping) and model clipping's ``clip_noise_before_projection`` mode
    (docs/theory.md#model-clipping) clip; model clipping's ``noise_after_projection`` mode, output perturbation and
    retraining do not.
    """
    variant = schedule.variant
    if variant is Variant.GRADIENT_CLIPPING:
        return clip
    if variant is Variant.MODEL_CLIPPING and schedule.mode is Mode.CLIP_NOISE_BEFORE_PROJECTION:
        return clip
    return None


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """The validated options of one run (both backends); modes are stored as their string values.

    ``buffers``, ``frozen`` and ``attributes`` are the torch backend's (``None`` for a backend whose models
    have no buffers, frozen parameters or module attributes).
    """

    clip: str
    postprocess: str
    finetune_epochs: int
    finetune_lr: float
    noise_mode: str
    progress: bool
    callback: Callable[[int, Any], None] | None
    noise_source: Callable[[int, int], Any] | None
    buffers: str | None = None
    frozen: str | None = None
    attributes: str | None = None
    #: the run replays a previous run's key opening (an audit): same key, so never a second certificate
    replay: bool = False
    #: a private folder for the run's checkpoints, and the noisy steps between two (docs/backends.md)
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None

    @property
    def recorded_noise_mode(self) -> str:
        """What the run record says about its noise: ``"injected"`` when ``noise_source`` supplied it.

        ``certificates.issue`` refuses every mode but ``"fresh"``, so a record of a run whose noise came
        from a test hook (zeros, say) can never be certified, even by calling ``issue`` directly.
        """
        if self.noise_source is not None:
            return "injected"
        return "replay" if self.replay else self.noise_mode

    @classmethod
    def check(cls, schedule: Any, *, clip: str, postprocess: str, finetune_epochs: int, finetune_lr: float,
              noise_mode: str, progress: bool, callback: Any, noise_source: Any, buffers: Any = None,
              frozen: Any = None, attributes: Any = None, checkpoint_dir: Any = None,
              checkpoint_every: Any = None) -> RunOptions:
        """Validate every option against each other and the schedule; warn for unsafe noise."""
        if not isinstance(schedule, Schedule):
            raise InvalidParameterError("schedule", type(schedule).__name__,
                                        "a certun Schedule (from certun.plan or Schedule.from_dict)")
        clip, postprocess = _mode("clip", clip, ClipMode), _mode("postprocess", postprocess, Postprocess)
        noise_mode = _mode("noise_mode", noise_mode, NoiseMode)
        buffers = None if buffers is None else _mode("buffers", buffers, BufferMode)
        frozen = None if frozen is None else _mode("frozen", frozen, FrozenMode)
        attributes = None if attributes is None else _mode("attributes", attributes, AttributesMode)
        # numpy scalars and 0-d tensors count as numbers, as everywhere in certun
        finetune_epochs = integer("finetune_epochs", finetune_epochs, "an integer >= 0")
        if finetune_epochs < 0:
            raise InvalidParameterError("finetune_epochs", finetune_epochs, "an integer >= 0")
        if not real_number("finetune_lr", finetune_lr, "a finite number > 0") > 0:
            raise InvalidParameterError("finetune_lr", finetune_lr, "a finite number > 0")
        if schedule.variant is Variant.RETRAIN and finetune_epochs < 1:
            raise InvalidParameterError("finetune_epochs", finetune_epochs,
                                        ">= 1 for retrain (they are the retraining epochs)")
        if callback is not None and not callable(callback):
            raise InvalidParameterError("callback", type(callback).__name__, "a callable (step, x) or None")
        if noise_source is not None and not callable(noise_source):
            raise InvalidParameterError("noise_source", type(noise_source).__name__,
                                        "a callable (draw_index, d) -> standard normal vector, or None")
        checkpoint_dir, checkpoint_every = check_checkpoint(checkpoint_dir, checkpoint_every)
        if noise_mode == NoiseMode.REUSE_FIRST_DRAW_UNSAFE:
            warnings.warn(
                "noise_mode='reuse_first_draw_UNSAFE' adds the SAME noise vector at every step. This voids "
                "the unlearning guarantee (docs/theory.md#authors-code) and exists only as an audit control; no "
                "certificate will be issued.", UnsafeNoiseWarning, stacklevel=3)
        if noise_source is not None:
            warnings.warn("noise_source injects externally drawn noise (a testing hook); no certificate "
                          "will be issued.", UnsafeNoiseWarning, stacklevel=3)
        return cls(clip=clip, postprocess=postprocess, finetune_epochs=finetune_epochs,
                   finetune_lr=float(finetune_lr), noise_mode=noise_mode, progress=bool(progress),
                   callback=callback, noise_source=noise_source, buffers=buffers, frozen=frozen,
                   attributes=attributes, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
