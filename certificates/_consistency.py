"""Checks that a (schema-valid) certificate agrees with itself, and that it holds no raw seed.

The schema checks each field alone; these checks tie fields together: the claim is the mechanism's
target, T matches the σ/γ schedules and the number of noisy steps run, d matches the recorded
parameter shapes, the clipping granularity fits the variant, the model digests cover exactly the
unlearned parameters and their roots agree with their per-tensor digests, and the first certificate
of a ledger commits to its starting model instead of publishing its digest. Every problem is
collected, none is silently skipped. Source: docs/theory.md#definition, #gradient-clipping, #model-clipping,
#what-a-certificate-records; docs/certificates.md.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from certun.accountant import Variant, mechanism
from certun.certificates._digest import root_digest
from certun.certificates._disclosure import (
    EXTRA_KEYS,
    RAW_SEED_KEY,
    RAW_SEED_VALUE,
    RECORD_ID_KEY,
    RECORD_ID_STEM,
    extra_problems,
    raw_seed_paths,
    record_id_paths,
)
from certun.errors import InvalidParameterError

__all__ = [
    "EXACT_VARIANTS",
    "RAW_SEED_KEY",
    "RAW_SEED_VALUE",
    "EXTRA_KEYS",
    "RECORD_ID_KEY",
    "RECORD_ID_STEM",
    "consistency_problems",
    "distributed_problems",
    "exact_claim_problems",
    "extra_problems",
    "raw_seed_paths",
    "record_id_paths",
    "sisa_problems",
]

#: Clipping granularities that satisfy the gradient-clipping proofs (docs/theory.md#gradient-clipping).
_GRADIENT_CLIPS = frozenset({"per_sample", "batch"})
#: Variants whose certifying algorithm is the route itself, so (0, 0) (docs/theory.md#exact-routes).
EXACT_VARIANTS = frozenset(v.value for v in Variant if mechanism(v).exact)


def _steps(mechanism: Mapping[str, Any], scalar: str, plural: str) -> tuple[str, int | None]:
    if mechanism.get(plural) is not None:
        return plural, len(mechanism[plural])
    if mechanism.get(scalar) is not None:
        return scalar, None  # constant: one value for every step
    return scalar, 0


def _mechanism_problems(m: Mapping[str, Any]) -> list[str]:
    problems = []
    T = m["T"]
    for scalar, plural in (("sigma", "sigmas"), ("gamma", "gammas")):
        if m.get(scalar) is not None and m.get(plural) is not None:
            problems.append(f"mechanism gives both {scalar} and {plural}; give one")
        name, n = _steps(m, scalar, plural)
        if n is None and T < 1:
            problems.append(f"mechanism.{name} is set but mechanism.T={T} has no noisy steps")
        elif n is not None and n != T:
            problems.append(f"mechanism.T={T} but mechanism.{name} has {n} values")
    return problems


def _model_problems(name: str, digest: Mapping[str, Any] | None, unlearned: list[str]) -> list[str]:
    if digest is None:
        return []
    problems = []
    tensors = digest["tensors"]
    if set(tensors) != set(unlearned):
        missing = sorted(set(unlearned) - set(tensors))
        extra = sorted(set(tensors) - set(unlearned))
        problems.append(f"artifacts.{name} covers other tensors than execution.unlearned_parameters "
                        f"(missing {missing}, extra {extra})")
    try:
        root = root_digest(tensors)
    except InvalidParameterError as exc:
        return [*problems, f"artifacts.{name}: {exc}"]
    if root != digest["root"]:
        problems.append(f"artifacts.{name}.root is {digest['root']} but its tensor digests give {root}")
    return problems


def _positive_counts(value: Any, path: str) -> list[str]:
    """Paths of positive numbers under keys that count noise draws or noisy steps."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            here = f"{path}.{key}"
            if (isinstance(key, str) and ("draw" in key.lower() or "step" in key.lower())
                    and isinstance(item, (int, float)) and not isinstance(item, bool) and item > 0):
                found.append(here)
            found.extend(_positive_counts(item, here))
    return found


