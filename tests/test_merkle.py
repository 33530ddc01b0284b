"""Merkle trees: RFC 6962/9162 known answers, inclusion-proof vectors, and salted receipts."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from certun.certificates import MerkleReceipt, merkle_tree, verify_receipt
from certun.certificates._merkle import inclusion_path, leaf_hash, node_hash, tree_root, verify_inclusion
from certun.errors import CertificateFormatError, InvalidParameterError

ASSETS = Path(__file__).parent / "assets" / "merkle"
ROOTS = json.loads((ASSETS / "rfc6962_roots.json").read_text())
INCLUSION = json.loads((ASSETS / "transparency_dev_inclusion.json").read_text())["vectors"]


def rfc_mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, written recursively as the RFC states it (the oracle)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two smaller than n
    return hashlib.sha256(b"\x01" + rfc_mth(leaves[:k]) + rfc_mth(leaves[k:])).digest()


def test_rfc6962_root_vectors():
    """Roots of the first n standard leaves match transparency-dev's RFC 6962 known answers."""
    leaves = [bytes.fromhex(x) for x in ROOTS["leaf_inputs_hex"]]
    assert [leaf_hash(x).hex() for x in leaves] == ROOTS["leaf_hashes_hex"]
    for n, want in enumerate(ROOTS["root_hashes_hex"]):
        assert tree_root([leaf_hash(x) for x in leaves[:n]]).hex() == want


@pytest.mark.parametrize("vector", INCLUSION, ids=[v["source"].removeprefix("testdata/inclusion/") for v in INCLUSION])
def test_transparency_dev_inclusion_vectors(vector):
    """Each transparency-dev inclusion vector verifies exactly when it should (happy paths and 90 attacks)."""
    b64 = base64.b64decode
    ok = verify_inclusion(b64(vector["leafHash"]), vector["leafIdx"], vector["treeSize"],
                          [b64(p) for p in vector["proof"] or []], b64(vector["root"]))
    assert ok is not vector["wantErr"]


@given(st.lists(st.binary(max_size=8), max_size=40))
def test_root_equals_recursive_rfc_definition(leaves):
    """The level-by-level construction gives the RFC's recursive tree hash for every size."""
    assert tree_root([leaf_hash(x) for x in leaves]) == rfc_mth(leaves)


@given(st.integers(min_value=1, max_value=70), st.data())
def test_every_inclusion_path_verifies(n, data):
    """Every leaf's audit path verifies, and fails for any other index or a flipped bit."""
    hashes = [leaf_hash(i.to_bytes(2, "big")) for i in range(n)]
    root = tree_root(hashes)
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    path = inclusion_path(hashes, i)
    assert verify_inclusion(hashes[i], i, n, path, root)
    if n > 1:
        j = data.draw(st.integers(min_value=0, max_value=n - 1).filter(lambda j: j != i))
        assert not verify_inclusion(hashes[i], j, n, path, root)
    if path:
        k = data.draw(st.integers(min_value=0, max_value=len(path) - 1))
        bad = list(path)
        bad[k] = bytes([bad[k][0] ^ 1]) + bad[k][1:]
        assert not verify_inclusion(hashes[i], i, n, bad, root)


def test_node_hash_is_domain_separated():
    """A node hash is never the leaf hash of the concatenated children (second-preimage defence)."""
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) != leaf_hash(a + b)


# ------------------------------------------------------------------------------- salted receipts
ids_strategy = st.sets(st.one_of(st.integers(min_value=0, max_value=10**6), st.text(max_size=6)),
                       min_size=1, max_size=30)


@given(ids_strategy, st.data())
def test_receipts_verify_for_members(ids, data):
    """Every member's receipt verifies against the root, also after a JSON round trip."""
    ids = list(ids)
    tree = merkle_tree(ids, salt_key=b"k" * 32)
    i = data.draw(st.integers(min_value=0, max_value=len(ids) - 1))
    receipt = tree.receipt(i)
    assert receipt.record_id == ids[i]
    assert verify_receipt(receipt, root=tree.root, record_id=ids[i])
    assert verify_receipt(json.loads(json.dumps(receipt.to_dict())), root=tree.root)


@given(ids_strategy, st.one_of(st.integers(min_value=0, max_value=10**6), st.text(max_size=6)))
def test_receipts_fail_for_non_members(ids, outsider):
    """A member's receipt relabelled with a non-member's id fails, and so does asking for another id."""
    ids = list(ids)
    tree = merkle_tree(ids, salt_key=b"k" * 32)
    receipt = tree.receipt(0)
    assume(outsider not in ids)
    forged = MerkleReceipt(**{**receipt.__dict__, "record_id": outsider})
    assert not verify_receipt(forged, root=tree.root)
    assert not verify_receipt(receipt, root=tree.root, record_id=outsider)


def test_receipt_fails_against_another_root():
    """A receipt proves membership of one tree only."""
    a = merkle_tree([1, 2, 3], salt_key=b"a" * 32)
    b = merkle_tree([1, 2, 3, 4], salt_key=b"a" * 32)
    assert not verify_receipt(a.receipt(0), root=b.root)


def test_integer_and_string_ids_differ():
    """The id 5 and the id "5" are different records (type-tagged leaves)."""
    tree = merkle_tree([5], salt_key=b"k" * 32)
    assert verify_receipt(tree.receipt(0), root=tree.root, record_id=5)
    assert not verify_receipt(tree.receipt(0), root=tree.root, record_id="5")


def test_root_depends_on_the_set_and_key_only():
    """Order does not change the root; the salt key and the membership do; random keys differ."""
    key = b"s" * 32
    assert merkle_tree([3, 1, 2], salt_key=key).root == merkle_tree([1, 2, 3], salt_key=key).root
    assert merkle_tree([1, 2, 3], salt_key=b"t" * 32).root != merkle_tree([1, 2, 3], salt_key=key).root
    assert merkle_tree([1, 2], salt_key=key).root != merkle_tree([1, 2, 3], salt_key=key).root
    assert merkle_tree([1, 2, 3]).root != merkle_tree([1, 2, 3]).root


def test_receipt_for_and_receipt_agree():
    """``receipt(i)`` is the receipt of ``ids[i]``; ``receipt_for`` finds it by id."""
    tree = merkle_tree(["b", "a", "c"], salt_key=b"k" * 32)
    assert tree.receipt(0) == tree.receipt_for("b")
    assert {r.record_id for r in tree.receipts()} == {"a", "b", "c"}


def test_bad_inputs_are_refused():
    """Duplicates, booleans, short salt keys and malformed receipts raise typed errors."""
    with pytest.raises(InvalidParameterError, match="unique"):
        merkle_tree([1, 2, 1])
    with pytest.raises(InvalidParameterError, match="record id"):
        merkle_tree([True])
    with pytest.raises(InvalidParameterError, match="salt_key"):
        merkle_tree([1], salt_key=b"short")
    receipt = merkle_tree([1], salt_key=b"k" * 32).receipt(0).to_dict()
    with pytest.raises(CertificateFormatError, match="keys"):
        MerkleReceipt.from_dict({**receipt, "extra": 1})
    with pytest.raises(CertificateFormatError, match="hex"):
        MerkleReceipt.from_dict({**receipt, "salt": "zz"})


def test_empty_tree():
    """The empty tree has RFC 9162's root SHA-256("") and no receipts."""
    tree = merkle_tree([], salt_key=b"k" * 32)
    assert tree.root == hashlib.sha256(b"").hexdigest() and tree.size == 0
    with pytest.raises(InvalidParameterError):
        tree.receipt(0)
