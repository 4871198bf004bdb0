"""Representational similarity analysis: correlate the upper triangles (k=1) of similarity
matrices, with a bootstrap over items for confidence intervals.

    >>> r = rsa(s_q, s_k)                        # (n_layers,) from two (n_layers, n, n)
    >>> r = rsa(s_q, s_k, method="spearman")     # ranks (ties averaged), then Pearson
    >>> stacked = np.stack([s_q, s_k, s_v])      # (n_components, n_layers, n, n)
    >>> boot = rsa_bootstrap(stacked, [(0, 1), (0, 2), (1, 2)], n_bootstrap=1000, seed=0)
    >>> boot.ci_low.shape, boot.replicates.shape   # ((3, n_layers), (3, n_layers, 1000))

Bootstrap over items (words): draw n items with replacement, take the similarity submatrix,
and correlate its pairs a < b, except pairs that are the same original item drawn twice (their
similarity is the trivial diagonal; rsatoolbox drops them too). An item drawn k_i times and
another drawn k_j times then contribute the pair (i, j) k_i * k_j times, so each replicate is a
correlation over the original pairs with integer weights k_i * k_j: one matrix product for all
layers and replicates (Pearson), or weighted average ranks (Spearman). Matrices are assumed
symmetric; only their i < j entries are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from laminae.metrics.resampling import (
    Seed,
    as_generator,
    bootstrap_counts,
    bootstrap_indices,
    check_confidence,
    percentile_interval,
)

METHODS = ("pearson", "spearman")

# Bound on the (components x layers x replicates x pairs) rank arrays of the Spearman bootstrap,
# in float64 elements (2**17 = 1 MiB, cache-sized: measured fastest); replicates go in chunks.
_CHUNK_ELEMENTS = 2**17


@dataclass(frozen=True)
class RsaBootstrap:
    """Bootstrap distribution and percentile CI of RSA for each requested pair of matrices.

    Replicates whose resample leaves fewer than 2 distinct pairs or a constant vector are NaN and
    are left out of the CI. With 0 bootstraps the CI is NaN.
    """

    pairs: tuple[tuple[int, int], ...]
    replicates: np.ndarray  # (n_pairs, *lead, n_bootstrap)
    ci_low: np.ndarray  # (n_pairs, *lead)
    ci_high: np.ndarray  # (n_pairs, *lead)
    n_bootstrap: int
    confidence: float


def upper_triangle(s: np.ndarray) -> np.ndarray:
    """Entries above the diagonal, row by row (`np.triu_indices(n, k=1)` order).

    s: (..., n, n) -> (..., n * (n - 1) // 2)
    """
    s = np.asarray(s)
    rows, cols = np.triu_indices(s.shape[-1], k=1)
    return s[..., rows, cols]


def average_ranks(x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Ranks from 1 along the last axis, ties sharing their average rank (scipy's "average").

    x: (..., m) -> (..., m). With integer `weights` (broadcastable to x), the ranks are those
    of the vector in which each entry is repeated weights times (0 = absent: its rank is
    meaningless but finite), read back at each entry.

        >>> average_ranks(np.array([3.0, 1.0, 3.0])).tolist()
        [2.5, 1.0, 2.5]
    """
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, axis=-1)
    w = np.ones_like(x) if weights is None else np.broadcast_to(np.asarray(weights, np.float64), x.shape)
    ws = np.take_along_axis(w, order, axis=-1)
    first, last = tie_groups(xs)
    ranks_sorted = ranks_from_sorted_weights(ws, first, last)
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, axis=-1)
    return ranks


