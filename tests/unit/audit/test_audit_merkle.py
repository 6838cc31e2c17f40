"""The RFC 9162 hashing in :mod:`verifier.audit.merkle`, checked against its own recursive definition."""

from __future__ import annotations

import hashlib

import pytest

from verifier.audit.merkle import (
    EMPTY_ROOT,
    canonical_encoding,
    frontier_append,
    frontier_root,
    inclusion_path,
    leaf_hash,
    node_hash,
    tree_root,
    verify_inclusion,
)


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(str(i).encode()) for i in range(n)]


def test_hash_definitions() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # Three leaves: MTH = node(node(l0, l1), l2) (split at the largest power of two below n).
    l0, l1, l2 = _leaves(3)
    assert tree_root([l0, l1, l2]) == node_hash(node_hash(l0, l1), l2)


def test_frontier_gives_the_same_root_as_the_recursion() -> None:
    leaves = _leaves(70)
    frontier: list[bytes] = []
    assert frontier_root(frontier) == EMPTY_ROOT
    for n, leaf in enumerate(leaves):
        frontier_append(frontier, n, leaf)
        assert len(frontier) == bin(n + 1).count("1")
        assert frontier_root(frontier) == tree_root(leaves[: n + 1])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 13, 32, 33])
def test_every_inclusion_proof_verifies(n: int) -> None:
    leaves = _leaves(n)
    root = tree_root(leaves)
    for m in range(n):
        path = inclusion_path(m, leaves)
        assert verify_inclusion(leaves[m], m, n, path, root)
        assert not verify_inclusion(leaves[m], m, n, path, leaf_hash(b"other root"))
        if n > 1:
            assert not verify_inclusion(leaves[(m + 1) % n], m, n, path, root)
            assert not verify_inclusion(leaves[m], (m + 1) % n, n, path, root)
            altered = [bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:]]
            assert not verify_inclusion(leaves[m], m, n, altered, root)
            assert not verify_inclusion(leaves[m], m, n, path[:-1], root)
    assert not verify_inclusion(leaves[0], n, n, [], root)


def test_canonical_encoding_is_sorted_compact_utf8_and_holds_the_index() -> None:
    enc = canonical_encoding(4, {"b": 1, "a": "é", "c": None})
    assert enc == '{"a":"é","b":1,"c":null,"leaf_index":4,"v":1}'.encode()
    assert canonical_encoding(5, {"b": 1, "a": "é", "c": None}) != enc
