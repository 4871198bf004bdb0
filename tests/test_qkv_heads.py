"""Experiment 1 per attention head (`qkv.resolution: heads`): the per-head metrics against a
naive loop over heads (column slices through the single-matrix functions, scipy), the
grouped-query mapping on a synthetic 4-query / 2-KV-head store, the q-value families, the
variant machinery end to end (analysis and figure stages, config), and the figure."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.stats

from laminae.errors import ConfigError, InputFileError
from laminae.experiments.qkv import resources as qkv_resources
from laminae.experiments.qkv.analysis import analyse_qkv, read_qkv_table
from laminae.experiments.qkv.heads import (
    HEAD_COLUMNS,
    HeadLayout,
    analyse_qkv_heads,
    read_heads_table,
    resolution,
    split_heads,
    write_heads_table,
)
from laminae.experiments.qkv.heads_figure import HeadsTable, plot_heads
from laminae.experiments.qkv.seeds import resampling_seeds
from laminae.experiment import JobShape
from laminae.metrics.rsa import rsa_bootstrap, upper_triangle
from laminae.metrics.selectivity import selectivity_permutation_test
from laminae.metrics.similarity import cosine_similarity
from laminae.registry import discover
from laminae.stages.analysis import run_analysis
from laminae.stages.figures import run_figures
from laminae.store import ActivationWriter

EXPERIMENT = discover()["qkv"]
CATEGORIES = ["space", "furniture", "fruit"]
N_LAYERS, N_HEADS, N_KV, HEAD_DIM = 3, 4, 2, 12
EXTRACT_HASH = "feedc0ffee"


def gqa_inputs(seed: int = 0, sizes=(8, 9, 8), strength: float = 3.0):
    """Q with category structure (prototypes of SD `strength`) in every head; K and V with it only
    in KV head 1 (KV head 0 is noise). Under the h // 2 mapping, query heads 2 and 3 read KV head 1."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    n = labels.size
    prototypes = strength * rng.normal(size=(N_LAYERS, len(sizes), HEAD_DIM))   # one category geometry per layer

    def heads(n_heads: int, structured: list[int]) -> np.ndarray:
        # A shared direction per head keeps between-category cosines positive (the ratio form needs it).
        shared = 3.0 * rng.normal(size=(N_LAYERS, 1, n_heads, HEAD_DIM))
        out = shared + rng.normal(size=(N_LAYERS, n, n_heads, HEAD_DIM))
        for h in structured:
            out[:, :, h] += prototypes[:, labels]
        return out.reshape(N_LAYERS, n, n_heads * HEAD_DIM)

    acts = {"q": heads(N_HEADS, list(range(N_HEADS))), "k": heads(N_KV, [1]), "v": heads(N_KV, [1])}
    return acts, labels


LAYOUT = HeadLayout(N_HEADS, N_KV, HEAD_DIM)


def head_slice(x: np.ndarray, layer: int, head: int) -> np.ndarray:
    """(n_items, head_dim): columns head*d : (head+1)*d of one layer, the naive way."""
    return x[layer][:, head * HEAD_DIM:(head + 1) * HEAD_DIM]


# ------------------------------------------------------------------------------- the layout
def test_layout_from_widths_and_split_heads():
    layout = HeadLayout.from_widths(4, 2, {"q": 48, "k": 24, "v": 24})
    assert (layout.head_dim, layout.group, layout.kv_of_query.tolist()) == (12, 2, [0, 0, 1, 1])
    assert HeadLayout.from_widths(12, 12, {"q": 384}).kv_of_query.tolist() == list(range(12))
    for bad in ({"q": 48, "k": 36}, {"q": 50}, {"k": 0}):
        with pytest.raises(ValueError, match="do not split"):
            HeadLayout.from_widths(4, 2, bad)
    with pytest.raises(ValueError, match="multiple"):
        HeadLayout.from_widths(4, 3, {"q": 48})
    x = np.arange(2 * 3 * 8, dtype=float).reshape(2, 3, 8)
    split = split_heads(x, 4)
    assert split.shape == (2, 4, 3, 2)
    np.testing.assert_array_equal(split[1, 2], x[1][:, 4:6])


