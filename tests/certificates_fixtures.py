"""Builders shared by the certificate tests: small deterministic models, run records and certificates."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
from typing import Any

import numpy as np

import certun
from certun.accountant import Guarantee, Schedule, Variant
from certun.certificates import (
    RunRecord,
    content_digest,
    issue,
    key_commitment,
    load_signing_key,
    merkle_tree,
    model_commitment,
    model_digest,
    tensor_digest,
)

CREATED = "2025-01-01T00:00:00Z"
#: A fixed test key (never use a key derived from a public string outside tests).
TEST_KEY = load_signing_key(hashlib.sha256(b"certun test signing key").digest())
OTHER_KEY = load_signing_key(hashlib.sha256(b"certun other test key").digest())
MERKLE_SALT_KEY = hashlib.sha256(b"certun test merkle salt key").digest()
SEED_SALT = hashlib.sha256(b"certun test seed salt").digest()
MODEL_SALT = hashlib.sha256(b"certun test model salt").digest()
FORGET_IDS = (3, 17, 42, 99)


def params(seed: int = 0) -> dict[str, np.ndarray]:
    """The unlearned parameters of a tiny two-layer model."""
    rng = np.random.default_rng(seed)
    return {
        "fc1.weight": rng.normal(size=(4, 3)).astype(np.float32),
        "fc1.bias": rng.normal(size=(4,)).astype(np.float32),
        "fc2.weight": rng.normal(size=(2, 4)).astype(np.float32),
        "fc2.bias": np.zeros(2, np.float32),
    }


def frozen() -> dict[str, np.ndarray]:
    """A frozen (public, pretrained) embedding left untouched by the run."""
    return {"emb.weight": np.arange(6, dtype=np.float32).reshape(3, 2)}


@functools.cache
def planned_gc() -> Schedule:
    """Gradient clipping planned honestly at (1, 1e-5): λ = 0, T = C0/(γ C1) = 100, exact σ."""
    return certun.plan(1.0, 1e-5, 1.0, 10.0, 0.0, T=100)


def with_achieved(schedule: Schedule) -> Schedule:
    """The schedule with ``achieved`` recomputed by the accountant."""
    return dataclasses.replace(schedule, achieved=certun.guarantee(schedule))


def fixed_schedule(variant: str) -> Schedule:
    """Schedules with hand-picked (not planned) noise, so golden files do not move with the planner."""
    target = Guarantee(1.0, 1e-5)
    if variant == "gradient_clipping":
        s = Schedule(variant=Variant.GRADIENT_CLIPPING, T=100, C0=1.0, C1=10.0, lam=0.0,
                     gammas=(1e-3,) * 100, sigmas=(1.65,) * 100, target=target, achieved=target)
    elif variant == "model_clipping":
        s = Schedule(variant=Variant.MODEL_CLIPPING, T=8, C0=1.0, C2=1.0, lam=0.0,
                     gammas=(1e-3,) * 8, sigmas=(1.0,) * 8, target=target, achieved=target)
    elif variant == "output_perturbation":
        s = Schedule(variant=Variant.OUTPUT_PERTURBATION, T=0, C0=1.0, sigma0=7.5, target=target,
                     achieved=target)
    else:
        raise ValueError(variant)
    return with_achieved(s)


def noise_record(schedule: Schedule, d: int, *, key_origin: str = "os") -> dict[str, Any]:
    """The ``execution.noise`` record certun's backends write (the one known source), for ``schedule`` and d."""
    from certun.certificates.noise_check import KNOWN_SOURCES, noise_draws, sampler_pairs, table_residual

    sigma0 = schedule.sigma0 if schedule.variant.value in ("model_clipping", "output_perturbation") else None
    draws = noise_draws(schedule.variant.value, schedule.T, sigma0)
    pairs = sampler_pairs(d, draws)
    (generator, sampler, kdf), known = next(iter(KNOWN_SOURCES.items()))
    return {"generator": generator, "sampler": sampler, "key_derivation": kdf, **known, "key_origin": key_origin,
            "draws": draws, "pairs": pairs, "tail_residual": table_residual(pairs, known["tail_mass_per_pair"])}


def record(schedule: Schedule, *, model_seed: int = 0, tree_scheme: str | None = None,
           **overrides: Any) -> RunRecord:
    """A complete, consistent run record for ``schedule`` (Merkle trees of ``tree_scheme``, default
    the current one; the golden files were written with the first, identifier-ordered scheme)."""
    p = params(model_seed)
    after = model_digest(p)
    # a first request commits to its starting model (a plain digest is only for chained requests)
    before, _ = model_commitment(model_digest(params(model_seed + 1000)), salt=MODEL_SALT)
    public, _ = key_commitment(hashlib.sha256(b"certun test noise key").digest(), salt=SEED_SALT)
    scheme = {} if tree_scheme is None else {"scheme": tree_scheme}
    forget = merkle_tree(FORGET_IDS, salt_key=MERKLE_SALT_KEY, **scheme)
    retain = merkle_tree([i for i in range(120) if i not in FORGET_IDS], salt_key=MERKLE_SALT_KEY, **scheme)
    clipping = "per_sample" if schedule.variant is Variant.GRADIENT_CLIPPING else None
    fields: dict[str, Any] = dict(
        backend="numpy",
        clipping=clipping,
        unlearned_parameters=tuple(p),
        d=sum(a.size for a in p.values()),
        noisy_steps=schedule.T,
        frozen_parameters={k: tensor_digest(k, v) for k, v in frozen().items()},
        model_before_commitment=before,
        model_after=after,
        retain_root=retain.root,
        forget_root=forget.root,
        retain_count=retain.size,
        forget_count=forget.size,
        id_scheme="dataset-index",
        seed_commitment=public,
        postprocess="project_C0",
        finetune={"epochs": 1, "lr": 0.05},
        device="cpu",
        dtype="float32",
        started_at="2025-01-01T00:00:00Z",
        finished_at="2025-01-01T00:00:05Z",
        versions={"numpy": "2.0.0"},
        tree_scheme=forget.scheme,
    )
    fields.update(overrides)
    if "noise" not in overrides:
        fields["noise"] = noise_record(schedule, fields["d"])
    if fields.get("model_before") is not None and "model_before_commitment" not in overrides:
        fields["model_before_commitment"] = None  # a plain starting digest replaces the commitment
    return RunRecord(**fields)


def certificate(schedule: Schedule | None = None, *, signed: bool = False, previous: Any = None,
                **record_overrides: Any) -> dict[str, Any]:
    """An issued certificate (gradient clipping, planned honestly, unless ``schedule`` is given)."""
    schedule = planned_gc() if schedule is None else schedule
    return issue(schedule, record(schedule, **record_overrides), previous=previous,
                 signing_key=TEST_KEY if signed else None, created=CREATED)


def reseal(cert: dict[str, Any], *, keep_proof: bool = False) -> dict[str, Any]:
    """What a forger does after editing a certificate: recompute its content digest (and drop the
    signature they cannot redo, unless ``keep_proof``)."""
    out = copy.deepcopy(cert)
    if not keep_proof:
        out.pop("proof", None)
    out["content_digest"] = content_digest(out)
    return out


def failed(report: Any) -> list[str]:
    """Names of the FAILed checks of a report."""
    return [c.name for c in report.failures]


def certificate_bytes(**kwargs: Any) -> bytes:
    """An issued certificate as the UTF-8 JSON text a file would hold."""
    import json

    return json.dumps(certificate(**kwargs), indent=2).encode("utf-8")
