"""Means of labelled groups of items over many measurements at once, their bootstrap intervals
and label-permutation tests of pairwise differences (e.g. part-of-speech tags of tokens x layers).

    >>> test = permutation_difference(values, in_a, in_b, n_permutations=2000, seed=[0, 3])
    >>> test.difference, test.p_value          # (n_measures,) each: mean_a - mean_b, two-sided p
    >>> boot = bootstrap_group_means(values, groups, units, n_groups, 1000, 0.95, seed=0)
    >>> boot.mean, boot.low, boot.high         # (n_groups, n_measures) each

`values` is (n_items, n_measures) float64: every column (a layer, say) is tested with the SAME
permutations of the labels, so one matrix product per block of permutations serves all columns.

Permutation test of groups A and B (disjoint item sets): the statistic is |mean_A - mean_B|;
the null shuffles the labels of the n_A + n_B items (`laminae.metrics.resampling.
permuted_labels` on the A/B labels in item order, drawn from `default_rng(seed)`), and
p = (1 + #{|null| >= |observed|}) / (1 + n_permutations) (`permutation_p_value`, ties within
round-off counted). Items with a non-finite value in any column are left out beforehand.

Bootstrap of group means: resampling units (tokens, or windows of tokens) are drawn with
replacement, `bootstrap_indices(n_units, n_bootstrap, default_rng(seed))`; a replicate's mean of
group g is sum(count_u * value) / sum(count_u) over g's items, count_u the draws of the item's
unit; the interval is the percentile interval of the replicates. `ratio_to_all` gives the same
for mean_g / mean over every item (the same draws).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from laminae.metrics.resampling import (Seed, as_generator, bootstrap_counts, bootstrap_indices, percentile_interval,
                                        permutation_p_value, permuted_labels)

BLOCK_ELEMENTS = 1 << 22     # permutation / bootstrap rows x items held at once (32 MiB of float64)


class DifferenceTest(NamedTuple):
    """Each (n_measures,): mean_a - mean_b, two-sided permutation p; n_a, n_b: group sizes."""

    difference: np.ndarray
    p_value: np.ndarray
    n_a: int
    n_b: int


def permutation_difference(values: np.ndarray, in_a: np.ndarray, in_b: np.ndarray, n_permutations: int,
                           seed: Seed = None) -> DifferenceTest:
    """Two-sided label-permutation test of mean_a - mean_b for every column of values
    (n_items, n_measures); in_a, in_b: (n_items,) disjoint boolean masks (module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    in_a, in_b = np.asarray(in_a, dtype=bool), np.asarray(in_b, dtype=bool)
    if (in_a & in_b).any():
        raise ValueError("groups A and B must be disjoint")
    used = (in_a | in_b) & np.isfinite(values).all(axis=1)
    x = values[used]                                     # (n, n_measures)
    labels = in_a[used]                                  # True: A
    n_a, n_b = int(labels.sum()), int((~labels).sum())
    if n_a == 0 or n_b == 0:
        nan = np.full(values.shape[1], np.nan)
        return DifferenceTest(nan, nan.copy(), n_a, n_b)
    observed = x[labels].mean(axis=0) - x[~labels].mean(axis=0)
    rng = as_generator(seed)
    total = x.sum(axis=0)
    exceed_null = []
    block = max(1, BLOCK_ELEMENTS // max(len(x), 1))
    done = 0
    while done < n_permutations:
        size = min(block, n_permutations - done)
        shuffled = permuted_labels(labels, size, rng).astype(np.float64)   # (size, n)
        sum_a = shuffled @ x                                              # (size, n_measures)
        exceed_null.append(np.abs(sum_a / n_a - (total - sum_a) / n_b))
        done += size
    null = np.concatenate(exceed_null, axis=0).T if exceed_null else np.zeros((x.shape[1], 0))
    return DifferenceTest(observed, permutation_p_value(np.abs(observed), null), n_a, n_b)


class GroupMeans(NamedTuple):
    """Each (n_groups, n_measures): the means, their percentile intervals; `n` (n_groups,)
    the items per group."""

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray


def bootstrap_group_means(values: np.ndarray, groups: np.ndarray, units: np.ndarray, n_groups: int,
                          n_bootstrap: int, confidence: float, seed: Seed = None, ratio_to_all: bool = False
                          ) -> GroupMeans:
    """Means per group of values (n_items, n_measures), groups (n_items,) in 0..n_groups-1 (-1:
    in no group, but counted in the "all" of `ratio_to_all`), units (n_items,) in 0..n_units-1:
    the resampling unit of each item. With `ratio_to_all`, everything is mean_g / mean of every
    item instead. Intervals NaN with n_bootstrap 0."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    groups, units = np.asarray(groups, dtype=np.int64), np.asarray(units, dtype=np.int64)
    n_units = int(units.max()) + 1 if len(units) else 0
    members = [np.flatnonzero(groups == g) for g in range(n_groups)]

    def means(weights: np.ndarray) -> np.ndarray:
        """weights (b, n_items) -> (b, n_groups, n_measures)."""
        counts = np.stack([weights[:, idx].sum(axis=1) for idx in members], axis=1)        # (b, n_groups)
        sums = np.stack([weights[:, idx] @ values[idx] for idx in members], axis=1)        # (b, n_groups, m)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = sums / counts[:, :, None]
            if ratio_to_all:
                out = out / ((weights @ values) / weights.sum(axis=1, keepdims=True))[:, None, :]
        return out

    point = means(np.ones((1, len(values))))[0]
    replicates = []
    rng = as_generator(seed)
    block = max(1, BLOCK_ELEMENTS // max(len(values), 1))
    done = 0
    while done < n_bootstrap:
        size = min(block, n_bootstrap - done)
        counts = bootstrap_counts(bootstrap_indices(n_units, size, rng), n_units).astype(np.float64)
        replicates.append(means(counts[:, units]))
        done += size
    if replicates:
        low, high = percentile_interval(np.moveaxis(np.concatenate(replicates), 0, -1), confidence, ignore_nan=True)
    else:
        low = high = np.full(point.shape, np.nan)
    return GroupMeans(point, low, high, np.array([len(idx) for idx in members], dtype=np.int64))