# ------------------------------------------------------------------ metrics against naive loops
@pytest.mark.parametrize("form, method, zscore", [("ratio", "pearson", False), ("difference", "spearman", True)])
def test_per_head_metrics_match_a_loop_over_heads(form, method, zscore):
    acts, labels = gqa_inputs()
    seed, n_perm, n_boot = 7, 49, 39
    res = analyse_qkv_heads(acts, labels, CATEGORIES, LAYOUT, selectivity=form, rsa_method=method,
                            n_permutations=n_perm, n_bootstrap=n_boot, zscore=zscore, seed=seed)
    perm_seed, boot_seed = resampling_seeds(seed)
    sims = {}
    for c, n_heads in (("q", N_HEADS), ("k", N_KV), ("v", N_KV)):
        test = res.selectivity[c]
        assert test.p_value.shape == (N_LAYERS, n_heads)
        for layer in range(N_LAYERS):
            for head in range(n_heads):
                s = cosine_similarity(head_slice(acts[c], layer, head), zscore=zscore)   # (n, n)
                sims[c, layer, head] = s
                single = selectivity_permutation_test(s, labels, form=form, n_permutations=n_perm,
                                                      seed=np.random.default_rng(perm_seed))
                assert test.observed.index[layer, head] == pytest.approx(float(single.observed.index), rel=1e-10)
                assert test.observed.between_mean[layer, head] == pytest.approx(float(single.observed.between_mean),
                                                                                rel=1e-10, abs=1e-13)
                assert test.p_value[layer, head] == float(single.p_value)
                assert test.null_low[layer, head] == pytest.approx(float(single.null_low), rel=1e-10, abs=1e-13)
    correlate = scipy.stats.pearsonr if method == "pearson" else scipy.stats.spearmanr
    for pair, heads in (("q-k", N_HEADS), ("q-v", N_HEADS), ("k-v", N_KV)):
        a, b = pair.split("-")
        assert res.rsa[pair].shape == (N_LAYERS, heads)
        for layer in range(N_LAYERS):
            for head in range(heads):
                other = head // (N_HEADS // N_KV) if a == "q" else head
                sa, sb = sims[a, layer, head], sims[b, layer, other]
                expected = correlate(upper_triangle(sa), upper_triangle(sb))[0]
                assert res.rsa[pair][layer, head] == pytest.approx(expected, rel=1e-10, abs=1e-12)
                boot = rsa_bootstrap(np.stack([sa, sb]), [(0, 1)], method=method, n_bootstrap=n_boot,
                                     seed=np.random.default_rng(boot_seed))
                low, high = res.rsa_ci[pair]
                assert low[layer, head] == pytest.approx(float(boot.ci_low[0]), rel=1e-9, abs=1e-12)
                assert high[layer, head] == pytest.approx(float(boot.ci_high[0]), rel=1e-9, abs=1e-12)


def test_one_head_reproduces_the_layer_table_with_the_same_draws():
    """With one head per layer the per-head numbers are the layer-level ones: same cosines, and
    the same permutations and bootstrap resamples (shared seeded streams)."""
    acts, labels = gqa_inputs()
    one = {c: a[..., :HEAD_DIM] for c, a in acts.items()}
    kwargs = dict(n_permutations=99, n_bootstrap=49, seed=3)
    layers = analyse_qkv(one, labels, CATEGORIES, **kwargs)
    heads = analyse_qkv_heads(one, labels, CATEGORIES, HeadLayout(1, 1, HEAD_DIM), **kwargs)
    for c in "qkv":
        np.testing.assert_array_equal(heads.selectivity[c].p_value[:, 0], layers.profile("selectivity", c, "p_value"))
        np.testing.assert_allclose(heads.selectivity[c].observed.index[:, 0], layers.profile("selectivity", c),
                                   rtol=1e-12)
    for pair in ("q-k", "q-v", "k-v"):
        np.testing.assert_allclose(heads.rsa_ci[pair][0][:, 0], layers.profile("rsa", pair, "ci_low"), rtol=1e-10)


