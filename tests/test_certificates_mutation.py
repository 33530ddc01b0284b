"""Mutation laws: every change to a certificate is caught, and forgeries in the unsafe direction fail
even when the forger recomputes the content digest.

Three layers, from integrity to meaning:

* any single-leaf change of an issued certificate (number nudged, string changed, key removed) is a FAIL
  (the content digest covers every field but the proof, the schema covers the rest);
* the same on a *signed* certificate whose digest the forger recomputed, with the signer's key pinned
  (the signature covers every field, the proof's own included);
* targeted forgeries of an *unsigned* certificate with a recomputed digest: a smaller σ, a larger C0,
  C1 or γ, a changed T, a smaller claimed ε or δ, a swapped variant, a different model digest, ... are
  FAILed by a check other than the digest. Changes in the safe direction (more noise) or of
  unverifiable metadata (device, timestamps) cannot be detected without a signature: see
  docs/certificates.md, "What verification cannot prove".
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import certificates_fixtures as fx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from certun.certificates import model_digest, public_key_multibase, verify
from certun.certificates._digest import root_digest

Path = tuple[Any, ...]


def leaf_paths(value: Any, path: Path = ()) -> list[Path]:
    """Paths of every leaf (scalars, empty containers) of a JSON value."""
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in leaf_paths(v, (*path, k))]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in leaf_paths(v, (*path, i))]
    return [path]


def _parent(doc: Any, path: Path) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def nudge(value: Any, u: float) -> Any:
    """A different value of the same kind: numbers moved by a relative ``u``, strings changed,
    booleans flipped, null made 0, empty containers given an element."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + (1 if u > 0 else -1)
    if isinstance(value, float):
        return value * (1 + u) if value != 0 else u
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1") if value else "x"
    if value is None:
        return 0
    if isinstance(value, list):
        return [0]
    if isinstance(value, dict):
        return {"x": 0}
    raise TypeError(value)


def mutate(cert: dict, path: Path, kind: str, u: float) -> dict:
    """A deep copy of ``cert`` with the leaf at ``path`` nudged or removed."""
    out = copy.deepcopy(cert)
    parent = _parent(out, path)
    if kind == "remove":
        del parent[path[-1]]
    else:
        parent[path[-1]] = nudge(parent[path[-1]], u)
    return out


@functools.cache
def unsigned_cert() -> dict:
    return fx.certificate()


@functools.cache
def signed_cert() -> dict:
    return fx.certificate(signed=True)


PINNED = (public_key_multibase(fx.TEST_KEY),)
KINDS = ("nudge", "remove")


def _survivors(cert: dict, *, reseal: bool, trusted: tuple = ()) -> list[str]:
    out = []
    for path in leaf_paths(cert):
        for kind in KINDS:
            for u in (1e-3, -0.5):
                mutated = mutate(cert, path, kind, u)
                if mutated == cert:
                    continue
                if reseal:
                    mutated = fx.reseal(mutated, keep_proof=True)
                    if mutated == cert:
                        continue
                report = verify(mutated, trusted_keys=trusted)
                if report.ok or not report.failures:
                    out.append(f"{kind} {u} at {'.'.join(map(str, path))}")
    return out


def test_every_single_leaf_change_is_detected():
    """Exhaustively: every leaf of an issued certificate, nudged either way or removed, FAILs a check."""
    paths = leaf_paths(unsigned_cert())
    assert ("mechanism", "sigma") in paths and ("artifacts", "forget_set", "merkle_root") in paths
    assert _survivors(unsigned_cert(), reseal=False) == []


def test_every_resealed_change_of_a_signed_certificate_is_detected():
    """Exhaustively: on a signed certificate with the signer pinned, recomputing the digest after a change
    does not help the forger: the signature (which also covers the proof fields) FAILs."""
    assert ("proof", "created") in leaf_paths(signed_cert())
    assert _survivors(signed_cert(), reseal=True, trusted=PINNED) == []


@settings(max_examples=60)
@given(data=st.data(), u=st.floats(min_value=-0.9, max_value=10.0).filter(lambda x: abs(x) > 1e-9))
def test_hypothesis_leaf_mutation_is_detected(data, u):
    """Hypothesis picks a leaf, a mutation and its size; some check FAILs and the report is not ok."""
    cert = unsigned_cert()
    path = data.draw(st.sampled_from(leaf_paths(cert)), label="leaf")
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    mutated = mutate(cert, path, kind, u)
    if mutated == cert:
        return
    report = verify(mutated)
    assert not report.ok
    assert report.failures


@settings(max_examples=60)
@given(data=st.data(), u=st.floats(min_value=-0.9, max_value=10.0).filter(lambda x: abs(x) > 1e-9))
def test_hypothesis_resealed_signed_mutation_fails_signature(data, u):
    """Hypothesis picks a leaf of a signed certificate; after a resealed change the signature FAILs."""
    cert = signed_cert()
    path = data.draw(st.sampled_from(leaf_paths(cert)), label="leaf")
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    mutated = fx.reseal(mutate(cert, path, kind, u), keep_proof=True)
    if mutated == cert:
        return
    report = verify(mutated, trusted_keys=PINNED)
    assert not report.ok
    assert report.failures