def exact_claim_problems(doc: Mapping[str, Any]) -> list[str]:
    """Why a certificate that claims exact unlearning (variant ``retrain`` or a (0, 0) claim) does not
    record an exact execution: no noisy steps, no clipping, no noise parameters, no noise draws.

    A noisy run relabelled ``retrain`` with claim (0, 0) would otherwise pass, since the accountant
    gives (0, 0) to any retrain schedule (docs/theory.md#retrain, docs/theory.md#exact-routes).
    """
    claim, m, ex = doc["claim"], doc["mechanism"], doc["execution"]
    exact_claim = claim["eps"] == 0 and claim["delta"] == 0
    if m["variant"] not in EXACT_VARIANTS and not exact_claim:
        return []
    problems = []
    if m["variant"] not in EXACT_VARIANTS:
        problems.append(f"claim (0, 0) is exact unlearning, which only an exact route ({sorted(EXACT_VARIANTS)}) "
                        f"gives; mechanism.variant is {m['variant']!r}")
    if m["T"] != 0 or ex["noisy_steps"] != 0:
        problems.append(f"an exact (retrain) claim needs no noisy steps: mechanism.T={m['T']}, "
                        f"execution.noisy_steps={ex['noisy_steps']}")
    if ex["clipping"] is not None:
        problems.append(f"an exact (retrain) run clips nothing, but execution.clipping is {ex['clipping']!r}")
    noise = [k for k in ("sigma", "sigmas", "gamma", "gammas", "sigma0", "C1", "C2") if m.get(k) is not None]
    if noise:
        problems.append(f"an exact (retrain) mechanism has no noise parameters, but it sets {noise}")
    if doc["accounting"]["conversion"] != "exact-retraining":
        problems.append(f"an exact (retrain) claim is accounted as 'exact-retraining', not "
                        f"{doc['accounting']['conversion']!r}")
    draws = _positive_counts(ex.get("noise"), "execution.noise") + _positive_counts(ex.get("extra"), "execution.extra")
    if draws:
        problems.append(f"an exact (retrain) run draws no noise, but the execution record counts {draws}")
    return problems


def sisa_problems(doc: Mapping[str, Any]) -> list[str]:
    """Why ``execution.sisa`` does not describe one exact SISA deletion (``[]`` if it does or is absent).

    A SISA deletion is an exact route (docs/theory.md#exact-routes): retraining from a checkpoint that
    never saw the records, so it must be a noiseless ``retrain`` run of the ``sisa`` backend, and its
    shard states must account for every shard once, with a shard retrained exactly when its identifiers
    changed.
    """
    ex = doc["execution"]
    sisa = ex.get("sisa")
    if sisa is None:
        return []
    problems = []
    if doc["mechanism"]["variant"] not in EXACT_VARIANTS:
        problems.append(f"execution.sisa records an exact SISA deletion, but mechanism.variant is "
                        f"{doc['mechanism']['variant']!r}, not 'retrain'")
    if ex["backend"] != "sisa":
        problems.append(f"execution.sisa is recorded by backend {ex['backend']!r}; only the 'sisa' backend writes it")
    if ex["noisy_steps"] != 0:
        problems.append(f"a SISA deletion runs no noisy steps, but execution.noisy_steps is {ex['noisy_steps']}")
    if ex.get("noise") is not None:
        problems.append("a SISA deletion draws no noise, but the certificate carries an execution.noise record")
    S, R = sisa["shards"], sisa["slices"]
    if S != len(sisa["shard_states"]):  # checked first: S comes from the file, range(S) must stay cheap
        return [*problems, f"execution.sisa.shard_states must list every shard 0..{S - 1} exactly once: it "
                f"lists {len(sisa['shard_states'])} states for {S} shards"]
    listed = Counter(state["shard"] for state in sisa["shard_states"])
    missing = [s for s in range(S) if s not in listed]
    twice = sorted(s for s, n in listed.items() if n > 1)
    outside = sorted(s for s in listed if s >= S)
    if missing or twice or outside:
        problems.append(f"execution.sisa.shard_states must list every shard 0..{S - 1} exactly once: missing "
                        f"{missing[:10]}, repeated {twice[:10]}, out of range {outside[:10]}")
    for state in sisa["shard_states"]:
        s, status = state["shard"], state["status"]
        changed = state["retain_root_before"] != state["retain_root_after"]
        if changed != (status == "retrained"):
            why = "its identifiers changed" if changed else "its identifiers did not change"
            problems.append(f"shard {s} is {status!r} but {why}: a shard is retrained exactly when a deletion "
                            "removed its records")
        if status == "untouched" and (state["restart_stage"] is not None or state["restarted_from"] is not None):
            problems.append(f"untouched shard {s} records a restart (restart_stage {state['restart_stage']}, "
                            f"restarted_from {state['restarted_from']}); both must be null")
        if state["restart_stage"] is not None and state["restart_stage"] >= R:
            problems.append(f"shard {s} restarts at stage {state['restart_stage']}, but there are only {R} slices "
                            f"(stages 0..{R - 1})")
        problems += _restart_rules(s, status, state["restart_stage"], state["restarted_from"])
    forgotten = (doc["artifacts"].get("forget_set") or {}).get("size", 0)
    if forgotten and not any(state["status"] == "retrained" for state in sisa["shard_states"]):
        problems.append(f"the certificate deletes {forgotten} record(s) but no shard is retrained: a deletion "
                        "changes the shards that held the records")
    return problems


