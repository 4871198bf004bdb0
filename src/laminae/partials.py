"""Helpers for reducers that merge across shards (`Reducer.partial` / `Reducer.absorb`, see
laminae.experiment): a shard's per-token arrays copied into the whole run's, one layer at a time.

    >>> # in partial(): the per-token datasets are already in the .h5; add the running state
    >>> group = handle.create_group(PARTIAL); moments.save(group, "cosine"); handle.close()
    >>> # in absorb(start, folder): copy the shard's tokens into place, merge its state
    >>> with h5py.File(folder / "cosines.h5", "r") as part:
    ...     rows = copy_token_rows(part, {"cosine": self.cosine_out}, start)   # (n_layers, rows) each
    ...     self.moments.merge(RunningMoments.load(part[PARTIAL], "cosine"))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PARTIAL = "partial"   # the HDF5 group a reducer's partial() writes its running state into


def copy_token_rows(source: Any, targets: Mapping[str, Any], start: int) -> int:
    """Copy each (n_layers, rows) dataset `source[name]` (an open h5py file of a shard's
    partial) into `targets[name][:, start : start + rows]`, one layer at a time (memory: one
    layer of the shard). Returns `rows`, which every named dataset must share."""
    rows = None
    for name, target in targets.items():
        data = source[name]
        if rows is None:
            rows = data.shape[1]
        if data.ndim != 2 or data.shape != (target.shape[0], rows):
            raise ValueError(f"{name}: a shard holds {data.shape}, expected ({target.shape[0]}, {rows})")
        for layer in range(data.shape[0]):
            target[layer, start : start + rows] = data[layer]
    return int(rows or 0)