def correlate(x: np.ndarray, y: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Correlation of x and y along the last axis: (..., m), (..., m) -> (...,).

    NaN where either vector is constant.
    """
    _check_method(method)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if method == "spearman":
        x, y = average_ranks(x), average_ranks(y)
    dx = x - x.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.sum(dx * dy, axis=-1) / np.sqrt(np.sum(dx * dx, axis=-1) * np.sum(dy * dy, axis=-1))
    return np.clip(r, -1.0, 1.0)


def rsa(a: np.ndarray, b: np.ndarray, *, method: str = "pearson") -> np.ndarray:
    """RSA between similarity matrices: (..., n, n), (..., n, n) -> (...,).

    The Pearson (or Spearman) correlation of their upper triangles (k=1).
    """
    return correlate(upper_triangle(a), upper_triangle(b), method)


def rsa_bootstrap(
    similarities: np.ndarray,
    pairs: Sequence[tuple[int, int]],
    *,
    method: str = "pearson",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: Seed = 0,
) -> RsaBootstrap:
    """Bootstrap over items of RSA between `similarities[a]` and `similarities[b]` for each
    (a, b) in `pairs`, the same resamples for every pair and leading index.

    similarities: (n_matrices, *lead, n, n). Resamples: `bootstrap_indices(n, n_bootstrap, rng)`
    with rng = `as_generator(seed)`.
    """
    _check_method(method)
    check_confidence(confidence)
    s = np.asarray(similarities, dtype=np.float64)
    if s.ndim < 3 or s.shape[-1] != s.shape[-2]:
        raise ValueError(f"similarities must be (n_matrices, ..., n, n), got shape {s.shape}")
    pairs = tuple((int(a), int(b)) for a, b in pairs)
    n = s.shape[-1]
    lead = s.shape[1:-2]
    counts = bootstrap_counts(bootstrap_indices(n, n_bootstrap, as_generator(seed)), n)  # (B, n)
    weights = bootstrap_pair_weights(counts)  # (B, m)
    x = upper_triangle(s).reshape(s.shape[0], -1, weights.shape[-1])  # (K, L, m)
    used = sorted({i for pair in pairs for i in pair})
    if method == "pearson":
        replicates = _weighted_pearson_fixed(x, weights, pairs, used)
    else:
        replicates = _weighted_spearman(x, weights, pairs, used)  # (n_pairs, L, B)
    replicates = replicates.reshape((len(pairs),) + lead + (n_bootstrap,))
    low, high = percentile_interval(replicates, confidence, ignore_nan=True)
    return RsaBootstrap(
        pairs=pairs,
        replicates=replicates,
        ci_low=low,
        ci_high=high,
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
    )


def bootstrap_pair_weights(counts: np.ndarray) -> np.ndarray:
    """How often each original pair i < j occurs among a resample's pairs a < b of distinct items.

    counts: (n_bootstrap, n) draws per item -> (n_bootstrap, n * (n - 1) // 2), k_i * k_j.
    """
    counts = np.asarray(counts, dtype=np.float64)
    rows, cols = np.triu_indices(counts.shape[-1], k=1)
    return counts[:, rows] * counts[:, cols]


def _weighted_pearson_fixed(
    x: np.ndarray, weights: np.ndarray, pairs: tuple[tuple[int, int], ...], used: list[int]
) -> np.ndarray:
    """Weighted Pearson of fixed vectors under each replicate's weights, from weighted moments.

    x: (K, L, m), weights: (B, m) -> (n_pairs, L, B).
    """
    # Pearson is shift-invariant; centring on the full-sample mean first keeps the raw-moment
    # formula free of cancellation (cosines can all sit near 0.9 with a tiny spread).
    x = x - x.mean(axis=-1, keepdims=True)
    wt = weights.T  # (m, B)
    total = weights.sum(axis=-1)  # (B,)
    first = {k: x[k] @ wt for k in used}  # (L, B) weighted sums
    second = {k: (x[k] * x[k]) @ wt for k in used}
    out = np.empty((len(pairs), x.shape[1], weights.shape[0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        var = {k: second[k] - first[k] ** 2 / total for k in used}
        for p, (a, b) in enumerate(pairs):
            cov = (x[a] * x[b]) @ wt - first[a] * first[b] / total
            out[p] = cov / np.sqrt(var[a] * var[b])
    return np.clip(_degenerate_to_nan(out, weights), -1.0, 1.0)


def _weighted_spearman(
    x: np.ndarray, weights: np.ndarray, pairs: tuple[tuple[int, int], ...], used: list[int]
) -> np.ndarray:
    """Spearman of each replicate (weighted average ranks, then weighted Pearson).

    x: (K, L, m), weights: (B, m) -> (n_pairs, L, B).
    """
    n_layers, m = x.shape[1], x.shape[2]
    n_boot = weights.shape[0]
    # The sort order and tie groups depend only on the data; each replicate only reweights.
    order = {k: np.argsort(x[k], axis=-1, kind="stable") for k in used}  # (L, m)
    inverse = {k: np.argsort(order[k], axis=-1) for k in used}
    groups = {}
    for k in used:
        first, last = tie_groups(np.take_along_axis(x[k], order[k], axis=-1))
        groups[k] = None if np.array_equal(first, last) else (first, last)  # None: no ties
    out = np.empty((len(pairs), n_layers, n_boot))
    chunk = max(1, _CHUNK_ELEMENTS // max(1, len(used) * n_layers * m))
    for start in range(0, n_boot, chunk):
        w = weights[start : start + chunk]  # (b, m)
        total = w.sum(axis=-1)  # (b,)
        # Weighted average ranks always have weighted mean (N + 1) / 2, N the total weight.
        mean = 0.5 * (total + 1.0)
        centred, norm2 = {}, {}
        for k in used:
            ws = w[:, order[k]]  # (b, L, m) weights in each layer's sorted order
            if groups[k] is None:
                ranks = np.cumsum(ws, axis=-1)
                ranks -= 0.5 * ws
                ranks += (0.5 - mean)[:, None, None]
            else:
                first, last = (np.broadcast_to(g, ws.shape) for g in groups[k])
                ranks = ranks_from_sorted_weights(ws, first, last) - mean[:, None, None]
            norm2[k] = np.einsum("blm,blm->bl", ws * ranks, ranks)  # order-free: sorted is fine
            centred[k] = np.take_along_axis(ranks, np.broadcast_to(inverse[k], ranks.shape), axis=-1)
        wcol = w[:, :, None]  # (b, m, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            for p, (a, b) in enumerate(pairs):
                cov = ((centred[a] * centred[b]) @ wcol)[..., 0]  # (b, L)
                out[p, :, start : start + w.shape[0]] = (cov / np.sqrt(norm2[a] * norm2[b])).T
    return np.clip(_degenerate_to_nan(out, weights), -1.0, 1.0)


def _degenerate_to_nan(r: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """NaN for replicates with fewer than 2 distinct pairs (r: (..., B), weights: (B, m))."""
    too_few = np.count_nonzero(weights, axis=-1) < 2  # (B,)
    return np.where(too_few, np.nan, r)


def tie_groups(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For values sorted along the last axis, the first and last sorted position of each
    entry's tie group: (..., m) -> two (..., m) integer arrays."""
    m = xs.shape[-1]
    pos = np.broadcast_to(np.arange(m), xs.shape)
    change = xs[..., 1:] != xs[..., :-1]  # (..., m - 1)
    starts = np.concatenate([np.ones(xs.shape[:-1] + (1,), bool), change], axis=-1)
    ends = np.concatenate([change, np.ones(xs.shape[:-1] + (1,), bool)], axis=-1)
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=-1)
    last = np.minimum.accumulate(np.where(ends, pos, m - 1)[..., ::-1], axis=-1)[..., ::-1]
    return first, last


def ranks_from_sorted_weights(ws: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Average ranks in sorted order: the weight below the tie group plus (group weight + 1) / 2.

    ws, first, last: (..., m) -> (..., m).
    """
    cumulative = np.cumsum(ws, axis=-1)
    below = np.take_along_axis(cumulative, first, axis=-1) - np.take_along_axis(ws, first, axis=-1)
    group = np.take_along_axis(cumulative, last, axis=-1) - below
    return below + 0.5 * (group + 1.0)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"rsa method must be one of {METHODS}, got {method!r}")
