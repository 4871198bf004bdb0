"""`analyse_qkv` and its writers: table layout and semantics, determinism, GQA widths, files."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import scipy.stats

from laminae.experiments.qkv.analysis import (
    TABLE_COLUMNS,
    analyse_qkv,
    format_qkv_table,
    read_qkv_table,
    write_qkv_tables,
)
from laminae.metrics.rsa import rsa
from laminae.metrics.selectivity import selectivity
from laminae.metrics.similarity import cosine_similarity

CATEGORIES = ["space", "furniture", "fruit"]


def make_inputs(n_layers=4, sizes=(4, 7, 5), widths=(16, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    n = labels.size
    acts = {}
    for name, width in zip("qkv", widths):
        shared = 3.0 * rng.normal(size=(n_layers, 1, width))
        protos = rng.normal(size=(n_layers, len(sizes), width))
        acts[name] = (shared + protos[:, labels] + rng.normal(size=(n_layers, n, width))).astype(np.float32)
    words = [f"w{i}" for i in range(n)]
    return acts, labels, words


def rows_of(results, metric, component):
    rows = [r for r in results.rows if r.metric == metric and r.component == component]
    assert [r.layer for r in rows] == list(range(results.n_layers))
    return rows


def test_table_layout_and_metric_semantics():
    acts, labels, words = make_inputs()
    res = analyse_qkv(acts, labels, CATEGORIES, n_permutations=50, n_bootstrap=40, words=words)
    n_layers = 4
    assert res.similarity["q"].shape == (n_layers, 16, 16)
    per_component = ["selectivity", "selectivity_null", "within_mean", "between_mean"]
    per_component += [f"selectivity:{c}" for c in CATEGORIES] + [f"within_mean:{c}" for c in CATEGORIES]
    assert len(res.rows) == 3 * n_layers * len(per_component) + 3 * n_layers
    assert {(r.component, r.metric) for r in res.rows} == {(c, m) for c in "qkv" for m in per_component} | {
        (pair, "rsa") for pair in ("q-k", "q-v", "k-v")
    }
    assert res.rows[0]._fields == TABLE_COLUMNS

    for comp in "qkv":
        s = cosine_similarity(acts[comp])
        np.testing.assert_allclose(res.similarity[comp], s, rtol=1e-12, atol=1e-14)
        direct = selectivity(s, labels)
        sel = rows_of(res, "selectivity", comp)
        null = rows_of(res, "selectivity_null", comp)
        within = rows_of(res, "within_mean", comp)
        between = rows_of(res, "between_mean", comp)
        for layer in range(n_layers):
            assert sel[layer].value == pytest.approx(direct.index[layer], rel=1e-12)
            assert sel[layer].value == pytest.approx(within[layer].value / between[layer].value, rel=1e-12)
            assert math.isnan(sel[layer].ci_low) and math.isnan(sel[layer].ci_high)
            assert 1 / 51 <= sel[layer].p_value <= 1
            assert null[layer].ci_low <= null[layer].value <= null[layer].ci_high
            assert math.isnan(null[layer].p_value) and math.isnan(within[layer].p_value)
        for j, cat in enumerate(CATEGORIES):
            per_cat = rows_of(res, f"selectivity:{cat}", comp)
            within_c = rows_of(res, f"within_mean:{cat}", comp)
            for layer in range(n_layers):
                assert per_cat[layer].value == pytest.approx(within_c[layer].value / between[layer].value, rel=1e-12)
                assert 0 < per_cat[layer].p_value <= 1
        np.testing.assert_allclose(
            [r.value for r in within], np.mean([[r.value for r in rows_of(res, f"within_mean:{c}", comp)] for c in CATEGORIES], axis=0)
        )
    for pair in ("q-k", "q-v", "k-v"):
        a, b = pair.split("-")
        expected = rsa(cosine_similarity(acts[a]), cosine_similarity(acts[b]))
        rows = rows_of(res, "rsa", pair)
        np.testing.assert_allclose([r.value for r in rows], expected, rtol=1e-12)
        for r in rows:
            assert r.ci_low < r.value < r.ci_high and math.isnan(r.p_value)
    np.testing.assert_array_equal(res.profile("rsa", "q-k"), [r.value for r in rows_of(res, "rsa", "q-k")])


def test_q_values_are_bh_over_each_metric_family():
    """q_value: Benjamini-Hochberg (scipy) over every component x layer of one metric; no q
    without a p. Weak signal, so that the p-values differ and the correction matters."""
    acts, labels, _ = make_inputs(n_layers=5, seed=3)
    weak = {c: a + 2.5 * np.random.default_rng(9).normal(size=a.shape) for c, a in acts.items()}
    res = analyse_qkv(weak, labels, CATEGORIES, n_permutations=99, n_bootstrap=0)
    for metric in ["selectivity"] + [f"selectivity:{c}" for c in CATEGORIES]:
        p = np.stack([res.profile(metric, c, "p_value") for c in "qkv"])   # (3, n_layers): one family
        q = np.stack([res.profile(metric, c, "q_value") for c in "qkv"])
        np.testing.assert_allclose(q.ravel(), scipy.stats.false_discovery_control(p.ravel(), method="bh"), rtol=1e-12)
        assert not np.array_equal(q, p), "the correction changed nothing: the test would not see a wrong family"
    for row in res.rows:
        if math.isnan(row.p_value):
            assert math.isnan(row.q_value), row


def test_difference_form_and_options_reach_the_metrics():
    acts, labels, _ = make_inputs()
    res = analyse_qkv(acts, labels, CATEGORIES, selectivity="difference", zscore=True, rsa_method="spearman",
                      n_permutations=20, n_bootstrap=20)
    s = cosine_similarity(acts["v"], zscore=True)
    np.testing.assert_allclose(res.profile("selectivity", "v"), selectivity(s, labels, form="difference").index, rtol=1e-12)
    np.testing.assert_allclose(
        res.profile("selectivity", "v"), res.profile("within_mean", "v") - res.profile("between_mean", "v"), atol=1e-14
    )
    np.testing.assert_allclose(
        res.profile("rsa", "k-v"), rsa(cosine_similarity(acts["k"], zscore=True), s, method="spearman"), rtol=1e-12
    )


def test_deterministic_and_seed_sensitive():
    acts, labels, _ = make_inputs(seed=1)
    kwargs = dict(n_permutations=40, n_bootstrap=30, seed=5)
    first = format_qkv_table(analyse_qkv(acts, labels, CATEGORIES, **kwargs).rows)
    assert first == format_qkv_table(analyse_qkv(acts, labels, CATEGORIES, **kwargs).rows)
    other = format_qkv_table(analyse_qkv(acts, labels, CATEGORIES, **{**kwargs, "seed": 6}).rows)
    assert other != first
    # The bootstrap stream does not depend on the number of permutations.
    a = analyse_qkv(acts, labels, CATEGORIES, n_permutations=10, n_bootstrap=30, seed=5)
    b = analyse_qkv(acts, labels, CATEGORIES, n_permutations=40, n_bootstrap=30, seed=5)
    np.testing.assert_array_equal(a.profile("rsa", "q-v", "ci_low"), b.profile("rsa", "q-v", "ci_low"))


def test_gqa_widths_and_zero_resamples_give_nan():
    acts, labels, _ = make_inputs(widths=(32, 8, 8))
    res = analyse_qkv(acts, labels, CATEGORIES, n_permutations=0, n_bootstrap=0)
    assert all(res.similarity[c].shape == (4, 16, 16) for c in "qkv")
    assert np.isnan(res.profile("selectivity", "k", "p_value")).all()
    assert np.isnan(res.profile("selectivity_null", "k")).all()
    assert np.isnan(res.profile("selectivity_null", "k", "ci_high")).all()
    assert np.isnan(res.profile("rsa", "q-k", "ci_low")).all()
    assert np.isfinite(res.profile("rsa", "q-k")).all() and np.isfinite(res.profile("selectivity", "k")).all()


def test_two_components_and_input_checks():
    acts, labels, _ = make_inputs()
    res = analyse_qkv({"k": acts["k"], "q": acts["q"]}, labels, CATEGORIES, n_permutations=5, n_bootstrap=5)
    assert {r.component for r in res.rows if r.metric == "rsa"} == {"k-q"}
    with pytest.raises(ValueError, match="n_items"):
        analyse_qkv({"q": acts["q"], "k": acts["k"][:, :-1]}, labels, CATEGORIES)
    with pytest.raises(ValueError, match="entries"):
        analyse_qkv(acts, labels[:-1], CATEGORIES)
    with pytest.raises(ValueError, match="at least 2 items"):
        analyse_qkv(acts, np.r_[labels[:-1], 3], CATEGORIES + ["other"])
    with pytest.raises(ValueError, match="component name"):
        analyse_qkv({"q-x": acts["q"], "k": acts["k"]}, labels, CATEGORIES)
    with pytest.raises(ValueError, match="words"):
        analyse_qkv(acts, labels, CATEGORIES, words=["a"])


def test_writers_round_trip_and_leave_no_temporaries(tmp_path):
    acts, labels, words = make_inputs()
    res = analyse_qkv(acts, labels, CATEGORIES, n_permutations=20, n_bootstrap=20, words=words)
    metrics = tmp_path / "metrics"
    attrs = {"stage": "qkv.analysis", "stage_hash": "abc123", "model": {"name": "tiny"}, "note": None}
    table, h5 = write_qkv_tables(res, metrics, attrs)
    write_qkv_tables(res, metrics, attrs)  # overwriting is fine
    assert sorted(p.name for p in metrics.iterdir()) == ["qkv_laminar.tsv", "similarity.h5"]

    lines = table.read_text().splitlines()
    assert lines[0] == "\t".join(TABLE_COLUMNS)
    first = lines[1].split("\t")
    assert first[:3] == ["0", "q", "selectivity"] and first[4] == first[5] == ""
    back = read_qkv_table(table)
    assert len(back) == len(res.rows)
    for got, want in zip(back, res.rows):
        assert got[:3] == want[:3]
        for g, w in zip(got[3:], want[3:]):
            assert (math.isnan(g) and math.isnan(w)) or g == w  # repr: exact round trip

    with h5py.File(h5, "r") as f:
        for c in "qkv":
            np.testing.assert_array_equal(f[c][()], res.similarity[c])
        np.testing.assert_array_equal(f["labels"][()], labels)
        assert [w.decode() for w in f["words"][()]] == words
        assert [c.decode() for c in f["categories"][()]] == CATEGORIES
        assert f.attrs["stage_hash"] == "abc123" and f.attrs["n_permutations"] == 20
        assert f.attrs["model"] == '{"name": "tiny"}' and f.attrs["note"] == "null"
        assert f.attrs["selectivity_form"] == "ratio"


def test_read_qkv_table_rejects_malformed_files(tmp_path):
    bad_header = tmp_path / "a.tsv"
    bad_header.write_text("layer\tvalue\n0\t1.0\n")
    with pytest.raises(ValueError, match="header"):
        read_qkv_table(bad_header)
    short = tmp_path / "b.tsv"
    short.write_text("\t".join(TABLE_COLUMNS) + "\n0\tq\tselectivity\t1.5\n")
    with pytest.raises(ValueError, match="line 2 has 4 fields"):
        read_qkv_table(short)
    not_a_number = tmp_path / "c.tsv"
    not_a_number.write_text("\t".join(TABLE_COLUMNS) + "\n0\tq\tselectivity\tabc\t\t\t\n")
    with pytest.raises(ValueError, match="line 2"):
        read_qkv_table(not_a_number)
