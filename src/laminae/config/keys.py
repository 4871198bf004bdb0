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
# json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True), without building an
# encoder per call (a sweep's plan hashes tens of thousands of stage configs)
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)
_SCALARS = frozenset({str, int, float, bool, type(None)})


def stable_hash(obj: Any) -> str:
    """Short content hash of a JSON-serialisable object, independent of dict order."""
    return hashlib.sha256(_ENCODER.encode(obj).encode()).hexdigest()[:HASH_LENGTH]


def plain_copy(value: Any) -> Any:
    """`copy.deepcopy(value)`, faster for what configs hold (dicts, lists, scalars); anything
    else is deep-copied as before."""
    if type(value) is dict:
        return {key: plain_copy(child) for key, child in value.items()}
    if type(value) is list:
        return [plain_copy(child) for child in value]
    if type(value) in _SCALARS:
        return value
    return copy.deepcopy(value)


def select_keys(cfg: dict[str, Any], dotted_keys: tuple[str, ...]) -> dict[str, Any]:
    """The nested sub-dict of `cfg` holding only `dotted_keys` (deep copies)."""
    out: dict[str, Any] = {}
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        source, target = cfg, out
        for part in parents:
            source = source[part]
            target = target.setdefault(part, {})
        target[leaf] = plain_copy(source[leaf])
    return out


def get_key(cfg: dict[str, Any], dotted: str) -> Any:
    """The value of a dotted key, e.g. `get_key(cfg, "extract.storage_dtype")`."""
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node
