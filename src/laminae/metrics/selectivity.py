"""Category selectivity of a similarity matrix, and its label-permutation test.

The course's definition (DESIGN.md, experiment 1), diagonal excluded, only entries i < j read:

    within_c  = mean of S[i, j] over pairs i < j with both items in category c
    within    = mean over categories of within_c            (each category weighs the same)
    between   = mean of S[i, j] over pairs i < j from different categories
    index     = within / between        (form="ratio", the default; > 1 means selective)
              = within - between        (form="difference"; stable when between is near 0)
    index_c   = within_c / between   or   within_c - between      (per category)

    >>> s = cosine_similarity(x)                          # (n_layers, n_items, n_items)
    >>> sel = selectivity(s, labels)                      # labels: (n_items,) codes 0..C-1
    >>> sel.index.shape, sel.index_per_category.shape     # ((n_layers,), (n_layers, C))
    >>> test = selectivity_permutation_test(s, labels, n_permutations=1000, seed=0)
    >>> test.p_value, test.null_low, test.null_high       # each (n_layers,)

Everything is vectorised over the leading axes of `S` and over a batch of label vectors: the
within-category sums are the upper triangles (n_lead, n_pairs) times a 0/1 matrix "pair t is a
within pair of category c under labels p" (n_pairs, n_batch * C), one matrix product for all
layers, components and permutations (equivalent to diag(L^T triu(S, 1) L) with one-hot L); the
between sum is the upper-triangle total minus the within sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from laminae.metrics.resampling import (
    Seed,
    as_generator,
    check_confidence,
    null_mean,
    percentile_interval,
    permutation_p_value,
    permuted_labels,
)

FORMS = ("ratio", "difference")

# Bound on the (pairs x permutations x categories) indicator, in float64 elements
# (2**22 elements = 32 MiB); the permutations are processed in chunks that fit.
_CHUNK_ELEMENTS = 2**22


@dataclass(frozen=True)
class Selectivity:
    """Selectivity of similarity matrices under one label vector (or a batch of them).

    Shapes for S (*lead, n, n) and labels (*batch, n): (*lead, *batch) and, per category,
    (*lead, *batch, C).
    """

    form: str
    index: np.ndarray  # (*lead, *batch)
    index_per_category: np.ndarray  # (*lead, *batch, C)
    within_mean: np.ndarray  # (*lead, *batch) the numerator: mean of within_mean_per_category
    within_mean_per_category: np.ndarray  # (*lead, *batch, C)
    between_mean: np.ndarray  # (*lead, *batch)


@dataclass(frozen=True)
class SelectivityTest:
    """Observed selectivity plus its label-permutation null (the same permutations for every
    leading index). With 0 permutations the null arrays have a last axis of length 0 and every
    derived number (p-values, null mean and band) is NaN."""

    observed: Selectivity  # arrays (*lead,) and (*lead, C)
    null: np.ndarray  # (*lead, n_permutations) overall index under shuffled labels
    null_per_category: np.ndarray  # (*lead, n_permutations, C)
    p_value: np.ndarray  # (*lead,) one-sided, (1 + #{null >= observed}) / (1 + n_permutations)
    p_value_per_category: np.ndarray  # (*lead, C)
    null_mean: np.ndarray  # (*lead,)
    null_low: np.ndarray  # (*lead,) the null's 100*(1-confidence)/2 percentile
    null_high: np.ndarray  # (*lead,) the null's 100*(1+confidence)/2 percentile
    n_permutations: int
    confidence: float


def check_labels(labels: np.ndarray, n_items: int | None = None, n_categories: int | None = None) -> tuple[np.ndarray, int]:
    """Validate integer category codes 0..C-1 (C >= 2, every category >= 2 items).

    labels: (n_items,) -> (labels as int64, C). C is `n_categories` if given, else max + 1.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (n_items,), got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer category codes, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if n_items is not None and labels.size != n_items:
        raise ValueError(f"labels has {labels.size} entries for {n_items} items")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be codes 0..C-1, got {labels.min()}")
    if n_categories is None:
        n_categories = int(labels.max()) + 1 if labels.size else 0
    if labels.size and labels.max() >= n_categories:
        raise ValueError(f"label code {labels.max()} is out of range for {n_categories} categories")
    if n_categories < 2:
        raise ValueError(f"selectivity needs at least 2 categories, got {n_categories}")
    counts = np.bincount(labels, minlength=n_categories)
    if counts.min() < 2:
        small = [int(c) for c in np.flatnonzero(counts < 2)]
        raise ValueError(f"every category needs at least 2 items (no within pairs otherwise); categories {small} have fewer")
    return labels, int(n_categories)