def test_gqa_mapping_shows_structure_exactly_in_the_query_heads_reading_it():
    acts, labels = gqa_inputs(seed=1)
    res = analyse_qkv_heads(acts, labels, CATEGORIES, LAYOUT, n_permutations=199, n_bootstrap=0)
    # Selectivity of K: KV head 1 in every layer, never KV head 0.
    assert (res.q_value["k"][:, 1] < 0.05).all() and (res.q_value["k"][:, 0] >= 0.05).all()
    # Q-K (and Q-V): query heads 2, 3 read KV head 1 and share its geometry; heads 0, 1 read noise.
    for pair in ("q-k", "q-v"):
        r = res.rsa[pair]
        assert r.shape == (N_LAYERS, N_HEADS)
        assert (r[:, 2:] > 0.5).all() and (np.abs(r[:, :2]) < 0.3).all(), (pair, r)
    assert res.rsa["k-v"].shape == (N_LAYERS, N_KV)
    # Interleaved heads (h % n_kv) would put the structure in heads 1 and 3: make sure the data can tell.
    assert not ((res.rsa["q-k"][:, [1, 3]] > 0.5).all())


def test_bad_inputs_are_refused():
    acts, labels = gqa_inputs()
    with pytest.raises(ValueError, match=r"activations\['k'\] must be"):
        analyse_qkv_heads({**acts, "k": acts["q"]}, labels, CATEGORIES, LAYOUT)
    with pytest.raises(ValueError, match="splits only"):
        analyse_qkv_heads({"q": acts["q"], "attn_out": acts["q"]}, labels, CATEGORIES, LAYOUT)
    with pytest.raises(ValueError, match="entries"):
        analyse_qkv_heads(acts, labels[:-1], CATEGORIES, LAYOUT)
    with pytest.raises(ConfigError, match="qkv.resolution"):
        resolution({"resolution": "neurons"})
    assert resolution({}) == "layers"


# --------------------------------------------------------------------------------- the table
def test_heads_table_layout_q_values_and_round_trip(tmp_path):
    acts, labels = gqa_inputs(seed=2)
    noisy = {c: a + 3.0 * np.random.default_rng(5).normal(size=a.shape) for c, a in acts.items()}
    res = analyse_qkv_heads(noisy, labels, CATEGORIES, LAYOUT, n_permutations=99, n_bootstrap=19)
    path = write_heads_table(res.rows, tmp_path)
    assert path.read_text().splitlines()[0].split("\t") == list(HEAD_COLUMNS)
    rows = read_heads_table(path)
    assert len(rows) == len(res.rows)
    for got, want in zip(rows, res.rows):
        assert got[:4] == want[:4]
        assert all((math.isnan(g) and math.isnan(w)) or g == w for g, w in zip(got[4:], want[4:]))
    keys = {(r.layer, r.head, r.component, r.metric) for r in rows}
    assert len(keys) == len(rows)
    heads_of = {"q": N_HEADS, "k": N_KV, "v": N_KV, "q-k": N_HEADS, "q-v": N_HEADS, "k-v": N_KV}
    for component, n_heads in heads_of.items():
        metrics = ("rsa",) if "-" in component else ("selectivity", "selectivity_null", "within_mean", "between_mean")
        for metric in metrics:
            found = {(r.layer, r.head) for r in rows if (r.component, r.metric) == (component, metric)}
            assert found == {(l, h) for l in range(N_LAYERS) for h in range(n_heads)}, (component, metric)
    # q-values: one family per component's heatmap, recomputed with scipy from the table's p-values.
    changed = False
    for component in "qkv":
        sel = sorted((r.layer, r.head, r.p_value, r.q_value) for r in rows
                     if (r.component, r.metric) == (component, "selectivity"))
        p, q = np.array([s[2] for s in sel]), np.array([s[3] for s in sel])
        np.testing.assert_allclose(q, scipy.stats.false_discovery_control(p, method="bh"), rtol=1e-12)
        changed |= not np.array_equal(p, q)
    assert changed
    for r in rows:
        if r.metric != "selectivity":
            assert math.isnan(r.p_value) and math.isnan(r.q_value)
        if r.metric == "rsa":
            assert r.ci_low <= r.value <= r.ci_high


