"""Experiment `neurons`: per-unit category selectivity (laminae.metrics.unit_selectivity) checked
against scipy (f_oneway, ttest_ind, permutation_test, false_discovery_control, binomtest) and
naive loops; the analysis through the real stages on a store written here; the figures; an
end-to-end run on a tiny random model (slow)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats

from laminae.metrics.resampling import permuted_labels
from laminae.metrics.unit_selectivity import (
    clopper_pearson,
    fraction_significant,
    null_fractions,
    unit_category_test,
)


def distinct_labellings(labels: np.ndarray) -> np.ndarray:
    """Every distinct rearrangement of `labels` except `labels` itself: (n_distinct - 1, n)."""
    seen = {tuple(p) for p in itertools.permutations(labels.tolist())}
    seen.discard(tuple(labels.tolist()))
    return np.array(sorted(seen), dtype=np.int64)


@pytest.fixture
def small():
    """8 items in 3 categories (3, 3, 2), 5 units: unit 0 separates category 0, unit 1 is
    constant, the rest are noise; 560 distinct labellings."""
    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    x = rng.normal(size=(8, 5))
    x[:, 0] += 2.5 * (labels == 0)
    x[:, 1] = 0.7
    return x, labels


def test_statistics_match_scipy(small):
    x, labels = small
    test = unit_category_test(x, labels, permuted_labels(labels, 50, np.random.default_rng(0)))
    for unit in range(x.shape[1]):
        groups = [x[labels == c, unit] for c in range(3)]
        if unit == 1:
            assert test.constant[unit] and np.isnan(test.f[unit]) and test.p_value[unit] == 1.0
            assert np.all(test.p_value_per_category[:, unit] == 1.0)
            continue
        assert test.f[unit] == pytest.approx(scipy.stats.f_oneway(*groups).statistic, rel=1e-10)
        total = ((x[:, unit] - x[:, unit].mean()) ** 2).sum()
        between = sum(len(g) * (g.mean() - x[:, unit].mean()) ** 2 for g in groups)
        assert test.eta2[unit] == pytest.approx(between / total, rel=1e-10)
        for c in range(3):
            inside, rest = x[labels == c, unit], x[labels != c, unit]
            assert test.means[c, unit] == pytest.approx(inside.mean(), rel=1e-12)
            assert test.t[c, unit] == pytest.approx(scipy.stats.ttest_ind(inside, rest).statistic, rel=1e-10)
            pooled = np.sqrt((((inside - inside.mean()) ** 2).sum() + ((rest - rest.mean()) ** 2).sum()) / (len(x) - 2))
            assert test.cohens_d[c, unit] == pytest.approx((inside.mean() - rest.mean()) / pooled, rel=1e-10)
        assert test.preferred[unit] == int(np.argmax([g.mean() for g in groups]))
    assert test.preferred[0] == 0


def test_exact_p_values_match_scipy_permutation_test(small):
    """With every distinct labelling as the shuffles, the p-values are scipy's exact ones."""
    x, labels = small
    shuffles = distinct_labellings(labels)                 # 559 = 8! / (3! 3! 2!) - 1
    test = unit_category_test(x, labels, shuffles)
    for unit in (0, 2, 3):
        groups = [x[labels == c, unit] for c in range(3)]
        exact = scipy.stats.permutation_test(
            groups, lambda *g: scipy.stats.f_oneway(*g).statistic, permutation_type="independent",
            alternative="greater", n_resamples=np.inf)
        assert test.p_value[unit] == pytest.approx(exact.pvalue, rel=1e-12)
        for c in range(3):
            two = (x[labels == c, unit], x[labels != c, unit])
            exact_c = scipy.stats.permutation_test(
                two, lambda a, b: scipy.stats.ttest_ind(a, b).statistic, permutation_type="independent",
                alternative="greater", n_resamples=np.inf)
            assert test.p_value_per_category[c, unit] == pytest.approx(exact_c.pvalue, rel=1e-12)


def test_random_permutations_agree_with_scipy_within_monte_carlo_error():
    rng = np.random.default_rng(11)
    labels = np.repeat([0, 1, 2], [10, 11, 13])
    x = rng.normal(size=(34, 4))
    x[:, 0] += 0.6 * (labels == 2)                         # a weak effect: p well inside (0, 1)
    test = unit_category_test(x, labels, permuted_labels(labels, 4000, np.random.default_rng(1)))
    for unit in range(4):
        groups = [x[labels == c, unit] for c in range(3)]
        ref = scipy.stats.permutation_test(
            groups, lambda *g, axis: scipy.stats.f_oneway(*g, axis=axis).statistic, vectorized=True,
            permutation_type="independent", alternative="greater", n_resamples=4000, rng=2).pvalue
        sd = np.sqrt(2 * ref * (1 - ref) / 4000) + 1 / 4000
        assert abs(test.p_value[unit] - ref) < 5 * sd