# ------------------------------------------------------------------ forgeries in the unsafe direction
def _forge(edit) -> dict:
    cert = copy.deepcopy(unsigned_cert())
    edit(cert)
    return fx.reseal(cert)


def _non_integrity_failures(report) -> set[str]:
    return set(fx.failed(report)) - {"content_digest", "signature"}


shrink = st.floats(min_value=1e-6, max_value=0.95)
grow = st.floats(min_value=1e-6, max_value=20.0)


@given(u=shrink)
def test_smaller_sigma_fails(u):
    """Less noise than planned (σ·(1−u)) FAILs recompute: plan's σ is the smallest that works."""
    def edit(c):
        c["mechanism"]["sigma"] *= 1 - u
    report = verify(_forge(edit))
    assert "recompute" in fx.failed(report)


@pytest.mark.parametrize("name", ["C0", "C1", "gamma"])
@given(u=grow)
def test_larger_C0_C1_gamma_fails(name, u):
    """A larger ball, clipping norm or step size than planned FAILs recompute (docs/theory.md#laws)."""
    def edit(c):
        c["mechanism"][name] *= 1 + u
    report = verify(_forge(edit))
    assert "recompute" in fx.failed(report)


@given(k=st.integers(min_value=-99, max_value=500).filter(lambda k: k != 0), consistent=st.booleans())
def test_changed_T_fails(k, consistent):
    """Changing T FAILs: alone, against the noisy steps run; with them, because λ = 0 and
    T = C0/(γ C1) minimises ε_R (docs/theory.md#gradient-clipping), so any other T costs more ε."""
    def edit(c):
        c["mechanism"]["T"] += k
        if consistent:
            c["execution"]["noisy_steps"] += k
    report = verify(_forge(edit))
    assert _non_integrity_failures(report)
    if consistent:
        assert "recompute" in fx.failed(report)
    else:
        assert "consistency" in fx.failed(report)


@pytest.mark.parametrize("key", ["eps", "delta"])
@given(u=shrink, with_target=st.booleans())
def test_smaller_claim_fails(key, u, with_target):
    """A smaller claimed ε or δ FAILs: alone it contradicts the mechanism's target; with the target
    changed too, the recomputed guarantee no longer supports it."""
    def edit(c):
        c["claim"][key] *= 1 - u
        if with_target:
            c["mechanism"][key] *= 1 - u
    report = verify(_forge(edit))
    assert ("recompute" if with_target else "consistency") in fx.failed(report)


@pytest.mark.parametrize("variant", ["model_clipping", "output_perturbation", "retrain"])
@pytest.mark.parametrize("where", [("claim",), ("mechanism",), ("claim", "mechanism")])
def test_swapped_variant_fails(variant, where):
    """Relabelling the variant (in the claim, the mechanism, or both) FAILs."""
    def edit(c):
        for section in where:
            c[section]["variant"] = variant
    report = verify(_forge(edit))
    assert _non_integrity_failures(report)


@given(index=st.integers(min_value=0, max_value=3), seed=st.integers(min_value=1, max_value=10_000))
def test_different_model_digest_fails_against_the_model(index, seed):
    """Replacing the recorded model digest by another model's (root and subject made consistent) FAILs
    the model check against the real model."""
    other = model_digest(fx.params(seed))
    name = sorted(other.tensors)[index]
    assume(other.tensors[name] != unsigned_cert()["artifacts"]["unlearned_model"]["tensors"][name])

    def edit(c):
        tensors = c["artifacts"]["unlearned_model"]["tensors"]
        tensors[name] = other.tensors[name]
        root = root_digest(tensors)
        c["artifacts"]["unlearned_model"]["root"] = root
        c["subject"][0]["digest"]["sha256"] = root.removeprefix("sha256:")
    report = verify(_forge(edit), model={**fx.params(), **fx.frozen()})
    assert fx.failed(report) == ["model"]


@pytest.mark.parametrize(("path", "value"), [
    (("execution", "clipping"), None),
    (("execution", "d"), 25),
    (("execution", "noisy_steps"), 0),
    (("execution", "unlearned_parameters"), ["fc1.weight"]),
    (("randomness", "noise_draws"), "reused"),
    (("execution", "extra"), {"rng_state": [1, 2, 3]}),
    (("mechanism", "sigma0"), 1.0),
    (("mechanism", "mode"), "noise_after_projection"),
])
def test_semantic_forgeries_fail(path, value):
    """Forged execution facts that contradict the mechanism or the rules FAIL a non-digest check."""
    def edit(c):
        _parent(c, path)[path[-1]] = value
    report = verify(_forge(edit))
    assert _non_integrity_failures(report), str(report)
