"""The backend interface: what every backend takes and what it hands back.

A backend reads a :class:`~certun.accountant.Schedule` and runs exactly that noisy procedure on a
model; it never computes privacy and never issues a certificate. It returns a :class:`RunResult`: the
model, the per-step history, the :class:`~certun.certificates.RunRecord` describing the run and the
private openings; :func:`certun.unlearn` issues the certificate from the schedule and that record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from certun.accountant import Schedule
from certun.certificates import RunRecord

__all__ = ["Backend", "RunResult"]


@runtime_checkable
class Backend(Protocol):
    """A way to run certified unlearning on some kind of model.

    ``name`` is the registry key. ``unlearn`` runs the schedule's noisy phase on ``model`` using only
    the retain data ``data``, then the optional post-processing, and returns a
    :class:`RunResult`. Options beyond ``seed`` and ``previous`` (the parsed previous certificate of the
    model's ledger, or ``None``) are backend-specific keywords; unknown keywords must raise rather than
    be ignored.
    """

    name: str

    def unlearn(self, model: Any, data: Any, schedule: Schedule, /, *, seed: int | None = None,
                **opts: Any) -> RunResult:
        """Run the unlearning described by ``schedule``; see the backend's own docstring."""
        ...


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What a backend hands back after a run (no certificate: :func:`certun.unlearn` issues it).

    Attributes:
        model: the unlearned model (a new object unless the backend was asked to work in place).
        history: per-step lists: ``step``, ``loss``, ``sigma``, ``gamma``, ``grad_norm`` (norm of the
            gradient term actually used, after clipping), ``dist`` (``‖x − c‖`` after the step),
            ``time_s`` (wall time since the noisy phase began); and ``ft_step``/``ft_loss`` for the
            noiseless fine-tuning. Step 0's ``loss`` and ``grad_norm`` are ``None`` unless σ0 noise came
            first: evaluated at Π(A(D)) before any noise, they would identify the starting model
            (publishing pre-noise statistics voids the guarantee). **Private**: the losses and norms
            are functions of the intermediate iterates, which the guarantee does not cover (only the
            released model is certified); publishing the history weakens the guarantee.
        record: the :class:`~certun.certificates.RunRecord` the certificate is issued from.
        seed: the integer seed the caller gave (testing/audit only), or ``None`` when the noise key
            came fresh from the OS (the default). The run key is derived from the secret and every
            run input (docs/theory.md#floating-point-and-randomness), so the same seed never gives two
            different requests the same noise; still, never reuse a seed. The certificate holds only a
            salted commitment to the secret.
        seed_opening: the opening of that commitment, private, for a trusted auditor: ``scheme``,
            ``secret`` (hex key material), ``salt``, ``origin`` (``"os"`` or ``"user_seed"``) and, for
            a user seed, ``seed``. Anyone holding it, the retain data and the starting model can
            regenerate and subtract the noise.
        model_before_opening: opening (digest root and salt) of the salted commitment to the model the
            run started from, private, for a trusted auditor; ``None`` when the certificate records
            that model in plain (a chained request starting from the previous released model).
        retain_tree / forget_tree: the salted Merkle trees over record identifiers, from which
            receipts are issued (``tree.receipt(i)``); they hold the private salt key.
        resumed_from: the noisy steps a checkpoint had done when this run resumed from it
            (``checkpoint_dir``, docs/backends.md "Resumable runs"); ``None`` for a run from the start.
            The certificate does not record it: a resumed run is the same run.
    """

    model: Any
    # Private fields are left out of repr(): printing or logging a result must not leak the noise
    # secret, the seed, the salt keys or pre-release statistics (docs/theory.md#soundness-rules).
    history: Mapping[str, list[Any]] = field(repr=False)
    record: RunRecord
    seed: int | None = field(repr=False)
    seed_opening: Mapping[str, Any] | None = field(default=None, repr=False)
    retain_tree: Any = field(default=None, repr=False)
    forget_tree: Any = field(default=None, repr=False)
    model_before_opening: Mapping[str, Any] | None = field(default=None, repr=False)
    resumed_from: int | None = None