def _restart_rules(shard: int, status: str, stage: int | None, restarted_from: str | None) -> list[str]:
    """A retrained shard names its first rerun stage, and a checkpoint exactly when it did not start afresh."""
    if status != "retrained":
        return []
    if stage is None:
        return [f"retrained shard {shard} records no restart_stage: a retrained shard names its first rerun stage"]
    if (stage > 0) != (restarted_from is not None):
        return [f"retrained shard {shard} restarts at stage {stage} with restarted_from "
                f"{'set' if restarted_from else 'null'}: a checkpoint is named exactly when the stage is above 0"]
    return []


def _implied_d(shapes: Any, d: int) -> int:
    """The number of coordinates the shapes imply, or ``d + 1`` as soon as it exceeds ``d``: a
    product of thousands of huge dimensions is never computed in full."""
    total = 0
    for shape in shapes:
        size = 0 if 0 in shape else 1
        for dim in shape if size else ():
            size *= dim
            if size > d:
                return d + 1
        total += size
        if total > d:
            return d + 1
    return total


def consistency_problems(doc: Mapping[str, Any]) -> list[str]:
    """Every internal inconsistency of a schema-valid certificate, one sentence each (``[]`` if none)."""
    m, ex, art = doc["mechanism"], doc["execution"], doc["artifacts"]
    problems = _claim_problems(doc["claim"], m, doc["accounting"])
    problems.extend(_step_problems(m, ex))
    problems.extend(_parameter_problems(m["variant"], ex, art))
    problems.extend(exact_claim_problems(doc))
    problems.extend(sisa_problems(doc))
    problems.extend(distributed_problems(doc))
    problems.extend(extra_problems(ex["extra"]))
    problems.extend(_record_id_problems(doc))
    problems.extend(_clipping_problems(m, ex))
    problems.extend(_digest_problems(doc, ex["unlearned_parameters"]))
    problems.extend(_chain_problems(doc["chain"]))
    return problems


def _claim_problems(claim: Mapping[str, Any], m: Mapping[str, Any], acc: Mapping[str, Any]) -> list[str]:
    """The claim is the mechanism's target (docs/theory.md#what-a-certificate-records)."""
    problems: list[str] = []
    for key in ("variant", "eps", "delta"):
        if claim[key] != m[key]:
            problems.append(f"claim.{key} is {claim[key]!r} but mechanism.{key} is {m[key]!r}")
    if acc["method"] != m["method"]:
        problems.append(f"accounting.method is {acc['method']!r} but mechanism.method is {m['method']!r}")
    return problems


