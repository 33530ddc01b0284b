"""What a certificate must not disclose: raw seeds or keys, and record identifiers in its free-form sections.

A seed lets anyone holding the retain data and the model regenerate and strip the noise; published
identifiers say who was forgotten. Both scans fold look-alike letters first. ``execution.extra`` is a
closed section (:data:`EXTRA_KEYS`). Source: docs/certificates.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

__all__ = [
    "EXTRA_KEYS",
    "RAW_SEED_KEY",
    "RAW_SEED_VALUE",
    "RECORD_ID_KEY",
    "RECORD_ID_STEM",
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
                         "artifacts.forget_set.merkle_root", "execution.sisa.shard_states[].retain_root_before",
                         "execution.sisa.shard_states[].retain_root_after",
                         "execution.sisa.shard_states[].restarted_from"})
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