def selectivity(
    similarity: np.ndarray,
    labels: np.ndarray,
    *,
    form: str = "ratio",
    n_categories: int | None = None,
) -> Selectivity:
    """Selectivity index of S (*lead, n, n) for labels (n,) or a batch of label vectors
    (*batch, n), which must all be rearrangements of the same category counts (as permutations
    are). Reads only the entries S[i, j] with i < j.

        >>> sel = selectivity(np.where(same_category, 0.8, 0.2), labels)   # diagonal ignored
        >>> float(sel.index)                                               # 0.8 / 0.2
        4.0
    """
    if form not in FORMS:
        raise ValueError(f"selectivity form must be one of {FORMS}, got {form!r}")
    s = np.asarray(similarity, dtype=np.float64)
    if s.ndim < 2 or s.shape[-1] != s.shape[-2]:
        raise ValueError(f"similarity must be (..., n_items, n_items), got shape {s.shape}")
    labels = np.asarray(labels)
    base, n_categories = check_labels(labels.reshape(-1, labels.shape[-1])[0], s.shape[-1], n_categories)
    batch_shape = labels.shape[:-1]
    flat = labels.reshape(-1, labels.shape[-1]).astype(np.int64)  # (n_batch, n)
    counts = np.bincount(base, minlength=n_categories)
    if flat.shape[0] > 1 and not np.array_equal(np.sort(flat, axis=1), np.broadcast_to(np.sort(base), flat.shape)):
        raise ValueError("a batch of label vectors must share the same category counts")

    within_sum, total = _pair_sums(s, flat, n_categories)  # (*lead, n_batch, C), (*lead,)
    n = s.shape[-1]
    within_pairs = counts * (counts - 1) / 2.0  # (C,)
    between_pairs = n * (n - 1) / 2.0 - within_pairs.sum()
    if between_pairs <= 0:
        raise ValueError("no pairs from different categories")

    within_c = within_sum / within_pairs  # (*lead, n_batch, C)
    between = (total[..., None] - within_sum.sum(axis=-1)) / between_pairs  # (*lead, n_batch)
    within = within_c.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if form == "ratio":
            index, index_c = within / between, within_c / between[..., None]
        else:
            index, index_c = within - between, within_c - between[..., None]

    lead = s.shape[:-2]

    def shape(a: np.ndarray, per_category: bool) -> np.ndarray:
        return a.reshape(lead + batch_shape + ((n_categories,) if per_category else ()))

    return Selectivity(
        form=form,
        index=shape(index, False),
        index_per_category=shape(index_c, True),
        within_mean=shape(within, False),
        within_mean_per_category=shape(within_c, True),
        between_mean=shape(between, False),
    )


def selectivity_permutation_test(
    similarity: np.ndarray,
    labels: np.ndarray,
    *,
    form: str = "ratio",
    n_permutations: int = 1000,
    confidence: float = 0.95,
    seed: Seed = 0,
    n_categories: int | None = None,
) -> SelectivityTest:
    """Selectivity of S (*lead, n, n) with a label-permutation null.

    The labels are shuffled `n_permutations` times with `permuted_labels(labels, n, rng)`,
    rng = `as_generator(seed)`; the same shuffles serve every leading index (layers, components),
    so all of them are computed in one batched pass and their nulls are comparable.

        >>> t = selectivity_permutation_test(s, labels, n_permutations=1000, seed=0)
        >>> t.p_value          # (*lead,) >= 1/1001
    """
    check_confidence(confidence)
    labels, n_categories = check_labels(labels, np.shape(similarity)[-1], n_categories)
    shuffled = permuted_labels(labels, n_permutations, as_generator(seed))  # (n_perm, n)
    # The observed labels go through the same code path as the shuffles (row 0), so a shuffle
    # that reproduces the observed partition yields the same number up to round-off.
    both = selectivity(similarity, np.vstack([labels[None], shuffled]), form=form, n_categories=n_categories)
    observed = Selectivity(
        form=form,
        index=both.index[..., 0],
        index_per_category=both.index_per_category[..., 0, :],
        within_mean=both.within_mean[..., 0],
        within_mean_per_category=both.within_mean_per_category[..., 0, :],
        between_mean=both.between_mean[..., 0],
    )
    null = both.index[..., 1:]  # (*lead, n_perm)
    null_c = both.index_per_category[..., 1:, :]  # (*lead, n_perm, C)
    low, high = percentile_interval(null, confidence)
    return SelectivityTest(
        observed=observed,
        null=null,
        null_per_category=null_c,
        p_value=permutation_p_value(observed.index, null),
        p_value_per_category=permutation_p_value(observed.index_per_category, np.swapaxes(null_c, -1, -2)),
        null_mean=null_mean(null),
        null_low=low,
        null_high=high,
        n_permutations=int(n_permutations),
        confidence=float(confidence),
    )


def _pair_sums(s: np.ndarray, labels: np.ndarray, n_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums of S[i, j] (i < j) within each category, and over all pairs.

    s: (*lead, n, n), labels: (n_batch, n) -> within (*lead, n_batch, C), total (*lead,).
    The within sums are one matrix product: upper triangles (n_lead, n_pairs) times the
    indicator "pair t lies in category c under label vector p" (n_pairs, n_batch * C).
    """
    lead, n = s.shape[:-2], s.shape[-1]
    rows, cols = np.triu_indices(n, k=1)
    upper = s[..., rows, cols].reshape(-1, rows.size)  # (n_lead, n_pairs)
    total = upper.sum(axis=-1).reshape(lead)
    n_batch = labels.shape[0]
    out = np.empty((upper.shape[0], n_batch, n_categories))
    chunk = max(1, _CHUNK_ELEMENTS // max(1, rows.size * n_categories))
    for start in range(0, n_batch, chunk):
        lab = labels[start : start + chunk]  # (p, n)
        p = lab.shape[0]
        same = lab[:, rows] == lab[:, cols]  # (p, n_pairs)
        indicator = (same[:, :, None] & (lab[:, rows, None] == np.arange(n_categories))).astype(np.float64)
        indicator = indicator.transpose(1, 0, 2).reshape(rows.size, p * n_categories)
        out[:, start : start + p] = (upper @ indicator).reshape(-1, p, n_categories)
    return out.reshape(lead + (n_batch, n_categories)), total
