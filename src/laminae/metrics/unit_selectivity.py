"""Category selectivity of single units (neurons, dimensions), each tested with label permutations.

For one layer's activations x (n_items, n_units) and category codes (n_items,) 0..C-1, with
n_c items in category c, N items in all, and per unit u the category means m_c, the grand mean
m and the total sum of squares SST = sum_i (x_iu - m)^2:

    SSB    = sum_c n_c (m_c - m)^2                       between-category sum of squares
    F      = (SSB / (C - 1)) / ((SST - SSB) / (N - C))   one-way ANOVA (scipy.stats.f_oneway)
    eta2   = SSB / SST                                   its effect size, in [0, 1]
    one vs rest, for each category c (pooled two-sample t, scipy.stats.ttest_ind):
    diff_c = m_c - m_rest,   s_c^2 = (SST - SSB_c) / (N - 2),   SSB_c = n_c (N - n_c) / N * diff_c^2
    t_c    = diff_c / (s_c sqrt(1/n_c + 1/(N - n_c))),    d_c = diff_c / s_c   (Cohen's d)

Permutation test: the labels are shuffled P times (the same shuffles for every unit, layer and
site); each unit's one-sided p-value is (1 + #{null >= observed}) / (1 + P)
(`laminae.metrics.resampling.permutation_p_value`). With the category counts fixed by the
shuffles, SST is fixed, so F is an increasing function of eta2 and t_c of diff_c: the test
counts on eta2 (finite even when the categories separate perfectly, where F is infinite) and on
diff_c, and gives exactly the p-values of F and t_c. A unit constant across the items
(SST = 0 up to round-off: a dead ReLU) cannot be tested: its statistics are NaN and its
p-values 1, so it counts in a layer's total but is never selective.

Everything is one matrix product per chunk of units: the one-hot label matrices of the observed
labels and of every shuffle, ((1 + P) * C, N), times the centred activations (N, n_units)
give every category sum under every labelling.

    >>> shuffled = permuted_labels(labels, 1000, np.random.default_rng(0))   # (1000, n_items)
    >>> test = unit_category_test(x, labels, shuffled, n_null_draws=100)     # x: (n_items, n_units)
    >>> test.p_value.shape, test.p_value_per_category.shape                 # (n_units,), (C, n_units)
    >>> q = bh_q_values(test.p_value)                                       # one layer, one family
    >>> k = int((q < 0.05).sum()); low, high = clopper_pearson(k, q.size, 0.95)
    >>> null = null_fractions(test.null_p_value, alpha=0.05)                 # (100,) fractions under H0

`null_p_value` holds, for the first `n_null_draws` shuffles each taken in turn as if observed,
every unit's p-value against the other P shuffles and the observed labels: the pipeline run on
labels that carry no category, whose BH fraction is the reference a layer's fraction is read
against (`null_fractions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.stats

from laminae.metrics.multiple_testing import bh_q_values
from laminae.metrics.resampling import check_confidence, permutation_p_value
from laminae.metrics.selectivity import check_labels

# Bound on one chunk's ((1 + P) * C, units) float64 arrays (2**22 elements = 32 MiB each).
_CHUNK_ELEMENTS = 2**22
# A unit whose spread is below this fraction of its magnitude is constant (round-off only).
_CONSTANT_RTOL = 1e-10


@dataclass(frozen=True)
class UnitTest:
    """Per-unit statistics of one `unit_category_test` call; shapes for x (*lead, N, U)."""

    f: np.ndarray                      # (*lead, U) one-way ANOVA F; NaN for a constant unit
    eta2: np.ndarray                   # (*lead, U) SSB / SST
    p_value: np.ndarray                # (*lead, U) permutation p of F (1 for a constant unit)
    means: np.ndarray                  # (*lead, C, U) category means
    preferred: np.ndarray              # (*lead, U) int: the category with the highest mean
    t: np.ndarray                      # (*lead, C, U) one-vs-rest pooled t
    cohens_d: np.ndarray               # (*lead, C, U) one-vs-rest Cohen's d (pooled SD)
    p_value_per_category: np.ndarray   # (*lead, C, U) one-sided permutation p (c above the rest)
    constant: np.ndarray               # (*lead, U) bool
    null_p_value: np.ndarray           # (*lead, n_null_draws, U) p of F under pseudo-observed shuffles
    n_permutations: int


def unit_category_test(
    x: np.ndarray,
    labels: np.ndarray,
    shuffled: np.ndarray,
    *,
    n_categories: int | None = None,
    n_null_draws: int = 0,
) -> UnitTest:
    """ANOVA and one-vs-rest statistics of every unit, with permutation p-values.

    x: (*lead, n_items, n_units) activations; labels: (n_items,) codes 0..C-1 (each category
    >= 2 items); shuffled: (P, n_items), each row a rearrangement of `labels` (e.g.
    `laminae.metrics.resampling.permuted_labels`), shared by every unit and leading index.
    `n_null_draws` <= P: how many shuffles also serve as pseudo-observed labels (`null_p_value`).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"x must be (..., n_items, n_units), got shape {x.shape}")
    labels, n_categories = check_labels(labels, x.shape[-2], n_categories)
    shuffled = np.asarray(shuffled, dtype=np.int64)
    if shuffled.ndim != 2 or shuffled.shape[1] != labels.size:
        raise ValueError(f"shuffled must be (n_permutations, {labels.size}), got shape {shuffled.shape}")
    if shuffled.size and not np.array_equal(np.sort(shuffled, axis=1), np.broadcast_to(np.sort(labels), shuffled.shape)):
        raise ValueError("every row of shuffled must be a rearrangement of labels")
    n_perm = shuffled.shape[0]
    if not 0 <= n_null_draws <= n_perm:
        raise ValueError(f"n_null_draws must be between 0 and n_permutations ({n_perm}), got {n_null_draws}")
    lead, n_units = x.shape[:-2], x.shape[-1]
    flat = x.reshape((-1,) + x.shape[-2:])
    results = [_one_layer(layer, labels, shuffled, n_categories, n_null_draws) for layer in flat]
    fields = {name: np.stack([r[name] for r in results]) for name in results[0]} if results else {}

    def shaped(name: str, middle: tuple[int, ...] = ()) -> np.ndarray:
        return fields[name].reshape(lead + middle + (n_units,))

    return UnitTest(
        f=shaped("f"), eta2=shaped("eta2"), p_value=shaped("p_value"),
        means=shaped("means", (n_categories,)), preferred=shaped("preferred"),
        t=shaped("t", (n_categories,)), cohens_d=shaped("cohens_d", (n_categories,)),
        p_value_per_category=shaped("p_value_per_category", (n_categories,)),
        constant=shaped("constant"), null_p_value=shaped("null_p_value", (n_null_draws,)),
        n_permutations=int(n_perm),
    )