def _step_problems(m: Mapping[str, Any], ex: Mapping[str, Any]) -> list[str]:
    """T, the per-step schedules and the steps actually run agree."""
    problems = _mechanism_problems(m)
    if ex["noisy_steps"] != m["T"]:
        problems.append(f"execution.noisy_steps is {ex['noisy_steps']} but mechanism.T is {m['T']}")
    return problems


def _parameter_problems(variant: str, ex: Mapping[str, Any], art: Mapping[str, Any]) -> list[str]:
    """The unlearned parameters x, their shapes and count d, and the frozen and public tensors agree."""
    problems: list[str] = []
    unlearned = ex["unlearned_parameters"]
    if len(set(unlearned)) != len(unlearned):
        dupes = sorted(n for n, count in Counter(unlearned).items() if count > 1)
        problems.append(f"execution.unlearned_parameters lists {dupes} more than once")
    if variant != "retrain" and (not unlearned or ex["d"] < 1):
        problems.append(f"{variant} needs unlearned parameters: got {len(unlearned)} names and d={ex['d']}")
    problems.extend(_shape_problems(variant, ex))
    overlap = sorted(set(unlearned) & set(ex["frozen_parameters"]))
    if overlap:
        problems.append(f"parameters {overlap} are listed both as unlearned and as frozen")
    public = art.get("public_tensors") or {}
    overlap = sorted(set(public) & (set(unlearned) | set(ex["frozen_parameters"])))
    if overlap:
        problems.append(f"tensors {overlap} are listed as public and also as unlearned or frozen")
    return problems


def _shape_problems(variant: str, ex: Mapping[str, Any]) -> list[str]:
    """The recorded parameter shapes name the unlearned tensors and imply d."""
    problems: list[str] = []
    unlearned, shapes = ex["unlearned_parameters"], ex["parameter_shapes"]
    if variant != "retrain" and not shapes:
        problems.append(f"{variant} adds noise over d={ex['d']} coordinates but execution.parameter_shapes is empty: "
                        "nothing ties d (and so the sampler's residual) to the unlearned tensors")
    if shapes:
        if set(shapes) != set(unlearned):
            problems.append(f"execution.parameter_shapes names {sorted(shapes)} but "
                            f"execution.unlearned_parameters names {sorted(set(unlearned))}")
        implied = _implied_d(shapes.values(), ex["d"])
        if implied != ex["d"]:
            shown = implied if implied <= ex["d"] else f"more than {ex['d']}"
            problems.append(f"execution.d is {ex['d']} but the recorded parameter shapes imply d={shown}")
    return problems


def _record_id_problems(doc: Mapping[str, Any]) -> list[str]:
    """The free-form sections publish no record identifiers."""
    ids = record_id_paths(doc)
    if ids:
        return [f"{ids} look like record identifiers: a certificate names the retain and forget sets only "
                "by salted Merkle roots (published identifiers say who was forgotten)"]
    return []


def _clipping_problems(m: Mapping[str, Any], ex: Mapping[str, Any]) -> list[str]:
    """Clipping granularity vs variant (docs/theory.md#gradient-clipping, #model-clipping)."""
    variant = m["variant"]
    needs_clip = variant == "gradient_clipping" or (
        variant == "model_clipping" and m["mode"] == "clip_noise_before_projection")
    if needs_clip and ex["clipping"] not in _GRADIENT_CLIPS:
        label = variant if variant == "gradient_clipping" else f"{variant} ({m['mode']})"
        return [f"{label} needs gradient clipping per_sample or batch, "
                f"but execution.clipping is {ex['clipping']!r}"]
    return []


