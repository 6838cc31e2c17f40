"""RFC 9162 Merkle tree hashing, the canonical record encoding, and inclusion proofs.

Everything an outside party needs to check a medverify audit proof is in this module and in ``PROOFS.md``:

* **Canonical encoding** of record number ``i`` (0-based leaf index): the JSON object of the record's fields
  (see :func:`canonical_encoding`) plus ``"v": 1`` and ``"leaf_index": i``, serialised with keys sorted, no
  whitespace (separators ``,`` and ``:``), UTF-8 without escaping non-ASCII, absent values as ``null``, the
  time as RFC 3339 UTC with six fraction digits (``2024-05-01T12:00:00.000000Z``), numbers as
  Python's ``json`` writes them. Because the leaf index is inside, moving a record to another position
  changes its hash.
* **Leaf hash** = SHA-256(0x00 || encoding). **Interior node** = SHA-256(0x01 || left || right).
* **Tree head** of ``n`` leaves is RFC 9162's MTH: SHA-256 of the empty string for ``n = 0``, the leaf hash
  for ``n = 1``, else ``node(MTH(D[0:k]), MTH(D[k:n]))`` with ``k`` the largest power of two below ``n``.
* **Inclusion proof check** (RFC 9162 section 2.1.3.2), given ``leaf_index``, ``tree_size``, ``leaf_hash``,
  the ``audit_path`` and the signed ``root_hash``::

      if leaf_index >= tree_size: fail
      fn, sn, r = leaf_index, tree_size - 1, leaf_hash
      for p in audit_path:
          if sn == 0: fail
          if fn is odd or fn == sn:
              r = SHA-256(0x01 || p || r)
              while fn is even and fn != 0:   # skip levels where this node has no right sibling
                  fn >>= 1; sn >>= 1
          else:
              r = SHA-256(0x01 || r || p)
          fn >>= 1; sn >>= 1
      succeed iff sn == 0 and r == root_hash

The append path keeps a *frontier* (RFC 9162 "compact range" of ``[0, n)``): the roots of the perfect subtrees
that make up the tree, largest first, one per set bit of ``n``. Appending is O(log n) and the root is the
right fold of the frontier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "EMPTY_ROOT",
    "ENCODING_VERSION",
    "canonical_encoding",
    "frontier_append",
    "frontier_root",
    "inclusion_path",
    "leaf_hash",
    "node_hash",
    "tree_root",
    "verify_inclusion",
]

ENCODING_VERSION = 1
#: MTH of the empty tree.
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256


def canonical_encoding(leaf_index: int, fields: dict[str, Any]) -> bytes:
    """The bytes whose leaf hash goes into the log for the record at ``leaf_index``.

    ``fields`` are the record's JSON fields (as :meth:`AuditEntry.to_json_dict` gives them).
    """
    obj = dict(fields)
    obj["v"] = ENCODING_VERSION
    obj["leaf_index"] = leaf_index
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def leaf_hash(encoding: bytes) -> bytes:
    """SHA-256(0x00 || encoding)."""
    return _sha256(b"\x00" + encoding).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def frontier_append(frontier: list[bytes], size: int, leaf: bytes) -> None:
    """Add ``leaf`` to the frontier of a tree of ``size`` leaves, in place."""
    node = leaf
    while size & 1:
        node = _sha256(b"\x01" + frontier.pop() + node).digest()
        size >>= 1
    frontier.append(node)


def frontier_root(frontier: Sequence[bytes]) -> bytes:
    """The tree head (MTH) of the tree whose frontier this is."""
    if not frontier:
        return EMPTY_ROOT
    root = frontier[-1]
    for i in range(len(frontier) - 2, -1, -1):
        root = _sha256(b"\x01" + frontier[i] + root).digest()
    return root


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def tree_root(leaves: Sequence[bytes], start: int = 0, end: int | None = None) -> bytes:
    """MTH of ``leaves[start:end]`` computed by the RFC 9162 recursion."""
    end = len(leaves) if end is None else end
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[start]
    k = _split(n)
    return node_hash(tree_root(leaves, start, start + k), tree_root(leaves, start + k, end))


def inclusion_path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 PATH(index, D[n]) for the tree made of ``leaves``: sibling hashes, leaf level first."""
    if not 0 <= index < len(leaves):
        raise ValueError(f"leaf {index} is not in a tree of {len(leaves)}")
    path: list[bytes] = []
    start, end = 0, len(leaves)
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(tree_root(leaves, start + k, end))
            end = start + k
        else:
            path.append(tree_root(leaves, start, start + k))
            start += k
    path.reverse()
    return path


def verify_inclusion(
    leaf: bytes, leaf_index: int, tree_size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2: whether ``path`` proves ``leaf`` at ``leaf_index`` under ``root``."""
    if not 0 <= leaf_index < tree_size:
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root
