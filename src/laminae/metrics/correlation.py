"""Pearson and Spearman correlation between paired per-item values, with a seeded percentile
bootstrap over items that never holds more than a bounded block of replicates in memory.

    >>> values = np.stack([pl_attn, pl_mlp, pl_hs])          # (n_variables, n_items)
    >>> boot = bootstrap_correlations(values, pairs=[(0, 2), (1, 2)], n_bootstrap=1000,
    ...                               confidence=0.95, seed=[0, 1])
    >>> boot.value.shape, boot.ci_low.shape                 # (n_methods, n_pairs) each
    ((2, 2), (2, 2))
    >>> boot.value[METHODS.index("spearman"), 0]           # Spearman of variables 0 and 2

Definitions (float64 throughout):
- Pearson: sum(dx dy) / sqrt(sum(dx^2) sum(dy^2)), d = deviation from the mean; Spearman: the
  Pearson correlation of the average ranks (ties share their mean rank, as scipy's "average").
  NaN when either vector is constant or there are fewer than 2 items. The point estimates are
  `laminae.metrics.rsa.correlate`.
- Bootstrap: replicate b resamples n items with replacement, the b-th row of
  `np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))` (drawn block by block,
  which gives the same numbers); every pair and method sees the same resamples. Each replicate
  is the correlation of the resampled vectors; Spearman re-ranks the resample, so an item drawn
  k times is k tied values sharing their average rank. Computed exactly from the draw counts
  (item i drawn k_i times weighs k_i), without materialising the resampled vectors.
  Replicates with fewer than 2 distinct items, or a constant resampled vector, are NaN and left
  out of the interval; the CI is the central percentile interval (`percentile_interval`).

Cost per call: O(n log n) to sort each variable once, then O(n_bootstrap x n) for the
replicates: one matrix product for every Pearson replicate of a block, and per Spearman
replicate a gather, a cumulative sum and a few passes over n floats per variable, plus one
gather per pair. Measured on one core, both methods for 2 pairs of 3 variables: about 0.2 us
per item and resample at 10^4 to 10^5 items, 0.7 us at 10^6 (cache misses). Memory: per
variable a sort order, per pair an alignment map (int64, n each), the (n, m) moment columns,
and a few blocks of about BLOCK_ELEMENTS float64 values, whatever n_bootstrap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from laminae.metrics.resampling import Seed, as_generator, bootstrap_counts, check_confidence, percentile_interval
from laminae.metrics.rsa import ranks_from_sorted_weights, tie_groups, correlate

METHODS = ("pearson", "spearman")
# Items x replicates per block of the bootstrap (float64 arrays of this many elements, a few
# alive at once): 2**21 = 16 MiB each; with a million items, blocks of 2 replicates.
BLOCK_ELEMENTS = 2**21


@dataclass(frozen=True)
class CorrelationBootstrap:
    """Point estimates and percentile CIs, each (n_methods, n_pairs), methods in `METHODS`
    order; `n_valid` counts the replicates that entered each CI (NaN ones are left out)."""

    pairs: tuple[tuple[int, int], ...]
    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    n_valid: np.ndarray          # (n_methods, n_pairs) int64
    n_items: int
    n_bootstrap: int
    confidence: float


def bootstrap_correlations(values: np.ndarray, pairs: Sequence[tuple[int, int]], *, n_bootstrap: int,
                           confidence: float, seed: Seed, block_elements: int = BLOCK_ELEMENTS
                           ) -> CorrelationBootstrap:
    """Pearson and Spearman of `values[a]` with `values[b]` for each (a, b) in `pairs`, with a
    percentile bootstrap over items (module docstring). values: (n_variables, n_items), finite.
    `seed` seeds `np.random.default_rng` (an int, a list of ints, or a Generator to draw from)."""
    check_confidence(confidence)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"values must be (n_variables, n_items), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("values must be finite (drop the items with a non-finite value first)")
    pairs = tuple((int(a), int(b)) for a, b in pairs)
    n = x.shape[1]
    value = np.stack([correlate(x[[a for a, _ in pairs]], x[[b for _, b in pairs]], method) for method in METHODS]
                     ) if n >= 2 else np.full((len(METHODS), len(pairs)), np.nan)
    replicates = np.full((len(METHODS), len(pairs), n_bootstrap), np.nan)
    if n >= 2 and n_bootstrap:
        resampler = _Resampler(x, pairs)
        rng = as_generator(seed)
        block = max(1, min(n_bootstrap, block_elements // n))
        for start in range(0, n_bootstrap, block):
            stop = min(start + block, n_bootstrap)
            counts = bootstrap_counts(rng.integers(0, n, size=(stop - start, n)), n).astype(np.float64)
            replicates[:, :, start:stop] = resampler.replicates(counts)
    low, high = percentile_interval(replicates, confidence, ignore_nan=True)
    return CorrelationBootstrap(pairs=pairs, value=value, ci_low=low, ci_high=high,
                                n_valid=np.count_nonzero(np.isfinite(replicates), axis=-1), n_items=n,
                                n_bootstrap=int(n_bootstrap), confidence=float(confidence))


class _Resampler:
    """The data-only part of the bootstrap (centred values, sort orders, tie groups), computed
    once; `replicates(counts)` then reweights it for a block of resamples."""

    def __init__(self, x: np.ndarray, pairs: tuple[tuple[int, int], ...]):
        self.pairs = pairs
        self.used = sorted({k for pair in pairs for k in pair})
        # Pearson is shift-invariant; centring on the full-sample mean keeps the moment formula
        # free of cancellation (path lengths can sit far from 0 with a small spread).
        centred = {k: x[k] - x[k].mean() for k in self.used}
        # Weighted moments of every replicate in one matrix product: (b, n) @ (n, m) with the
        # columns [x_k for k in used] + [x_k^2 for k in used] + [x_a x_b for (a, b) in pairs].
        self.moments = np.stack([*(centred[k] for k in self.used), *(centred[k] ** 2 for k in self.used),
                                 *(centred[a] * centred[b] for a, b in pairs)], axis=1)
        self.order = {k: np.argsort(x[k], kind="stable") for k in self.used}
        inverse = {k: np.argsort(self.order[k], kind="stable") for k in self.used}
        # Where each item of b's sorted order sits in a's sorted order: the Spearman covariance
        # is then summed in b's order, without scattering ranks back to item order.
        self.aligned = {(a, b): inverse[a][self.order[b]] for a, b in pairs}
        self.ties = {}
        for k in self.used:
            first, last = tie_groups(x[k][self.order[k]])
            self.ties[k] = None if np.array_equal(first, last) else (first, last)   # None: no ties

    def replicates(self, counts: np.ndarray) -> np.ndarray:
        """counts: (b, n) draws per item -> (n_methods, n_pairs, b)."""
        out = np.empty((len(METHODS), len(self.pairs), counts.shape[0]))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[METHODS.index("pearson")] = self._pearson(counts)
            out[METHODS.index("spearman")] = self._spearman(counts)
        degenerate = np.count_nonzero(counts, axis=-1) < 2        # one item drawn n times
        return np.clip(np.where(degenerate, np.nan, out), -1.0, 1.0)

    def _pearson(self, w: np.ndarray) -> np.ndarray:
        total = w.sum(axis=-1)                                    # (b,) = n
        sums = w @ self.moments                                   # (b, m)
        k_used = len(self.used)
        first = {k: sums[:, i] for i, k in enumerate(self.used)}
        var = {k: sums[:, k_used + i] - first[k] ** 2 / total for i, k in enumerate(self.used)}
        return np.stack([(sums[:, 2 * k_used + p] - first[a] * first[b] / total) / np.sqrt(var[a] * var[b])
                         for p, (a, b) in enumerate(self.pairs)])

    def _spearman(self, w: np.ndarray) -> np.ndarray:
        # Weighted average ranks have weighted mean (N + 1) / 2, N the total weight.
        mean = 0.5 * (w.sum(axis=-1) + 1.0)                       # (b,)
        weights, ranks, norm2 = {}, {}, {}
        for k in self.used:
            ws = np.take(w, self.order[k], axis=1)                # (b, n) weights in k's sorted order
            if self.ties[k] is None:
                r = np.cumsum(ws, axis=-1)
                r -= 0.5 * ws
                r += (0.5 - mean)[:, None]
            else:
                first, last = (np.broadcast_to(g, ws.shape) for g in self.ties[k])
                r = ranks_from_sorted_weights(ws, first, last) - mean[:, None]
            weights[k], ranks[k] = ws, r                          # centred ranks, in k's sorted order
            norm2[k] = np.einsum("bn,bn->b", ws * r, r)
        return np.stack([np.einsum("bn,bn->b", weights[b] * ranks[b], np.take(ranks[a], self.aligned[a, b], axis=1))
                         / np.sqrt(norm2[a] * norm2[b]) for a, b in self.pairs])
