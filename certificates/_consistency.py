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

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from typing import Any

from certun.certificates._digest import root_digest
from certun.errors import InvalidParameterError

__all__ = [
    "EXACT_VARIANTS",
    "RAW_SEED_KEY",
    "RAW_SEED_VALUE",
    "EXTRA_KEYS",
    "RECORD_ID_KEY",
    "RECORD_ID_STEM",
    "consistency_problems",
    "exact_claim_problems",
    "extra_problems",
    "raw_seed_paths",
    "record_id_paths",
]

#: Key names that look like a raw seed or generator state (case-insensitive). ``seed_commitment``
#: and the noise record's ``key_*`` fields are the allowed exceptions.
RAW_SEED_KEY = re.compile(r"seed|rng[_-]?state|random[_-]?state|generator[_-]?state|prng[_-]?key", re.I)
#: Words that name the noise secret itself, matched as whole words of a key (``rng``, ``rng_key``,
#: ``noise_key``, ``runKey``, ``secret``, ``entropy``): JAX, numpy and certun's own names for it.
_SECRET_WORDS = frozenset({"rng", "prng", "key", "keys", "secret", "secrets", "entropy"})
_ALLOWED_SEED_KEYS = frozenset({"seed_commitment", "key_bits", "key_origin", "key_derivation"})
#: A string of 64 or more hex digits (a 256-bit key written out) that is not a ``sha256:`` digest.
_HEX_SECRET = re.compile(r"(?<![0-9a-f:])[0-9a-f]{64,}(?![0-9a-f])", re.I)
#: The fields that hold a bare hex hash (subject digests, Merkle roots), by path with list indices dropped.
_HASH_PATHS = frozenset({"subject[].digest.sha256", "artifacts.retain_set.merkle_root",
                         "artifacts.forget_set.merkle_root"})
#: The objects whose keys are tensor names (a module may be called "seed"), by exact path: only
#: there a seed-like key is allowed, and only as a key (its value is still searched). The same key
#: name anywhere else (say ``execution.extra.tensors``) gets no exemption.
_NAME_MAP_PATHS = frozenset({
    "execution.frozen_parameters", "execution.parameter_shapes", "artifacts.public_tensors",
    "artifacts.unlearned_model.tensors", "artifacts.model_before.tensors", "artifacts.center.tensors"})
#: A string value that writes a seed out (``"seed=1234"``, ``"rng_state: 99"``).
RAW_SEED_VALUE = re.compile(r"(seed|rng[_-]?state|random[_-]?state|generator[_-]?state|prng[_-]?key|"
                            r"(?<![\w:])(?:rng|key|secret|entropy))\s*[:=]\s*\S", re.I)
#: Letters of other scripts that look like Latin ones (Unicode confusables, the subset that can
#: spell the seed words): a key ``sеed`` with a Cyrillic ``е`` must not hide a seed.
_CONFUSABLES = str.maketrans({
    "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p", "\u0441": "c", "\u0443": "y", "\u0445": "x",
    "\u0456": "i", "\u0455": "s", "\u0501": "d", "\u0261": "g", "\u0578": "n", "\u043d": "h", "\u0442": "t",
    "\u043a": "k", "\u043c": "m", "\u0432": "b", "\u0458": "j", "\u04bb": "h", "\u051b": "q", "\u051d": "w",
    "\u03bf": "o", "\u03b5": "e", "\u03b1": "a", "\u03c1": "p", "\u03ba": "k", "\u03bd": "v", "\u03c4": "t",
    "\u03b9": "i", "\u0391": "a", "\u0395": "e", "\u039f": "o", "\u03a1": "p", "\u0405": "s", "\u0415": "e",
    "\u041e": "o", "\u0420": "p", "\u0421": "c", "\u0410": "a", "\u0406": "i", "\u0131": "i", "\u017f": "s",
})


#: Clipping granularities that satisfy the gradient-clipping proofs (docs/theory.md#gradient-clipping).
_GRADIENT_CLIPS = frozenset({"per_sample", "batch"})
#: Variants whose certifying algorithm is the route itself, so (0, 0) (docs/theory.md#exact-routes).
EXACT_VARIANTS = frozenset({"retrain"})


