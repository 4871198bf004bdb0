"""Experiment-1 metrics checked against naive loops and scipy: cosine similarity, selectivity,
RSA, the label-permutation test and the bootstrap over items."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats

from laminae.metrics.resampling import (
    bootstrap_counts,
    permutation_p_value,
    percentile_interval,
    permuted_labels,
)
from laminae.metrics.rsa import average_ranks, rsa, rsa_bootstrap, upper_triangle
from laminae.metrics.selectivity import check_labels, selectivity, selectivity_permutation_test
from laminae.metrics.similarity import cosine_similarity


# ----------------------------------------------------------------------------- naive references
def naive_cosine(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    s = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            s[i, j] = np.dot(x[i], x[j]) / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
    return s


def naive_selectivity(s: np.ndarray, labels: np.ndarray, form: str) -> tuple[float, np.ndarray, np.ndarray, float]:
    """(index, per-category index, per-category within means, between mean) by looping pairs."""
    n_cat = labels.max() + 1
    within = [[] for _ in range(n_cat)]
    between = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if labels[i] == labels[j]:
                within[labels[i]].append(s[i, j])
            else:
                between.append(s[i, j])
    within_c = np.array([np.mean(w) for w in within])
    b = np.mean(between)
    if form == "ratio":
        return within_c.mean() / b, within_c / b, within_c, b
    return within_c.mean() - b, within_c - b, within_c, b


def random_labels(rng: np.random.Generator, sizes: list[int]) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(len(sizes)), sizes))


def clustered(rng: np.random.Generator, labels: np.ndarray, width: int, noise: float, n_layers: int = 1) -> np.ndarray:
    """(n_layers, n_items, width): shared direction + category prototype + noise. The shared
    direction keeps the between-category cosines positive, as in real models (the ratio form
    is meaningless when the between mean is <= 0)."""
    shared = 2.0 * rng.normal(size=(n_layers, 1, width))
    protos = shared + rng.normal(size=(n_layers, labels.max() + 1, width))
    return protos[:, labels] + noise * rng.normal(size=(n_layers, labels.size, width))


# ----------------------------------------------------------------------------- cosine
def test_cosine_matches_naive_double_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 9, 7)) + 0.5  # (layers, components, items, width)
    s = cosine_similarity(x)
    assert s.shape == (3, 2, 9, 9)
    for idx in np.ndindex(3, 2):
        np.testing.assert_allclose(s[idx], naive_cosine(x[idx]), rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(s, np.swapaxes(s, -1, -2))


def test_cosine_zscore_matches_scipy_zscore_then_naive():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 11, 6)) * rng.uniform(0.1, 10, size=6) + rng.normal(size=6) * 20
    s = cosine_similarity(x, zscore=True)
    for layer in range(4):
        z = scipy.stats.zscore(x[layer], axis=0)
        np.testing.assert_allclose(s[layer], naive_cosine(z), rtol=1e-10, atol=1e-12)
    # Without z-scoring the offset dominates: the two must differ.
    assert not np.allclose(s, cosine_similarity(x), atol=1e-3)


def test_cosine_zscore_guards_constant_dimensions():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 8, 5))
    with_constant = np.concatenate([x, np.full((2, 8, 1), 3.7), np.zeros((2, 8, 1))], axis=-1)
    s = cosine_similarity(with_constant, zscore=True)
    assert np.isfinite(s).all()
    np.testing.assert_allclose(s, cosine_similarity(x, zscore=True), rtol=1e-12, atol=1e-13)


def test_cosine_zero_vector_gives_zero_similarity():
    x = np.array([[1.0, 2.0], [0.0, 0.0], [2.0, 1.0]])
    s = cosine_similarity(x)
    assert np.isfinite(s).all() and (s[1] == 0).all() and (s[:, 1] == 0).all()


# ----------------------------------------------------------------------------- selectivity
@pytest.mark.parametrize("form", ["ratio", "difference"])
@pytest.mark.parametrize("sizes", [[3, 7, 5], [2, 6, 4, 9]])
def test_selectivity_matches_naive_pair_loop(form, sizes):
    rng = np.random.default_rng(len(sizes))
    labels = random_labels(rng, sizes)
    n = labels.size
    # Not symmetric and with a junk diagonal: only entries i < j may be read.
    s = rng.normal(size=(2, 3, n, n)) + 2.0
    sel = selectivity(s, labels, form=form)
    assert sel.index.shape == (2, 3) and sel.index_per_category.shape == (2, 3, len(sizes))
    for idx in np.ndindex(2, 3):
        index, index_c, within_c, between = naive_selectivity(s[idx], labels, form)
        np.testing.assert_allclose(sel.index[idx], index, rtol=1e-12)
        np.testing.assert_allclose(sel.index_per_category[idx], index_c, rtol=1e-12)
        np.testing.assert_allclose(sel.within_mean_per_category[idx], within_c, rtol=1e-12)
        np.testing.assert_allclose(sel.within_mean[idx], within_c.mean(), rtol=1e-12)
        np.testing.assert_allclose(sel.between_mean[idx], between, rtol=1e-12)


def test_selectivity_closed_form_constant_blocks():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    a, b = 0.8, 0.32
    s = np.where(labels[:, None] == labels[None, :], a, b)
    np.fill_diagonal(s, 123.0)  # the diagonal is excluded
    ratio = selectivity(s, labels)
    assert ratio.index == pytest.approx(a / b, rel=1e-14)
    np.testing.assert_allclose(ratio.index_per_category, [a / b] * 3, rtol=1e-14)
    diff = selectivity(s, labels, form="difference")
    assert diff.index == pytest.approx(a - b, rel=1e-14)
    # Per-category within values: the index is the mean over categories, not over pairs.
    s2 = s.copy()
    s2[np.ix_(labels == 1, labels == 1)] = 0.5
    sel2 = selectivity(s2, labels)
    assert sel2.index == pytest.approx(((a + 0.5 + a) / 3) / b, rel=1e-14)
    assert sel2.index_per_category[1] == pytest.approx(0.5 / b, rel=1e-14)


def test_selectivity_label_checks():
    s = np.eye(5)
    with pytest.raises(ValueError, match="at least 2 items"):
        selectivity(s, np.array([0, 0, 0, 0, 1]))
    with pytest.raises(ValueError, match="at least 2 categories"):
        selectivity(s, np.zeros(5, int))
    with pytest.raises(ValueError, match="integer"):
        selectivity(s, np.array([0.0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match="form"):
        selectivity(s, np.array([0, 0, 1, 1, 1]), form="log")
    assert check_labels(np.array([1, 0, 1, 0]))[1] == 2


# ----------------------------------------------------------------------------- permutation test
def test_permutation_test_matches_naive_loop():
    rng = np.random.default_rng(3)
    labels = random_labels(rng, [4, 5, 6])
    s = cosine_similarity(clustered(rng, labels, width=12, noise=2.0, n_layers=3))  # weak structure
    n_perm, seed = 150, 42
    for form in ("ratio", "difference"):
        test = selectivity_permutation_test(s, labels, form=form, n_permutations=n_perm, confidence=0.9, seed=seed)
        shuffled = np.random.default_rng(seed).permuted(np.tile(labels, (n_perm, 1)), axis=1)
        for layer in range(3):
            observed = naive_selectivity(s[layer], labels, form)[0]
            null = np.array([naive_selectivity(s[layer], lab, form)[0] for lab in shuffled])
            np.testing.assert_allclose(test.null[layer], null, rtol=1e-12, atol=1e-15)  # values near 0: a relative bound alone fails on 1 ulp
            assert test.observed.index[layer] == pytest.approx(observed, rel=1e-12)
            assert test.p_value[layer] == (1 + np.sum(null >= observed)) / (1 + n_perm)
            assert test.null_mean[layer] == pytest.approx(null.mean(), rel=1e-12)
            np.testing.assert_allclose([test.null_low[layer], test.null_high[layer]], np.percentile(null, [5, 95]), rtol=1e-12)
            for c in range(3):
                null_c = np.array([naive_selectivity(s[layer], lab, form)[1][c] for lab in shuffled])
                obs_c = naive_selectivity(s[layer], labels, form)[1][c]
                assert test.p_value_per_category[layer, c] == (1 + np.sum(null_c >= obs_c)) / (1 + n_perm)
        assert 0 < test.p_value.min() and test.p_value.max() <= 1


def test_permutation_p_value_calibrated_under_no_structure():
    """Random vectors, random labels: P(p <= alpha) ~ alpha over many independent datasets."""
    n_datasets, n_perm = 400, 199
    p = np.empty((2, n_datasets))
    for d in range(n_datasets):
        rng = np.random.default_rng(1000 + d)
        labels = random_labels(rng, [4, 5, 6])
        s = cosine_similarity(rng.normal(size=(labels.size, 10)))
        for f, form in enumerate(("ratio", "difference")):
            p[f, d] = selectivity_permutation_test(s, labels, form=form, n_permutations=n_perm, seed=d).p_value
    sd = np.sqrt(0.05 * 0.95 / n_datasets)  # binomial SD of the rejection rate, ~0.011
    for alpha in (0.05, 0.2):
        rate = np.mean(p <= alpha, axis=1)
        tol = 3.5 * np.sqrt(alpha * (1 - alpha) / n_datasets)
        assert np.all(np.abs(rate - alpha) <= tol), (alpha, rate, tol, sd)


def test_permutation_p_value_minimal_for_strong_structure():
    rng = np.random.default_rng(5)
    labels = random_labels(rng, [8, 12, 10])
    s = cosine_similarity(clustered(rng, labels, width=20, noise=0.3, n_layers=4))
    for form in ("ratio", "difference"):
        test = selectivity_permutation_test(np.stack([s, s[::-1]]), labels, form=form, n_permutations=300, seed=1)
        assert np.all(test.observed.between_mean > 0.1)
        np.testing.assert_array_equal(test.p_value, np.full((2, 4), 1 / 301))
        np.testing.assert_array_equal(test.p_value_per_category, np.full((2, 4, 3), 1 / 301))
        assert np.all(test.observed.index > test.null_high)
    none = selectivity_permutation_test(s, labels, n_permutations=0)
    assert np.isnan(none.p_value).all() and np.isnan(none.null_low).all() and np.isnan(none.null_mean).all()
    assert np.isfinite(none.observed.index).all() and none.null.shape == (4, 0)


def test_permutation_reproducing_the_observed_partition_counts_as_a_tie():
    labels = np.array([0, 0, 1, 1])
    s = np.array([[1, 0.9, 0.1, 0.2], [0.9, 1, 0.15, 0.05], [0.1, 0.15, 1, 0.7], [0.2, 0.05, 0.7, 1]])
    n_perm = 99
    test = selectivity_permutation_test(s, labels, n_permutations=n_perm, seed=7)
    shuffled = permuted_labels(labels, n_perm, np.random.default_rng(7))
    same = np.all(shuffled == labels, axis=1) | np.all(shuffled == 1 - labels, axis=1)
    assert 0 < same.sum() < n_perm
    assert test.p_value == (1 + same.sum()) / (1 + n_perm)


def test_p_value_and_interval_helpers():
    null = np.array([[0.1, 0.5, 0.9, 0.3]])
    np.testing.assert_array_equal(permutation_p_value(np.array([0.5]), null), [3 / 5])
    assert np.isnan(permutation_p_value(np.array([np.nan]), null)).all()
    # A null value one ulp below the observed one (round-off of the same partition) is a tie.
    assert 0.1 * 3 > 0.3
    np.testing.assert_array_equal(permutation_p_value(np.array([0.1 * 3]), np.array([[0.3, 0.0]])), [2 / 3])
    low, high = percentile_interval(np.arange(101.0), 0.9)
    assert (low, high) == (pytest.approx(5.0), pytest.approx(95.0))
    with pytest.raises(ValueError, match="confidence"):
        percentile_interval(null, 1.0)


# ----------------------------------------------------------------------------- RSA
def test_rsa_pearson_matches_scipy():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 12, 8))
    s = cosine_similarity(x)
    r = rsa(s[0], s[1])
    assert r.shape == (3,)
    for layer in range(3):
        expected = scipy.stats.pearsonr(upper_triangle(s[0, layer]), upper_triangle(s[1, layer]))[0]
        assert r[layer] == pytest.approx(expected, abs=1e-12)
    iu = np.triu_indices(12, k=1)
    np.testing.assert_array_equal(upper_triangle(s[0, 0]), s[0, 0][iu])


def test_rsa_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(7)
    s = np.round(cosine_similarity(rng.normal(size=(2, 3, 14, 4))), 1)  # many ties
    r = rsa(s[0], s[1], method="spearman")
    for layer in range(3):
        a, b = upper_triangle(s[0, layer]), upper_triangle(s[1, layer])
        assert len(np.unique(a)) < a.size
        assert r[layer] == pytest.approx(scipy.stats.spearmanr(a, b)[0], abs=1e-12)
    x = rng.integers(0, 4, size=(5, 30)).astype(float)
    np.testing.assert_array_equal(average_ranks(x), scipy.stats.rankdata(x, axis=-1))


def test_weighted_ranks_equal_ranks_of_repeated_vector():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 6, size=(4, 25)).astype(float)
    w = rng.integers(0, 4, size=(4, 25))
    ranks = average_ranks(x, w)
    for i in range(4):
        np.testing.assert_allclose(np.repeat(ranks[i], w[i]), scipy.stats.rankdata(np.repeat(x[i], w[i])))


# ----------------------------------------------------------------------------- bootstrap
def naive_bootstrap(s_a, s_b, n_boot, seed, method, drop_duplicates=True):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, s_a.shape[0], size=(n_boot, s_a.shape[0]))
    rows, cols = np.triu_indices(s_a.shape[0], k=1)
    out = np.full(n_boot, np.nan)
    corr = scipy.stats.pearsonr if method == "pearson" else scipy.stats.spearmanr
    for b in range(n_boot):
        sub_a, sub_b = s_a[np.ix_(idx[b], idx[b])], s_b[np.ix_(idx[b], idx[b])]
        keep = idx[b][rows] != idx[b][cols] if drop_duplicates else np.ones(rows.size, bool)
        xa, xb = sub_a[rows, cols][keep], sub_b[rows, cols][keep]
        if xa.size >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[b] = corr(xa, xb)[0]
    return out


@pytest.mark.parametrize("method,rounding", [("pearson", None), ("spearman", None), ("spearman", 1)])
def test_bootstrap_drops_duplicate_pairs_like_naive(method, rounding):
    rng = np.random.default_rng(9)
    s = cosine_similarity(rng.normal(size=(3, 2, 7, 5)))  # (components, layers, items, items)
    if rounding is not None:
        s = np.round(s, rounding)  # ties: exercises the tie-group path of the weighted ranks
    n_boot, seed = 60, 11
    boot = rsa_bootstrap(s, [(0, 1), (1, 2)], method=method, n_bootstrap=n_boot, seed=seed)
    assert boot.replicates.shape == (2, 2, n_boot)
    for p, (a, b) in enumerate([(0, 1), (1, 2)]):
        for layer in range(2):
            naive = naive_bootstrap(s[a, layer], s[b, layer], n_boot, seed, method)
            np.testing.assert_allclose(boot.replicates[p, layer], naive, rtol=1e-9, atol=1e-10, equal_nan=True)
            np.testing.assert_allclose(
                [boot.ci_low[p, layer], boot.ci_high[p, layer]], np.nanpercentile(naive, [2.5, 97.5]), rtol=1e-9
            )
    # Keeping the same-item pairs would give different replicates: the dropping matters here.
    kept = naive_bootstrap(s[0, 0], s[1, 0], n_boot, seed, method, drop_duplicates=False)
    assert not np.allclose(boot.replicates[0, 0], kept, equal_nan=True)


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(10)
    base = rng.normal(size=(3, 30, 16))
    s = np.stack([cosine_similarity(base + 0.5 * rng.normal(size=base.shape)) for _ in range(3)])
    pairs = [(0, 1), (0, 2), (1, 2)]
    boot = rsa_bootstrap(s, pairs, n_bootstrap=300, seed=3)
    point = np.stack([rsa(s[a], s[b]) for a, b in pairs])  # (3, 3)
    assert np.all(point > 0.3)
    assert np.all((boot.ci_low < point) & (point < boot.ci_high))
    again = rsa_bootstrap(s, pairs, n_bootstrap=300, seed=3)
    np.testing.assert_array_equal(boot.replicates, again.replicates)
    other = rsa_bootstrap(s, pairs, n_bootstrap=300, seed=4)
    assert not np.array_equal(boot.ci_low, other.ci_low)
    spear = rsa_bootstrap(s, pairs, n_bootstrap=300, seed=3, method="spearman")
    point_s = np.stack([rsa(s[a], s[b], method="spearman") for a, b in pairs])
    assert np.all((spear.ci_low < point_s) & (point_s < spear.ci_high))


def test_bootstrap_zero_gives_nan_ci():
    s = cosine_similarity(np.random.default_rng(0).normal(size=(2, 3, 6, 4)))
    boot = rsa_bootstrap(s, [(0, 1)], n_bootstrap=0)
    assert boot.replicates.shape == (1, 3, 0)
    assert np.isnan(boot.ci_low).all() and np.isnan(boot.ci_high).all()


def test_bootstrap_counts():
    idx = np.array([[0, 0, 2], [1, 2, 1]])
    np.testing.assert_array_equal(bootstrap_counts(idx, 3), [[2, 0, 1], [0, 2, 1]])


# ----------------------------------------------------------------------------- BH q-values
def naive_bh(p: list[float]) -> list[float]:
    """The definition, literally: q_(i) = min over j >= i of m p_(j) / j, capped at 1, NaN skipped."""
    finite = [(value, index) for index, value in enumerate(p) if not np.isnan(value)]
    ordered = sorted(finite)
    m = len(ordered)
    out = [float("nan")] * len(p)
    for i, (_, index) in enumerate(ordered, start=1):
        out[index] = min(1.0, min(m * ordered[j - 1][0] / j for j in range(i, m + 1)))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_bh_q_values_match_the_definition(seed):
    """bh_q_values calls scipy's false_discovery_control: checked here against the definition
    computed independently (`naive_bh`, a loop over the sorted p-values), NaN set aside."""
    from laminae.metrics.multiple_testing import bh_q_values

    rng = np.random.default_rng(seed)
    # Permutation-like p-values: many ties (multiples of 1/200), some tiny, some NaN, a 2-D family.
    p = rng.integers(1, 201, size=(6, 7)) / 200.0
    p[rng.random(p.shape) < 0.3] = 1 / 200
    p[rng.random(p.shape) < 0.15] = np.nan
    q = bh_q_values(p)
    assert q.shape == p.shape
    np.testing.assert_array_equal(np.isnan(q), np.isnan(p))
    np.testing.assert_allclose(q.ravel(), naive_bh(p.ravel().tolist()), rtol=1e-12)
    finite = ~np.isnan(p)
    assert (q[finite] >= p[finite]).all() and (q[finite] <= 1).all()


def test_bh_q_values_edge_cases():
    from laminae.metrics.multiple_testing import bh_q_values

    assert bh_q_values([]).shape == (0,)
    assert np.isnan(bh_q_values([np.nan, np.nan])).all()
    assert bh_q_values(0.03).tolist() == 0.03            # a family of one is its own p-value
    np.testing.assert_allclose(bh_q_values([0.9, 0.8, 0.95]), [0.95, 0.95, 0.95])
    for bad in ([0.5, 1.2], [-0.1], [np.inf]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            bh_q_values(bad)