# ------------------------------------------------------------------ the variant, end to end
QKV = {"components": ["q", "k", "v"], "selectivity": "ratio", "rsa_method": "pearson", "n_permutations": 99,
       "n_bootstrap": 29, "confidence": 0.95, "zscore": False, "seed": 0}


def write_gqa_store(directory, with_heads: bool = True):
    acts, labels = gqa_inputs()
    names = [CATEGORIES[code] for code in labels]
    rows = [{"word": f"w{i}", "category": name, "position": 4} for i, name in enumerate(names)]
    attrs = {"stage_hash": EXTRACT_HASH, "model_id": "synthetic-gqa", "random_weights": True}
    if with_heads:
        attrs.update(n_heads=N_HEADS, n_kv_heads=N_KV)
    with ActivationWriter(directory, N_LAYERS, len(rows), attrs, config_text="stage: stimuli.extract\n") as writer:
        writer.write(0, {c: a.astype(np.float32) for c, a in acts.items()})
        writer.set_rows(rows, ["word", "category", "position"])


def stages(**qkv):
    settings = {**QKV, **qkv}
    analysis = {"stage": "qkv.analysis", "hash": "a1a1a1a1a1",
                "config": {"qkv": settings, "stage": "qkv.analysis", "version": 1, "upstream": EXTRACT_HASH}}
    plot = {"stage": "qkv.plot", "hash": "b2b2b2b2b2",
            "config": {"plot": {"dpi": 50}, "qkv": {"plot": {"similarity_layers": ["first", "last"]}},
                       "stage": "qkv.plot", "version": 1, "upstream": "a1a1a1a1a1"}}
    context = {"model": "synthetic-gqa", "random_weights": True, "stimuli": "synthetic", "template": "T {word}",
               "position": "target_last", "analysis": settings}
    return analysis, plot, context


@pytest.mark.parametrize("resolution_value", ["heads", "layers", None])
def test_variant_writes_heads_outputs_only_when_asked(tmp_path, resolution_value):
    write_gqa_store(tmp_path / "activations")
    extra = {} if resolution_value is None else {"resolution": resolution_value}
    analysis, plot, context = stages(**extra)
    written = run_analysis(EXPERIMENT, analysis, tmp_path / "activations", tmp_path / "metrics")
    figures = run_figures(EXPERIMENT, plot, context, tmp_path / "metrics", tmp_path / "figures")
    heads = resolution_value == "heads"
    assert ((tmp_path / "metrics" / "qkv_heads.tsv").is_file()) == heads
    assert ("qkv_heads.tsv" in [p.name for p in written]) == heads
    assert ({"qkv_heads.png", "qkv_heads.pdf"} <= {p.name for p in figures}) == heads
    assert (tmp_path / "figures" / "qkv_heads.png").is_file() == heads
    # The layer table is the same whatever the resolution.
    layers = read_qkv_table(tmp_path / "metrics" / "qkv_laminar.tsv")
    assert {r.component for r in layers} == {"q", "k", "v", "q-k", "q-v", "k-v"}
    if heads:
        table = HeadsTable.read(tmp_path / "metrics" / "qkv_heads.tsv")
        assert table.get("selectivity", "q").shape == (N_LAYERS, N_HEADS)
        assert table.get("selectivity", "k").shape == (N_LAYERS, N_KV)
        assert table.get("rsa", "q-v").shape == (N_LAYERS, N_HEADS)
        assert table.get("rsa", "k-v").shape == (N_LAYERS, N_KV)