def test_null_p_values_are_pseudo_observed_permutation_p_values(small):
    x, labels = small
    shuffles = permuted_labels(labels, 40, np.random.default_rng(5))
    test = unit_category_test(x, labels, shuffles, n_null_draws=6)
    everything = np.vstack([labels[None], shuffles])
    for unit in (0, 3):
        f = np.array([scipy.stats.f_oneway(*[x[lab == c, unit] for c in range(3)]).statistic for lab in everything])
        for j in range(6):
            others = np.delete(f, 1 + j)
            naive = (1 + np.sum(others >= f[1 + j] * (1 - 1e-12))) / len(f)
            assert test.null_p_value[j, unit] == pytest.approx(naive, rel=1e-12)
    assert np.all(test.null_p_value[:, 1] == 1.0)          # the constant unit


def test_lead_axes_and_shared_permutations():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 4)
    x = rng.normal(size=(2, 3, 12, 7))
    shuffles = permuted_labels(labels, 30, rng)
    test = unit_category_test(x, labels, shuffles, n_null_draws=4)
    assert test.p_value.shape == (2, 3, 7) and test.t.shape == (2, 3, 3, 7)
    assert test.null_p_value.shape == (2, 3, 4, 7)
    alone = unit_category_test(x[1, 2], labels, shuffles, n_null_draws=4)
    np.testing.assert_array_equal(alone.p_value, test.p_value[1, 2])
    np.testing.assert_array_equal(alone.null_p_value, test.null_p_value[1, 2])


def test_chunks_over_units_do_not_change_anything(monkeypatch):
    import laminae.metrics.unit_selectivity as module

    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1, 2], 5)
    x = rng.normal(size=(15, 23))
    shuffles = permuted_labels(labels, 60, rng)
    whole = unit_category_test(x, labels, shuffles, n_null_draws=20)
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", 61 * 3 * 4)      # 4 units per chunk
    pieces = unit_category_test(x, labels, shuffles, n_null_draws=20)
    for name in ("f", "p_value", "p_value_per_category", "t", "null_p_value"):
        np.testing.assert_array_equal(getattr(whole, name), getattr(pieces, name))


def test_bh_per_row_matches_scipy():
    rng = np.random.default_rng(2)
    p = rng.uniform(size=(4, 50)) ** 3
    q, count = fraction_significant(p, 0.05)
    for row in range(4):
        ref = scipy.stats.false_discovery_control(p[row], method="bh")
        np.testing.assert_allclose(q[row], ref, rtol=1e-12)
        assert count[row] == np.sum(ref <= 0.05)


def test_clopper_pearson_matches_binomtest():
    for k, n in [(0, 10), (3, 10), (10, 10), (17, 1536), (1, 2)]:
        low, high = clopper_pearson(k, n, 0.9)
        ref = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
        assert float(low) == pytest.approx(ref.low, abs=1e-12)
        assert float(high) == pytest.approx(ref.high, abs=1e-12)
    with pytest.raises(ValueError):
        clopper_pearson(5, 3)


def test_null_fraction_is_small_under_the_null_and_planted_units_are_found():
    rng = np.random.default_rng(8)
    labels = np.repeat([0, 1, 2], [10, 11, 13])
    x = rng.normal(size=(34, 200))
    x[:, :20] += 3.0 * (labels == 1)[:, None]              # 20 planted units prefer category 1
    test = unit_category_test(x, labels, permuted_labels(labels, 500, rng), n_null_draws=50)
    q, count = fraction_significant(test.p_value, 0.05)
    assert set(np.flatnonzero(q <= 0.05)) >= set(range(20)) and count <= 26
    assert np.all(test.preferred[:20] == 1)
    null = null_fractions(np.delete(test.null_p_value, np.s_[:20], axis=-1), 0.05)   # pure-noise units
    assert null.mean() < 0.02


def test_bad_shuffles_are_refused():
    labels = np.repeat([0, 1, 2], 3)
    with pytest.raises(ValueError, match="rearrangement"):
        unit_category_test(np.zeros((9, 2)), labels, np.zeros((3, 9), dtype=int))
    with pytest.raises(ValueError, match="n_null_draws"):
        unit_category_test(np.zeros((9, 2)), labels, permuted_labels(labels, 3, np.random.default_rng(0)), n_null_draws=4)
