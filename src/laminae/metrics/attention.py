"""Statistics of attention patterns: where each head looks, per query.

A pattern row is one query's attention probabilities over the keys of its own window (after
masking and softmax), per head: `pattern[r, h, j]` = p_j, key j = position j of the window,
0 beyond the keys the query can see (the causal mask, or past the window's end).

    >>> stats = pattern_statistics(pattern, position, n_visible, causal=True)
    >>> stats.shape                       # (rows, n_heads, len(STATISTICS))
    >>> stats[..., STATISTICS.index("sink")]   # mass on the window's first token
    >>> sums, counts = block_sums(stats, block, n_blocks)     # (n_blocks, n_heads, n_stats) each
    >>> replicates = block_bootstrap_means(sums, counts, n_bootstrap=1000, seed=0)  # (1000, ...)

Definitions, per query at position q (0-based) that sees n = `n_visible` keys, per head, in
float64 whatever the input dtype:

- `entropy`   H = -sum_j p_j ln p_j (nats; 0 ln 0 = 0). 0 when the head looks at one key, ln n
  when it spreads evenly over the n keys it can see.
- `entropy_normalised`   H / ln n, in [0, 1]: comparable across positions, since early queries
  of a causal model see fewer keys. Undefined (NaN) when n < 2.
- `sink`   p_0, the mass on the window's first token (the "attention sink", Xiao et al. 2023).
- `distance`   sum_j p_j (q - j) for a causal model (how far back the head looks, in tokens);
  sum_j p_j |q - j| for an encoder.
- `sink_uniform`   1 / n: the mass the first token would get under uniform attention over the
  visible keys (the baseline for `sink`; the same for every head).

Means over queries are resampled in blocks (`block_bootstrap_means`): the resampling unit is a
block of consecutive queries of one window, so that neighbouring queries, which are not
independent, are drawn together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from laminae.metrics.resampling import Seed, as_generator, bootstrap_counts, bootstrap_indices

STATISTICS = ("entropy", "entropy_normalised", "sink", "distance", "sink_uniform")


def pattern_statistics(pattern: np.ndarray, position: np.ndarray, n_visible: np.ndarray, *,
                       causal: bool) -> np.ndarray:
    """The statistics of every query and head.

    pattern: (rows, n_heads, n_keys), any float dtype; position: (rows,) the query's position
    in its window; n_visible: (rows,) how many keys it can see (position + 1 when causal, the
    window's length for an encoder). Returns (rows, n_heads, len(STATISTICS)) float64, columns
    in STATISTICS order; `entropy_normalised` NaN where n_visible < 2, every statistic NaN for a
    row with a non-finite probability.
    """
    p = np.asarray(pattern, dtype=np.float64)
    if p.ndim != 3:
        raise ValueError(f"pattern must be (rows, n_heads, n_keys); got shape {p.shape}")
    rows, n_heads, n_keys = p.shape
    position = np.asarray(position, dtype=np.int64)
    n_visible = np.asarray(n_visible, dtype=np.int64)
    if position.shape != (rows,) or n_visible.shape != (rows,):
        raise ValueError(f"position and n_visible must be ({rows},); got {position.shape} and {n_visible.shape}")
    out = np.empty((rows, n_heads, len(STATISTICS)))
    positive = p > 0
    log_p = np.log(np.where(positive, p, 1.0))
    entropy = -np.where(positive, p * log_p, 0.0).sum(axis=-1)            # (rows, n_heads)
    log_n = np.log(np.maximum(n_visible, 1)).astype(np.float64)            # (rows,)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where((n_visible >= 2)[:, None], entropy / log_n[:, None], np.nan)
    offset = position[:, None] - np.arange(n_keys)[None, :]                # (rows, n_keys): q - j
    if not causal:
        offset = np.abs(offset)
    distance = np.einsum("rhk,rk->rh", p, offset.astype(np.float64))
    out[..., 0] = entropy
    out[..., 1] = normalised
    out[..., 2] = p[..., 0]
    out[..., 3] = distance
    with np.errstate(divide="ignore"):
        out[..., 4] = (1.0 / n_visible.astype(np.float64))[:, None]
    bad = ~np.isfinite(p).all(axis=-1)                                     # (rows, n_heads)
    out[bad] = np.nan
    return out


def mass_after_query(pattern: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Attention mass on keys after the query (j > position): (rows, n_heads, n_keys) ->
    (rows, n_heads). Exactly 0 under a causal mask."""
    p = np.asarray(pattern)
    later = np.arange(p.shape[-1])[None, :] > np.asarray(position)[:, None]   # (rows, n_keys)
    return np.where(later[:, None, :], p, 0).astype(np.float64).sum(axis=-1)


def block_sums(values: np.ndarray, block: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the finite values per block.

    values: (rows, ...) float; block: (rows,) block index of each row in [0, n_blocks), or -1
    for a row left out. Returns (sums, counts), each (n_blocks, ...) float64.
    """
    values = np.asarray(values, dtype=np.float64)
    block = np.asarray(block, dtype=np.int64)
    finite = np.isfinite(values) & (block >= 0).reshape((-1,) + (1,) * (values.ndim - 1))
    sums = np.zeros((n_blocks, *values.shape[1:]))
    counts = np.zeros((n_blocks, *values.shape[1:]))
    index = np.where(block >= 0, block, 0)
    np.add.at(sums, index, np.where(finite, values, 0.0))
    np.add.at(counts, index, finite.astype(np.float64))
    return sums, counts


def ratio_of_sums(sums: np.ndarray, counts: np.ndarray, axis: int = 0) -> np.ndarray:
    """Means from sums and counts summed over `axis`: NaN where the count is 0."""
    total, n = np.sum(sums, axis=axis), np.sum(counts, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, total / np.where(n > 0, n, 1.0), np.nan)


def block_bootstrap_means(sums: np.ndarray, counts: np.ndarray, *, n_bootstrap: int, seed: Seed,
                          batch: int = 64) -> np.ndarray:
    """Bootstrap replicates of the means over queries, blocks resampled with replacement.

    sums, counts: (n_blocks, ...) from `block_sums`. Replicate b draws n_blocks blocks, exactly
    `bootstrap_indices(n_blocks, n_bootstrap, default_rng(seed))[b]`, and takes sum / count over
    the drawn blocks (a block drawn twice counts twice). Returns (n_bootstrap, ...) float64; NaN
    where a replicate drew no value. Memory: `batch` replicates x n_blocks at a time.
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    n_blocks = sums.shape[0]
    rest = sums.shape[1:]
    flat_sums, flat_counts = sums.reshape(n_blocks, -1), counts.reshape(n_blocks, -1)
    rng = as_generator(seed)
    out = np.empty((n_bootstrap, flat_sums.shape[1]))
    for begin in range(0, n_bootstrap, batch):
        stop = min(begin + batch, n_bootstrap)
        weights = bootstrap_counts(bootstrap_indices(n_blocks, stop - begin, rng), n_blocks).astype(np.float64)
        total, n = weights @ flat_sums, weights @ flat_counts                  # (batch, flat)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[begin:stop] = np.where(n > 0, total / np.where(n > 0, n, 1.0), np.nan)
    return out.reshape((n_bootstrap, *rest))


def query_blocks(window: Sequence[int] | np.ndarray, position: Sequence[int] | np.ndarray, block_tokens: int,
                 include: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The resampling block of every row: consecutive queries of one window, `block_tokens` at
    a time (positions 0..B-1, B..2B-1, ...), numbered in order of first appearance.

    Returns (block (rows,) int64, -1 for rows not in `include`; n_blocks). Blocks that hold
    only excluded rows get no number, so every block counts at least one row.
    """
    window = np.asarray(window, dtype=np.int64)
    position = np.asarray(position, dtype=np.int64)
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
    include = np.ones(window.shape, dtype=bool) if include is None else np.asarray(include, dtype=bool)
    key = np.stack([window, position // block_tokens], axis=1)[include]
    block = np.full(window.shape, -1, dtype=np.int64)
    if key.size == 0:
        return block, 0
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")                 # number blocks by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    block[include] = rank[inverse.reshape(-1)]
    return block, int(order.size)