def _digest_problems(doc: Mapping[str, Any], unlearned: list[str]) -> list[str]:
    """Digests of the model; model_before may be a salted commitment instead (docs/certificates.md)."""
    art, chain = doc["artifacts"], doc["chain"]
    problems: list[str] = []
    for name in ("unlearned_model", "model_before", "center"):
        if name == "model_before" and isinstance(art[name], Mapping) and "commitment" in art[name]:
            continue
        problems.extend(_model_problems(name, art[name], unlearned))
    before, center = art["model_before"], art["center"]
    if isinstance(before, Mapping) and "tensors" in before and isinstance(center, Mapping):
        shared = sorted(name for name, digest in center["tensors"].items() if before["tensors"].get(name) == digest)
        if shared:
            problems.append(f"artifacts.center equals the starting model in tensors {shared}: the centre must not "
                            "depend on the training data D, and the starting model was trained on it "
                            "(docs/theory.md#anchored-balls)")
    if chain["sequence"] == 0 and isinstance(before, Mapping) and "tensors" in before:
        problems.append("artifacts.model_before is a plain digest in the first certificate of a ledger (sequence 0): "
                        "that model was trained on the forget set, and publishing its hash reveals whether a record "
                        "was in the training data; it must be a salted commitment (certun.model-commitment.sha256.v1)")
    after = art["unlearned_model"]
    expected_subject = ([] if after is None else
                        [{"name": "unlearned_model", "digest": {"sha256": after["root"][len("sha256:"):]}}])
    if doc["subject"] != expected_subject:
        problems.append(f"subject is {doc['subject']!r} but artifacts.unlearned_model implies {expected_subject!r}")
    return problems


def _chain_problems(chain: Mapping[str, Any]) -> list[str]:
    """The chain link: the first certificate (sequence 0) and only it has no previous."""
    if (chain["sequence"] == 0) != (chain["previous"] is None):
        return [f"chain.sequence is {chain['sequence']} but chain.previous is "
                f"{'absent' if chain['previous'] is None else 'set'}: the first certificate "
                f"(sequence 0) and only it has no previous"]
    return []


#: The noise layout each sharding must record (docs/distributed.md, "What the certificate records").
_DISTRIBUTED_NOISE = {"replicated": "identical-replicas", "sharded-master": "positional-shards",
                      "fsdp2": "positional-shards"}
#: How each sharding combines the ranks' gradients (FSDP2 reduce-scatters them to the shards).
_DISTRIBUTED_GRADIENT = {"replicated": "sum-all-reduced-over-global-batch",
                         "sharded-master": "sum-all-reduced-over-global-batch",
                         "fsdp2": "sum-reduce-scattered-over-global-batch"}


def distributed_problems(doc: Mapping[str, Any]) -> list[str]:
    """Why ``execution.distributed`` does not describe one noisy run over a process group (``[]`` if absent)."""
    ex = doc["execution"]
    dist = ex.get("distributed")
    if dist is None:
        return []
    problems = []
    if _DISTRIBUTED_NOISE[dist["sharding"]] != dist["noise"]:
        problems.append(f"execution.distributed: sharding {dist['sharding']!r} adds its noise as "
                        f"{_DISTRIBUTED_NOISE[dist['sharding']]!r}, not {dist['noise']!r}")
    if _DISTRIBUTED_GRADIENT[dist["sharding"]] != dist["gradient"]:
        problems.append(f"execution.distributed: sharding {dist['sharding']!r} combines the gradients as "
                        f"{_DISTRIBUTED_GRADIENT[dist['sharding']]!r}, not {dist['gradient']!r}")
    if ex["backend"] != "torch":
        problems.append(f"execution.distributed is recorded by backend {ex['backend']!r}; only 'torch' runs "
                        "distributed")
    noise = ex.get("noise")
    if noise is None:
        problems.append("execution.distributed records a noisy run but execution.noise is missing")
    elif dist["noise"] == "positional-shards" and noise.get("positional") is not True:
        problems.append("execution.distributed: sharded noise needs a positional generator "
                        "(execution.noise.positional)")
    return problems
