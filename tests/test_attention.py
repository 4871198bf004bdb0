"""The attention experiment (where each head looks): the statistics of
laminae.metrics.attention against naive loops and scipy, the streaming reducer against a
one-shot computation (uneven chunks, shards), the figures, the measures, and (slow) an end-to-end
run whose numbers are checked against a plain HF forward with `output_attentions=True`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from laminae.metrics.attention import (STATISTICS, block_bootstrap_means, block_sums, mass_after_query,
                                       pattern_statistics, query_blocks, ratio_of_sums)


def random_patterns(rng, rows, n_heads, n_keys, position, n_visible, *, causal, peaked=False):
    """Softmax over the visible keys of random logits: (rows, n_heads, n_keys), 0 elsewhere."""
    logits = rng.normal(scale=3.0 if peaked else 1.0, size=(rows, n_heads, n_keys))
    p = np.zeros_like(logits)
    for r in range(rows):
        visible = np.arange(position[r] + 1) if causal else np.arange(n_visible[r])
        e = np.exp(logits[r][:, visible] - logits[r][:, visible].max(axis=-1, keepdims=True))
        p[r][:, visible] = e / e.sum(axis=-1, keepdims=True)
    return p


def naive_statistics(p, position, n_visible, causal):
    rows, n_heads, n_keys = p.shape
    out = np.full((rows, n_heads, len(STATISTICS)), np.nan)
    for r in range(rows):
        for h in range(n_heads):
            probs = p[r, h]
            h_nats = -sum(float(x) * math.log(float(x)) for x in probs if x > 0)
            out[r, h, 0] = h_nats
            out[r, h, 1] = h_nats / math.log(n_visible[r]) if n_visible[r] >= 2 else np.nan
            out[r, h, 2] = probs[0]
            out[r, h, 3] = sum(probs[j] * ((position[r] - j) if causal else abs(position[r] - j)) for j in range(n_keys))
            out[r, h, 4] = 1 / n_visible[r]
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_pattern_statistics_match_a_naive_loop(causal):
    rng = np.random.default_rng(0)
    lengths = [5, 3, 7]
    position = np.concatenate([np.arange(n) for n in lengths])
    n_visible = position + 1 if causal else np.concatenate([[n] * n for n in lengths])
    p = random_patterns(rng, position.size, 3, 7, position, n_visible, causal=causal, peaked=True)
    got = pattern_statistics(p.astype(np.float32), position, n_visible, causal=causal)
    want = naive_statistics(p.astype(np.float32).astype(np.float64), position, n_visible, causal)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, equal_nan=True)
    # float64 patterns sum to 1 to round-off, so scipy's entropy (which renormalises) agrees
    got64 = pattern_statistics(p, position, n_visible, causal=causal)
    np.testing.assert_allclose(got64[..., 0], scipy_entropy(p, axis=-1), rtol=1e-12, atol=1e-14)
    # bounds: normalised entropy in [0, 1], sink in [0, 1], distance in [0, max offset]
    finite = np.isfinite(got[..., 1])
    assert (got[..., 1][finite] >= -1e-7).all() and (got[..., 1][finite] <= 1 + 1e-6).all()


def test_pattern_statistics_extremes():
    """One-hot on the first key: entropy 0, sink 1, distance = position; uniform: ln n, 1, mean offset."""
    position = np.array([0, 3, 3])
    n_visible = position + 1
    p = np.zeros((3, 2, 4))
    p[:, 0, 0] = 1.0
    p[0, 1, 0] = 1.0
    p[1, 1, :4] = 0.25
    p[2, 1, 3] = 1.0                                            # looks at itself
    got = pattern_statistics(p, position, n_visible, causal=True)
    np.testing.assert_allclose(got[:, 0, 0], 0.0)
    np.testing.assert_allclose(got[:, 0, 2], 1.0)
    np.testing.assert_allclose(got[:, 0, 3], position)
    np.testing.assert_allclose(got[1, 1, :4], [math.log(4), 1.0, 0.25, 1.5])
    np.testing.assert_allclose(got[2, 1, [0, 2, 3]], [0.0, 0.0, 0.0])
    assert np.isnan(got[0, :, 1]).all()                          # one visible key: normalised entropy undefined
    bad = p.copy()
    bad[1, 0, 2] = np.nan
    assert np.isnan(pattern_statistics(bad, position, n_visible, causal=True)[1, 0]).all()


def test_mass_after_query():
    p = np.zeros((2, 1, 3))
    p[0, 0] = [0.5, 0.3, 0.2]
    p[1, 0] = [0.1, 0.1, 0.8]
    np.testing.assert_allclose(mass_after_query(p, np.array([0, 1]))[:, 0], [0.5, 0.8])


def test_query_blocks_number_blocks_in_row_order():
    window = np.array([3, 3, 3, 3, 3, 1, 1, 1])
    position = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    block, n = query_blocks(window, position, 2, include=position > 0)
    # window 3: {1} (pos 0 excluded), {2,3}, {4}; window 1: {1}, {2}
    assert n == 5
    np.testing.assert_array_equal(block, [-1, 0, 1, 1, 2, -1, 3, 4])
    with pytest.raises(ValueError, match="block_tokens"):
        query_blocks(window, position, 0)


def test_block_sums_and_ratio():
    values = np.array([[1.0, np.nan], [2.0, 4.0], [3.0, 5.0], [9.0, 9.0]])
    block = np.array([0, 0, 1, -1])
    sums, counts = block_sums(values, block, 2)
    np.testing.assert_allclose(sums, [[3.0, 4.0], [3.0, 5.0]])
    np.testing.assert_allclose(counts, [[2, 1], [1, 1]])
    np.testing.assert_allclose(ratio_of_sums(sums, counts), [2.0, 4.5])


def test_block_bootstrap_matches_a_naive_resampling():
    """Replicate b: the blocks drawn by default_rng(seed).integers(0, n_blocks, (B, n_blocks)),
    the mean over all their values (each drawn block's values counted as often as it is drawn)."""
    rng = np.random.default_rng(1)
    n_blocks, per_block = 6, 4
    values = rng.normal(size=(n_blocks * per_block, 2))
    values[3, 1] = np.nan
    block = np.repeat(np.arange(n_blocks), per_block)
    sums, counts = block_sums(values, block, n_blocks)
    got = block_bootstrap_means(sums, counts, n_bootstrap=50, seed=7, batch=16)
    draws = np.random.default_rng(7).integers(0, n_blocks, size=(50, n_blocks))
    for b in range(50):
        pooled = np.concatenate([values[block == k] for k in draws[b]])
        np.testing.assert_allclose(got[b], np.nanmean(pooled, axis=0), rtol=1e-12)
    assert block_bootstrap_means(sums, counts, n_bootstrap=0, seed=0).shape == (0, 2)
