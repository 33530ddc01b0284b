"""What a backend reports about the run it made: the execution side of a certificate.

The backend fills a :class:`RunRecord`; :func:`certun.certificates.issue` turns it and the
:class:`~certun.accountant.Schedule` into a certificate. It holds digests and commitments only: no
record identifiers, no raw seed (docs/theory.md#what-a-certificate-records; docs/certificates.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelDigest", "RunRecord"]


@dataclass(frozen=True, kw_only=True)
class ModelDigest:
    """Digest of a set of named tensors: a root over all of them and one digest per tensor.

    ``root`` and each value of ``tensors`` are ``"sha256:<hex>"`` strings. Tensors are hashed, not
    files: name, dtype, shape and little-endian C-order bytes, length-prefixed, sorted by name.
    """

    root: str
    tensors: Mapping[str, str] = field(default_factory=dict)
    #: name -> shape and name -> dtype name, as hashed (filled by :func:`model_digest`; optional).
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"root": ..., "tensors": {name: digest}}`` with names sorted (shapes live elsewhere)."""
        return {"root": self.root, "tensors": dict(sorted(self.tensors.items()))}


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """Everything about an unlearning run that a certificate records besides the schedule.

    Attributes:
        backend: registered backend name (``"torch"``, ``"numpy"``).
        clipping: ``"per_sample"``, ``"batch"`` or ``None`` (variants without gradient clipping).
        unlearned_parameters: names of the parameters in ``x`` (docs/theory.md notation), in order.
        d: total number of unlearned coordinates.
        frozen_parameters: name -> tensor digest of parameters left untouched (asserted by the user to
            be independent of D); the digest is of the value before and after, which must be equal.
        model_before / model_after: digests of the unlearned parameters before and after the run;
            ``model_after`` is the *released* model (after post-processing and fine-tuning), the one
            ``certun verify --model`` checks. Both must cover exactly ``unlearned_parameters``
            (build them with :func:`certun.certificates.model_digest`, which also records shapes).
            A plain ``model_before`` is allowed only for a chained request that starts from the
            model the previous certificate released (public already); see next field.
        model_before_commitment: salted commitment to ``model_before``'s root
            (:func:`certun.certificates._commitment.model_commitment`), used instead of a plain
            ``model_before`` whenever the starting model is not public, in particular for the first
            request, whose starting model was trained on the forget set: a plain digest of it would
            reveal membership. At most one of the two is set.
        public_tensors: name -> tensor digest of released tensors that are neither unlearned nor
            frozen but carry no information about D (buffers rebuilt from public or retain-only data);
            with the unlearned and frozen parameters they make the full key set of the released state,
            so ``certun verify --model`` can FAIL on any tensor nobody certified.
        center: digest of the ball centre (docs/theory.md#anchored-balls), ``None`` for the origin.
        retain_root / forget_root: salted Merkle roots over record identifiers (hex), if given.
        tree_scheme: the scheme of the trees behind those roots (that of
            :func:`certun.certificates.merkle_tree`, leaves ordered by salted hash, by default).
        retain_count / forget_count: number of records in each set, if known.
        id_scheme: how identifiers were formed (e.g. ``"dataset-index"``, with its caveat in docs).
        seed_commitment: salted commitment to the noise seed (never the seed).
        noisy_steps: number of noisy steps actually run (must equal ``schedule.T``).
        postprocess: post-processing applied after the noisy phase (e.g. ``"project_C0"``).
        finetune: noiseless fine-tuning on retain data (epochs, lr, steps): post-processing.
        device, dtype: where and in which precision the noisy phase ran.
        started_at, finished_at: RFC 3339 UTC timestamps.
        versions: library versions (certun, torch, opacus, numpy, ...).
        extra: backend details, only the keys certun's backends write
            (:data:`certun.certificates._disclosure.EXTRA_KEYS`): the section is closed so that no
            seed or identifier list can ride along in it.
        noise: the noise source (``execution.noise``): generator, key bits, sampler, key origin
            (``"os"`` or ``"user_seed"``), draws, Box–Muller pairs and the sampler's tail residual
            (:mod:`certun.certificates.noise_check`); required for every variant that adds noise.
        sisa: ``execution.sisa`` of a SISA deletion (exact route): shards, slices, the assignment
            scheme and one state per shard (retrained or untouched, restart stage, salted Merkle roots
            of its identifiers before and after); docs/certificates.md, "SISA certificates".
        distributed: ``execution.distributed`` of a run over a ``torch.distributed`` process group
            (world size, communication backend, sharding, how the noise and the step keys were
            shared); ``None`` for a single process (docs/distributed.md).
    """

    backend: str
    clipping: str | None
    unlearned_parameters: tuple[str, ...]
    d: int
    noisy_steps: int
    frozen_parameters: Mapping[str, str] = field(default_factory=dict)
    model_before: ModelDigest | None = None
    model_after: ModelDigest | None = None
    center: ModelDigest | None = None
    retain_root: str | None = None
    forget_root: str | None = None
    retain_count: int | None = None
    forget_count: int | None = None
    id_scheme: str | None = None
    seed_commitment: Mapping[str, str] | None = None
    postprocess: str | None = None
    finetune: Mapping[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    started_at: str | None = None
    finished_at: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    model_before_commitment: Mapping[str, str] | None = None
    noise: Mapping[str, Any] | None = None
    public_tensors: Mapping[str, str] = field(default_factory=dict)
    tree_scheme: str = "rfc9162-sha256-salted.v2"
    sisa: Mapping[str, Any] | None = None
    distributed: Mapping[str, Any] | None = None