def _skeleton(text: str) -> str:
    """``text`` with compatibility forms folded (NFKC: fullwidth, ligatures), case folded, confusable
    letters mapped to Latin and invisible format characters removed."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_CONFUSABLES)
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")


#: A key that names record identifiers (``forget_ids``, ``deleted_indices``, ``retainIds``).
RECORD_ID_KEY = re.compile(r"(forget|forgotten|retain|retained|delete|deleted|remove|removed|erase|erased)"
                           r"[_-]?(ids?|identifiers?|indices|index|idx|records?|rows?|samples?|examples?)$", re.I)
#: Word stems that name who or what was unlearned: a free-form key holding one (``forget``,
#: ``forget_set``, ``deleted``, ``unlearned_ids``, ``requests``, ``user``) is refused outright.
RECORD_ID_STEM = re.compile(r"forget|forgot|retain|delet|remov|eras|unlearn|request|user", re.I)
#: Free text that writes such a set out (``"forget_ids=[3, 17]"``, ``"deleted: 42"``).
_RECORD_ID_TEXT = re.compile(r"(forget|forgot|retain|delet|remov|eras|unlearn|request|user)\w*\s*[:=]\s*[\[({\d]",
                             re.I)
#: The free-form sections, where a backend or user may write anything, and the free-text notes.
_FREE_FORM = ("execution.extra", "execution.finetune", "execution.noise", "mechanism.notes")
#: The keys certun's backends write into ``execution.extra`` (torch: buffers, frozen, clipping
#: implementation, public buffers/attributes; numpy: loss; both: noise_mode), with their JSON types:
#: the section is closed, so nothing else (a seed, an identifier list) can ride along in it.
EXTRA_KEYS: Mapping[str, tuple[type, ...]] = {
    "buffers": (str,), "frozen": (str,), "clip_implementation": (str, type(None)), "recomputed_buffers": (list,),
    "public_buffers": (dict,), "attributes": (str,), "public_attributes": (dict,), "noise_mode": (str,),
    "loss": (str,),
}


def extra_problems(extra: Mapping[str, Any]) -> list[str]:
    """Why ``execution.extra`` holds something certun's backends never write (``[]`` if nothing)."""
    problems = []
    unknown = sorted(k for k in extra if k not in EXTRA_KEYS)
    if unknown:
        problems.append(f"execution.extra holds keys {unknown} that certun's backends never write; it may hold "
                        f"only {sorted(EXTRA_KEYS)}")
    for key, value in extra.items():
        kinds = EXTRA_KEYS.get(key)
        if kinds is not None and not isinstance(value, kinds):
            problems.append(f"execution.extra.{key} is a {type(value).__name__}, expected "
                            f"{' or '.join(k.__name__ for k in kinds)}")
        elif isinstance(value, list) and not all(isinstance(v, str) for v in value):
            problems.append(f"execution.extra.{key} must list names (strings) only")
        elif isinstance(value, dict) and not all(isinstance(v, str) for v in value.values()):
            problems.append(f"execution.extra.{key} must map names to digests (strings) only")
    return problems


def _is_int_list(value: list[Any]) -> bool:
    return sum(1 for v in value if isinstance(v, int) and not isinstance(v, bool)) >= 2


def record_id_paths(doc: Mapping[str, Any]) -> list[str]:
    """Paths in the free-form sections and notes that look like record identifiers: a key naming
    them (spelled with look-alike letters too), text writing them out, or a list of integers. A
    certificate publishes the sets only as salted Merkle roots."""
    found: list[str] = []
    stack: list[tuple[Any, str]] = []
    for section in _FREE_FORM:
        top, _, name = section.partition(".")
        value = doc.get(top, {}).get(name) if isinstance(doc.get(top), Mapping) else None
        stack.append((value, section))
    while stack:
        value, where = stack.pop()
        if isinstance(value, Mapping):
            for key, item in value.items():
                here = f"{where}.{key}"
                if isinstance(key, str):
                    word = _skeleton(key).replace(" ", "")
                    if RECORD_ID_KEY.search(word) or RECORD_ID_STEM.search(word):
                        found.append(here)
                stack.append((item, here))
        elif isinstance(value, list):
            if _is_int_list(value):
                found.append(where)
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, str) and _RECORD_ID_TEXT.search(_skeleton(value)):
            found.append(where)
    return sorted(set(found))


