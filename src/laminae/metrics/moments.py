"""Per-layer statistics over tokens, streamed chunk by chunk with exact merges.

    >>> moments = RunningMoments(n_layers=36)
    >>> for values, valid in chunks:             # each (n_layers, rows); only `valid` entries count
    ...     moments.update(values, valid)
    >>> stats = moments.stats()
    >>> stats.mean.shape, stats.sem.shape          # (n_layers,) each
    ((36,), (36,))

Each chunk's mean and sum of squared deviations are computed two-pass, then merged with Chan,
Golub & LeVeque's update, so the result equals the two-pass statistics of all rows to
round-off however the rows are split. A sharded extraction saves each shard's state (`save`)
and merges them in row order (`merge`, the same update), so it equals an unsharded run to
round-off too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LayerStats:
    """Per-layer summary over tokens; each field (n_layers,)."""

    mean: np.ndarray
    sd: np.ndarray       # ddof = 1; NaN for n < 2
    sem: np.ndarray      # sd / sqrt(n)
    n: np.ndarray        # int64


class RunningMoments:
    """Per-layer count, mean and sum of squared deviations (M2), merged chunk by chunk.

    Each chunk's mean and M2 are computed two-pass, then merged with Chan, Golub & LeVeque's
    update: delta = mean_b - mean_a, mean = mean_a + delta n_b / n, M2 = M2_a + M2_b +
    delta^2 n_a n_b / n. Result equals the two-pass statistics of all rows to round-off."""

    def __init__(self, n_layers: int):
        self.n = np.zeros(n_layers, dtype=np.int64)
        self.mean = np.zeros(n_layers, dtype=np.float64)
        self.m2 = np.zeros(n_layers, dtype=np.float64)

    def update(self, values: np.ndarray, valid: np.ndarray) -> None:
        """values, valid: (n_layers, rows); only `valid` entries count."""
        n_b = valid.sum(axis=1, dtype=np.int64)
        mean_b = np.where(valid, values, 0.0).sum(axis=1) / np.maximum(n_b, 1)
        deviation = np.where(valid, values - mean_b[:, None], 0.0)
        m2_b = np.einsum("lr,lr->l", deviation, deviation)
        n = self.n + n_b
        weight = n_b / np.maximum(n, 1)
        delta = mean_b - self.mean
        self.m2 = self.m2 + m2_b + delta * delta * self.n * weight
        self.mean = self.mean + delta * weight
        self.n = n

    def merge(self, other: "RunningMoments") -> None:
        """Add another accumulator's rows (e.g. a shard's), by the same update: exact to round-off."""
        n = self.n + other.n
        weight = other.n / np.maximum(n, 1)
        delta = other.mean - self.mean
        self.m2 = self.m2 + other.m2 + delta * delta * self.n * weight
        self.mean = self.mean + delta * weight
        self.n = n

    def save(self, group: Any, name: str) -> None:
        """Write the state (n, mean, m2) under `group[name]` (an open h5py group), for `load`."""
        target = group.create_group(name)
        for key in ("n", "mean", "m2"):
            target.create_dataset(key, data=getattr(self, key), track_times=False)

    @classmethod
    def load(cls, group: Any, name: str) -> "RunningMoments":
        """The state `save` wrote."""
        moments = cls(len(group[name]["n"]))
        moments.n, moments.mean, moments.m2 = (np.asarray(group[name][key][()]) for key in ("n", "mean", "m2"))
        return moments

    def stats(self) -> LayerStats:
        n = self.n.copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, self.mean, np.nan)
            sd = np.where(n > 1, np.sqrt(self.m2 / (n - 1)), np.nan)
            sem = sd / np.sqrt(n)
        return LayerStats(mean=mean, sd=sd, sem=sem, n=n)


def layer_medians(cosine: Any, included: Any, n_layers: int) -> np.ndarray:
    """Median of the included values per layer, reading one layer at a time (so `cosine` and
    `included` may be open h5py datasets). NaN where a layer has none."""
    out = np.full(n_layers, np.nan)
    for layer in range(n_layers):
        values = np.asarray(cosine[layer], dtype=np.float64)[np.asarray(included[layer], dtype=bool)]
        if values.size:
            out[layer] = np.median(values)
    return out