def test_heads_need_the_head_count_in_the_store(tmp_path):
    write_gqa_store(tmp_path / "activations", with_heads=False)
    analysis, _, _ = stages(resolution="heads")
    with pytest.raises(InputFileError, match="n_heads"):
        run_analysis(EXPERIMENT, analysis, tmp_path / "activations", tmp_path / "metrics")
    assert not (tmp_path / "metrics").exists()


def test_bad_resolution_fails_with_the_key(tmp_path):
    write_gqa_store(tmp_path / "activations")
    analysis, _, _ = stages(resolution="columns")
    with pytest.raises(ConfigError, match="qkv.resolution"):
        run_analysis(EXPERIMENT, analysis, tmp_path / "activations", tmp_path / "metrics")


def test_config_plans_the_variant_folder_and_validates_the_key():
    from conftest import PROJECT_ROOT
    from laminae.config import load_runs

    (plain,) = load_runs(["experiments=[qkv]"], project_root=PROJECT_ROOT)
    (heads,) = load_runs(["experiments=[qkv]", "qkv.resolution=heads"], project_root=PROJECT_ROOT)
    assert plain.config["qkv"]["resolution"] == "layers"
    assert plain.stages["qkv.analysis"].variants == () and plain.stages["qkv.analysis"].dir.parent.name == "qkv"
    assert heads.stages["qkv.analysis"].variants == ("heads",)
    assert heads.stages["qkv.analysis"].dir.parent.name == "qkv+heads"
    assert EXPERIMENT.active_variants({}) == ()
    with pytest.raises(ConfigError, match="qkv.resolution"):
        load_runs(["qkv.resolution=neurons"], project_root=PROJECT_ROOT)


def test_resources_grow_with_heads():
    from conftest import PROJECT_ROOT
    from laminae.config import load_runs

    (run,) = load_runs(["model=gpt2-large", "experiments=[qkv]"], project_root=PROJECT_ROOT)
    cfg = copy.deepcopy(run.config)
    shape = JobShape(n_layers=36, d_model=1280, n_rows=34, bytes_per_value=4, n_sites=3)
    layers = {stage: qkv_resources(stage, shape, cfg) for stage in ("analysis", "plot")}
    cfg["qkv"]["resolution"] = "heads"
    heads = {stage: qkv_resources(stage, shape, cfg) for stage in ("analysis", "plot")}
    assert heads["analysis"]["mem_mb"] > layers["analysis"]["mem_mb"] + 100
    assert heads["analysis"]["runtime"] > layers["analysis"]["runtime"]
    assert heads["plot"]["mem_mb"] > layers["plot"]["mem_mb"]