def _words(key: str) -> list[str]:
    """The words of a key: split at ``_``, ``-``, spaces, dots and camelCase humps, folded."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [w for w in re.split(r"[^0-9a-z]+", _skeleton(spaced)) if w]


def _seed_key(key: str) -> bool:
    return bool(RAW_SEED_KEY.search(_skeleton(key))) or any(w in _SECRET_WORDS for w in _words(key))


def raw_seed_paths(document: Any, path: str = "") -> list[str]:
    """Paths anywhere in ``document`` that look like a raw seed or key: a seed-like key (e.g.
    ``execution.extra.seed``, ``rng``, ``noise_key``, ``secret``, ``entropy``, also spelled with
    look-alike letters), a string value that writes one out (``"seed=1234"``, ``"rng: 1234"``), or
    64+ hex digits outside the fields that hold hashes (a 256-bit key written out).

    Anyone holding the seed, the retain data and the model can regenerate and strip the noise, so a
    certificate must hold only the seed's commitment.
    """
    found: list[str] = []
    if isinstance(document, Mapping):
        names_only = path in _NAME_MAP_PATHS
        for key, value in document.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and not names_only and key not in _ALLOWED_SEED_KEYS and _seed_key(key):
                found.append(here)
            found.extend(raw_seed_paths(value, here))
    elif isinstance(document, list):
        for i, value in enumerate(document):
            found.extend(raw_seed_paths(value, f"{path}[{i}]"))
    elif isinstance(document, str):
        text = _skeleton(document)
        if RAW_SEED_VALUE.search(text) or (
                re.sub(r"\[\d+\]", "[]", path) not in _HASH_PATHS and _HEX_SECRET.search(text)):
            found.append(path)
    return found


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
    claim, m, acc = doc["claim"], doc["mechanism"], doc["accounting"]
    ex, art, chain = doc["execution"], doc["artifacts"], doc["chain"]
    problems: list[str] = []

    # the claim is the mechanism's target (docs/theory.md#what-a-certificate-records)
    for key in ("variant", "eps", "delta"):
        if claim[key] != m[key]:
            problems.append(f"claim.{key} is {claim[key]!r} but mechanism.{key} is {m[key]!r}")
    if acc["method"] != m["method"]:
        problems.append(f"accounting.method is {acc['method']!r} but mechanism.method is {m['method']!r}")

    # T, the per-step schedules and the steps actually run
    problems.extend(_mechanism_problems(m))
    if ex["noisy_steps"] != m["T"]:
        problems.append(f"execution.noisy_steps is {ex['noisy_steps']} but mechanism.T is {m['T']}")

    # the unlearned parameters x and their count d
    unlearned = ex["unlearned_parameters"]
    if len(set(unlearned)) != len(unlearned):
        dupes = sorted(n for n, count in Counter(unlearned).items() if count > 1)
        problems.append(f"execution.unlearned_parameters lists {dupes} more than once")
    variant = m["variant"]
    if variant != "retrain" and (not unlearned or ex["d"] < 1):
        problems.append(f"{variant} needs unlearned parameters: got {len(unlearned)} names and d={ex['d']}")
    shapes = ex["parameter_shapes"]
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
    overlap = sorted(set(unlearned) & set(ex["frozen_parameters"]))
    if overlap:
        problems.append(f"parameters {overlap} are listed both as unlearned and as frozen")
    public = art.get("public_tensors") or {}
    overlap = sorted(set(public) & (set(unlearned) | set(ex["frozen_parameters"])))
    if overlap:
        problems.append(f"tensors {overlap} are listed as public and also as unlearned or frozen")
    problems.extend(exact_claim_problems(doc))
    problems.extend(extra_problems(ex["extra"]))
    ids = record_id_paths(doc)
    if ids:
        problems.append(f"{ids} look like record identifiers: a certificate names the retain and forget sets only "
                        "by salted Merkle roots (published identifiers say who was forgotten)")

    # clipping granularity vs variant (docs/theory.md#gradient-clipping, #model-clipping)
    needs_clip = variant == "gradient_clipping" or (
        variant == "model_clipping" and m["mode"] == "clip_noise_before_projection")
    if needs_clip and ex["clipping"] not in _GRADIENT_CLIPS:
        label = variant if variant == "gradient_clipping" else f"{variant} ({m['mode']})"
        problems.append(f"{label} needs gradient clipping per_sample or batch, "
                        f"but execution.clipping is {ex['clipping']!r}")

    # digests of the model; model_before may be a salted commitment instead (docs/certificates.md)
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

    # the chain link
    if (chain["sequence"] == 0) != (chain["previous"] is None):
        problems.append(f"chain.sequence is {chain['sequence']} but chain.previous is "
                        f"{'absent' if chain['previous'] is None else 'set'}: the first certificate "
                        f"(sequence 0) and only it has no previous")
    return problems
