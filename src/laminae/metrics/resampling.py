"""Seeded resampling: label permutations, bootstrap draws, p-values and percentile intervals.

The draws are documented exactly so that an independent implementation can reproduce them:

    >>> rng = np.random.default_rng(0)
    >>> shuffled = permuted_labels(labels, 1000, rng)      # (1000, n_items)
    >>> # == rng.permuted(np.tile(labels, (1000, 1)), axis=1) on a fresh default_rng(0)
    >>> draws = bootstrap_indices(34, 1000, rng)          # (1000, 34)
    >>> # == rng.integers(0, 34, size=(1000, 34))
    >>> p = permutation_p_value(observed, null)           # (...,) from (...,), (..., 1000)
    >>> low, high = percentile_interval(null, 0.95)       # the null's 2.5 and 97.5 percentiles
"""

from __future__ import annotations

import warnings

import numpy as np

Seed = int | np.random.Generator | np.random.SeedSequence | None

# Relative tolerance when comparing null statistics with the observed one (as in
# scipy.stats.permutation_test): a permutation that reproduces the observed partition gives the
# same statistic up to round-off, and must count as ">= observed".
_TIE_RTOL = 100 * np.finfo(np.float64).eps


def as_generator(seed: Seed) -> np.random.Generator:
    """`numpy.random.default_rng(seed)`, passing an existing Generator through unchanged."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def permuted_labels(labels: np.ndarray, n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """`n_permutations` independent shuffles of `labels`: (n_items,) -> (n_permutations, n_items).

    Exactly `rng.permuted(np.tile(labels, (n_permutations, 1)), axis=1)`.
    """
    labels = np.asarray(labels)
    if n_permutations < 0:
        raise ValueError(f"n_permutations must be >= 0, got {n_permutations}")
    return rng.permuted(np.tile(labels, (n_permutations, 1)), axis=1)


def bootstrap_indices(n_items: int, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Items drawn with replacement: (n_bootstrap, n_items) integer indices into the items.

    Exactly `rng.integers(0, n_items, size=(n_bootstrap, n_items))`.
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    return rng.integers(0, n_items, size=(n_bootstrap, n_items))


def bootstrap_counts(indices: np.ndarray, n_items: int) -> np.ndarray:
    """How often each item was drawn: (n_bootstrap, n_items) indices -> (n_bootstrap, n_items)."""
    indices = np.asarray(indices)
    n_draws = indices.shape[0]
    offsets = np.arange(n_draws)[:, None] * n_items
    counts = np.bincount((indices + offsets).ravel(), minlength=n_draws * n_items)
    return counts.reshape(n_draws, n_items)


def permutation_p_value(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """One-sided p-value (observed larger than chance) with the +1 correction.

    observed: (...,), null: (..., n_permutations) -> (...,):
    p = (1 + #{null >= observed}) / (1 + n_permutations). NaN when there is no null (0
    permutations) or the observed value is NaN. Null values within a relative 100 eps of the
    observed one count as ties (>=), so a permutation that reproduces the observed partition is
    not lost to round-off.
    """
    observed = np.asarray(observed, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    n_perm = null.shape[-1]
    if n_perm == 0:
        return np.full(observed.shape, np.nan)
    threshold = observed - _TIE_RTOL * np.abs(observed)
    exceed = np.count_nonzero(null >= threshold[..., None], axis=-1)  # (...,)
    return np.where(np.isnan(observed), np.nan, (1.0 + exceed) / (1.0 + n_perm))


def percentile_interval(
    samples: np.ndarray, confidence: float, *, ignore_nan: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Central percentile interval of `samples` along the last axis.

    samples: (..., n_samples) -> (low, high), each (...,): the 100*(1-confidence)/2 and
    100*(1+confidence)/2 percentiles (linear interpolation, numpy's default). All NaN when
    there are no samples. With `ignore_nan`, NaN samples (degenerate resamples) are skipped.
    """
    check_confidence(confidence)
    samples = np.asarray(samples, dtype=np.float64)
    if samples.shape[-1] == 0:
        nan = np.full(samples.shape[:-1], np.nan)
        return nan, nan.copy()
    tail = 50.0 * (1.0 - confidence)
    q = [tail, 100.0 - tail]
    if ignore_nan and np.isnan(samples).any():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
            low, high = np.nanpercentile(samples, q, axis=-1)
    else:
        low, high = np.percentile(samples, q, axis=-1)
    return low, high


def null_mean(null: np.ndarray) -> np.ndarray:
    """Mean of the null distribution: (..., n_permutations) -> (...,); NaN with no permutations."""
    null = np.asarray(null, dtype=np.float64)
    if null.shape[-1] == 0:
        return np.full(null.shape[:-1], np.nan)
    return null.mean(axis=-1)


def check_confidence(confidence: float) -> None:
    """Raise ValueError unless 0 < confidence < 1."""
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")