def _one_layer(x: np.ndarray, labels: np.ndarray, shuffled: np.ndarray, n_categories: int,
               n_null_draws: int) -> dict[str, np.ndarray]:
    """`unit_category_test` for x (N, U): a dict of the UnitTest fields without the lead axes."""
    n, n_units = x.shape
    counts = np.bincount(labels, minlength=n_categories).astype(np.float64)   # (C,)
    both = np.vstack([labels[None], shuffled])                                # (1 + P, N)
    onehot = (both[:, None, :] == np.arange(n_categories)[None, :, None]).astype(np.float64)
    onehot = onehot.reshape(-1, n)                                            # ((1 + P) * C, N)
    chunk = max(1, _CHUNK_ELEMENTS // onehot.shape[0])
    parts = [_unit_chunk(x[:, s : s + chunk], onehot, counts, n_null_draws) for s in range(0, n_units, chunk)]
    return {name: np.concatenate([part[name] for part in parts], axis=-1) for name in parts[0]}


def _unit_chunk(x: np.ndarray, onehot: np.ndarray, counts: np.ndarray, n_null_draws: int) -> dict[str, np.ndarray]:
    """Statistics of the units in x (N, u) under every labelling in `onehot` (row block 0: observed)."""
    n, n_categories = x.shape[0], counts.size
    mean = x.mean(axis=0)
    centred = x - mean                                                          # (N, u)
    sst = (centred**2).sum(axis=0)                                              # (u,)
    scale = np.maximum(np.abs(x).max(axis=0), np.finfo(np.float64).tiny)
    constant = sst <= n * (_CONSTANT_RTOL * scale) ** 2
    sums = (onehot @ centred).reshape(-1, n_categories, x.shape[1])             # (1 + P, C, u)
    ssb = (sums**2 / counts[:, None]).sum(axis=1)                               # (1 + P, u)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta2 = np.where(constant, np.nan, ssb / sst)                            # (1 + P, u)
        # one vs rest: the centred total is 0, so the rest's sum is -sums and diff_c = S_c N / (n_c (N - n_c))
        diff = sums * (n / (counts * (n - counts)))[:, None]                    # (1 + P, C, u)
    observed_eta2, null_eta2 = eta2[0], eta2[1:]
    p_value = np.where(constant, 1.0, permutation_p_value(observed_eta2, null_eta2.T))
    d_obs, d_null = diff[0], diff[1:]                                           # (C, u), (P, C, u)
    p_cat = np.where(constant, 1.0, permutation_p_value(d_obs, np.moveaxis(d_null, 0, -1)))

    ssb_obs = ssb[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (ssb_obs / (n_categories - 1)) / (np.maximum(sst - ssb_obs, 0.0) / (n - n_categories))
        ssb_c = counts[:, None] * (n - counts[:, None]) / n * d_obs**2          # (C, u)
        pooled_sd = np.sqrt(np.maximum(sst - ssb_c, 0.0) / (n - 2))
        t = d_obs / (pooled_sd * np.sqrt(1.0 / counts + 1.0 / (n - counts))[:, None])
        cohens_d = d_obs / pooled_sd
    means = sums[0] / counts[:, None] + mean                                    # (C, u)
    nan = np.where(constant, np.nan, 0.0)
    return {
        "f": f + nan, "eta2": observed_eta2, "p_value": p_value, "means": means,
        "preferred": np.argmax(means, axis=0), "t": t + nan, "cohens_d": cohens_d + nan,
        "p_value_per_category": p_cat, "constant": constant,
        "null_p_value": _pseudo_observed_p(eta2, n_null_draws, constant),
    }


def _pseudo_observed_p(eta2: np.ndarray, n_draws: int, constant: np.ndarray) -> np.ndarray:
    """p-values of shuffles 1..n_draws taken as observed, against the other P labellings
    (observed included): eta2 (1 + P, u) -> (n_draws, u); 1 for constant units. Each is
    #{labellings >= it, itself included (the +1)} / (1 + P), ties within 100 eps relative,
    counted by binary search in each unit's sorted statistics."""
    out = np.ones((n_draws, eta2.shape[1]))
    if n_draws == 0:
        return out
    pseudo = eta2[1 : 1 + n_draws]                                              # (n_draws, u)
    threshold = pseudo - 100 * np.finfo(np.float64).eps * np.abs(pseudo)
    ordered = np.sort(eta2, axis=0)                                             # (1 + P, u)
    for unit in np.flatnonzero(~constant):
        below = np.searchsorted(ordered[:, unit], threshold[:, unit], side="left")
        out[:, unit] = (eta2.shape[0] - below) / eta2.shape[0]
    return out


def min_detectable(n_units: int, n_permutations: int, alpha: float) -> int:
    """The fewest units BH at level alpha can declare selective when p-values cannot go below
    1 / (1 + P): the smallest k with k / n_units * alpha >= 1 / (1 + P). Fewer truly selective
    units than this are found only by chance; raise n_permutations to lower it."""
    return max(1, int(np.ceil(n_units / (alpha * (1 + n_permutations)) - 1e-12)))


def fraction_significant(p: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg at level alpha within each row: p (..., n_units) -> (q (..., n_units),
    count of q <= alpha (...,)). Each leading index (a layer, a null draw) is its own family."""
    p = np.asarray(p, dtype=np.float64)
    q = np.stack([bh_q_values(row) for row in p.reshape(-1, p.shape[-1])]).reshape(p.shape) if p.size else p.copy()
    return q, (q <= alpha).sum(axis=-1)


def null_fractions(null_p: np.ndarray, alpha: float) -> np.ndarray:
    """The BH fraction selective under each pseudo-observed shuffle: (..., n_draws, n_units) -> (..., n_draws)."""
    null_p = np.asarray(null_p, dtype=np.float64)
    if null_p.shape[-1] == 0:
        return np.full(null_p.shape[:-1], np.nan)
    return fraction_significant(null_p, alpha)[1] / null_p.shape[-1]


def clopper_pearson(k: np.ndarray | int, n: np.ndarray | int, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper-Pearson) binomial interval of the proportion k / n, elementwise:
    low = Beta((1 - confidence)/2; k, n - k + 1) (0 when k = 0), high = Beta((1 + confidence)/2;
    k + 1, n - k) (1 when k = n). Equals scipy.stats.binomtest(k, n).proportion_ci(confidence, "exact")."""
    check_confidence(confidence)
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError("clopper_pearson needs 0 <= k <= n and n >= 1")
    tail = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore"):
        low = np.where(k > 0, scipy.stats.beta.ppf(tail, k, n - k + 1), 0.0)
        high = np.where(k < n, scipy.stats.beta.ppf(1.0 - tail, k + 1, n - k), 1.0)
    return low, high
