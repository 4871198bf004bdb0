"""Dotted config keys and content hashes: the vocabulary of stage hashing.

    >>> select_keys({"a": {"b": 1, "c": 2}, "d": 3}, ("a.b", "d"))
    {'a': {'b': 1}, 'd': 3}
    >>> get_key({"a": {"b": 1}}, "a.b")
    1
    >>> stable_hash({"b": 1, "a": [2]}) == stable_hash({"a": [2], "b": 1})
    True
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

HASH_LENGTH = 10


def stable_hash(obj: Any) -> str:
    """Short content hash of a JSON-serialisable object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def select_keys(cfg: dict[str, Any], dotted_keys: tuple[str, ...]) -> dict[str, Any]:
    """The nested sub-dict of `cfg` holding only `dotted_keys` (deep copies)."""
    out: dict[str, Any] = {}
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        source, target = cfg, out
        for part in parents:
            source = source[part]
            target = target.setdefault(part, {})
        target[leaf] = copy.deepcopy(source[leaf])
    return out


def get_key(cfg: dict[str, Any], dotted: str) -> Any:
    """The value of a dotted key, e.g. `get_key(cfg, "extract.storage_dtype")`."""
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node