# -------------------------------------------------------------------------------- the figure
@pytest.mark.parametrize("form", ["ratio", "difference"])
def test_heads_figure_panels_scales_and_marks(tmp_path, form):
    acts, labels = gqa_inputs(seed=4, strength=0.5)     # weak: some heads pass p < 0.05 but not q < 0.05
    res = analyse_qkv_heads(acts, labels, CATEGORIES, LAYOUT, selectivity=form, n_permutations=99, n_bootstrap=9)
    table = HeadsTable.read(write_heads_table(res.rows, tmp_path))
    _, _, context = stages(selectivity=form)
    fig, axes = plot_heads(table, context)
    assert list(axes["selectivity"]) == ["q", "k", "v"] and list(axes["rsa"]) == ["q-k", "q-v", "k-v"]
    for name, n_heads in (("q", N_HEADS), ("k", N_KV), ("v", N_KV), ("q-k", N_HEADS), ("k-v", N_KV)):
        ax = axes["selectivity" if "-" not in name else "rsa"][name]
        assert ax.images[0].get_array().shape == (N_LAYERS, n_heads), name
    # Dots exactly where q < 0.05, from the table's p-values by scipy (one family per panel).
    some, differs = False, False
    for c in "qkv":
        p = table.get("selectivity", c, "p_value")
        q = scipy.stats.false_discovery_control(p.ravel(), method="bh").reshape(p.shape)
        dots = axes["selectivity"][c].get_lines()[-1]
        drawn = set(zip(np.asarray(dots.get_ydata()).tolist(), np.asarray(dots.get_xdata()).tolist()))
        assert drawn == set(zip(*np.nonzero(q < 0.05))), c
        some |= bool(drawn)
        differs |= bool(((p < 0.05) != (q < 0.05)).any())
    assert some and differs, "the data must separate q from p, or dots by p would pass"
    # One scale per row, centred on no selectivity (1 in log for the ratio, 0 for the difference) and on 0 for RSA.
    norms = {(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in axes["selectivity"].values()}
    assert len(norms) == 1
    low, high = norms.pop()
    assert (low * high == pytest.approx(1.0)) if form == "ratio" else (low == pytest.approx(-high))
    rsa_norm = axes["rsa"]["q-k"].images[0].norm
    assert rsa_norm.vmin == pytest.approx(-rsa_norm.vmax) and rsa_norm.vmax <= 1
    assert "selectivity" in axes["colorbars"]["selectivity"].ax.get_ylabel()
    assert "RSA" in axes["colorbars"]["rsa"].ax.get_ylabel()
    legend = " ".join(t.get_text() for t in axes["legend"].get_texts())
    assert "q < 0.05" in legend and "Benjamini-Hochberg" in legend and "⌊h/2⌋" in legend



def test_no_resamples_give_nan_and_an_unmarked_figure(tmp_path):
    acts, labels = gqa_inputs()
    res = analyse_qkv_heads(acts, labels, CATEGORIES, LAYOUT, n_permutations=0, n_bootstrap=0)
    for c in "qkv":
        assert np.isnan(res.selectivity[c].p_value).all() and np.isnan(res.q_value[c]).all()
        assert np.isfinite(res.selectivity[c].observed.index).all()
    assert all(np.isnan(low).all() and np.isfinite(res.rsa[p]).all() for p, (low, _) in res.rsa_ci.items())
    table = HeadsTable.read(write_heads_table(res.rows, tmp_path))
    _, _, context = stages(n_permutations=0, n_bootstrap=0)
    _, axes = plot_heads(table, context)
    assert not any(grid.any() for grid in axes["significant"].values())
    assert "no permutation test" in " ".join(t.get_text() for t in axes["legend"].get_texts())


def test_ratio_cells_without_a_log_scale_place():
    """between <= 0: grey (not interpretable); ratio <= 0 with between > 0 (within < 0): the
    scale's lowest colour, not grey, and the colour bar extends below."""
    ratio = np.array([[1.2, 0.9, -0.5, 3.0]])
    between = np.array([[0.3, 0.3, 0.2, -0.1]])
    grids = {("selectivity", "q"): {"value": ratio, "q_value": np.full((1, 4), np.nan)},
             ("between_mean", "q"): {"value": between}}
    table = HeadsTable(n_layers=1, grids=grids)
    _, axes = plot_heads(table, stages()[2])
    image = axes["selectivity"]["q"].images[0]
    shown = np.ma.getdata(image.get_array()).astype(float)
    assert np.isnan(shown[0, 3]), "between-mean <= 0 must be grey"
    assert shown[0, 2] < image.norm.vmin and image.norm(shown[0, 2]) < 0   # drawn in the under colour
    assert axes["colorbars"]["selectivity"].extend in ("min", "both")
    legend = " ".join(t.get_text() for t in axes["legend"].get_texts())
    assert "between-category mean ≤ 0" in legend
