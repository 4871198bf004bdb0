"""Experiment-1 stage glue and figures, end to end on a small synthetic activation store:
store -> the analysis stage -> qkv_laminar.tsv + similarity.h5 -> the figure stage."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import scipy.stats
import yaml

from laminae.errors import ConfigError, InputFileError
from laminae.experiments.qkv.analysis import category_labels, read_qkv_table
from laminae.experiments.qkv.figures import (
    LaminarTable,
    SimilarityData,
    plot_laminar,
    plot_similarity,
    resolve_similarity_layers,
)
from laminae.experiments.qkv.plotting import nice_log_ticks
from laminae.registry import discover
from laminae.stages.analysis import run_analysis
from laminae.stages.figures import run_figures
from laminae.store import ActivationWriter

EXPERIMENT = discover()["qkv"]

EXTRACT_HASH = "feedc0ffee"
N_LAYERS = 5
WIDTH = 24
# Interleaved on purpose (rows are not grouped by category), so the figure must sort them;
# first appearance gives the category order space, fruit, furniture.
WORDS = [("sun", "space"), ("apple", "fruit"), ("chair", "furniture"), ("moon", "space"), ("pear", "fruit"),
         ("table", "furniture"), ("star", "space"), ("plum", "fruit"), ("sofa", "furniture"), ("comet", "space"),
         ("lemon", "fruit"), ("desk", "furniture"), ("bed", "furniture")]
CATEGORY_ORDER = ["space", "fruit", "furniture"]
QKV = {"components": ["q", "k", "v"], "selectivity": "ratio", "rsa_method": "pearson", "n_permutations": 199,
       "n_bootstrap": 99, "confidence": 0.95, "zscore": False, "seed": 0}
CONTEXT = {"model": "synthetic", "random_weights": True, "stimuli": "synthetic_3cat", "experiment": "qkv",
           "template": "The next word is {word}", "position": "target_last", "analysis": QKV}


def synthetic_activations(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
    """(n_layers, n_items, WIDTH) per component: shared direction + category prototype scaled by a
    per-layer strength + noise. Q and K lose category signal with depth, V has a 'smile' (none at the middle layer)."""
    strength = {"q": np.linspace(2.0, 0.2, N_LAYERS), "k": np.linspace(1.8, 0.1, N_LAYERS),
                "v": 1.5 * (np.linspace(-1, 1, N_LAYERS) ** 2)}
    out = {}
    for component, scale in strength.items():
        shared = 2.0 * rng.normal(size=(N_LAYERS, 1, WIDTH))
        prototypes = rng.normal(size=(N_LAYERS, labels.max() + 1, WIDTH))
        noise = rng.normal(size=(N_LAYERS, labels.size, WIDTH))
        out[component] = (shared + scale[:, None, None] * prototypes[:, labels] + noise).astype(np.float32)
    return out


def write_synthetic_store(directory, seed: int = 0, stage_hash: str = EXTRACT_HASH):
    _, labels = category_labels([category for _, category in WORDS])
    data = synthetic_activations(np.random.default_rng(seed), labels)
    rows = [{"word": word, "category": category, "prompt": f"The next word is {word}", "position": 4,
             "n_tokens": 5, "token_id": 100 + i, "token": f" {word}"} for i, (word, category) in enumerate(WORDS)]
    attrs = {"stage_hash": stage_hash, "model_id": "synthetic", "random_weights": True}
    with ActivationWriter(directory, N_LAYERS, len(WORDS), attrs, config_text="stage: qkv.extract\n") as writer:
        writer.write(0, data)
        writer.set_rows(rows, ["word", "category", "prompt", "position", "n_tokens", "token_id", "token"])
    return data


def run_qkv_metrics(stage: dict, activations, metrics):
    return run_analysis(EXPERIMENT, stage, activations, metrics)


def make_qkv_figures(stage: dict, context: dict, metrics, figures):
    return run_figures(EXPERIMENT, stage, context, metrics, figures)


def analysis_stage(**qkv) -> dict:
    config = {"qkv": {**QKV, **qkv}, "stage": "qkv.analysis", "version": 1, "upstream": EXTRACT_HASH}
    return {"stage": "qkv.analysis", "hash": "a1a1a1a1a1", "config": config}


def plot_stage(layers=("first", "middle", "last"), dpi=60) -> dict:
    config = {"plot": {"dpi": dpi}, "qkv": {"plot": {"similarity_layers": list(layers)}}, "stage": "qkv.plot",
              "version": 1, "upstream": "a1a1a1a1a1"}
    return {"stage": "qkv.plot", "hash": "b2b2b2b2b2", "config": config}


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    root = tmp_path_factory.mktemp("qkv")
    write_synthetic_store(root / "activations")
    paths = run_qkv_metrics(analysis_stage(), root / "activations", root / "metrics")
    return root, paths


def test_category_labels_follow_first_appearance():
    names, codes = category_labels(["b", "a", "b", "c", "a"])
    assert names == ["b", "a", "c"] and codes.tolist() == [0, 1, 0, 2, 1]


def test_metrics_table_is_complete(metrics):
    root, (table, similarity, config) = metrics
    assert [p.name for p in (table, similarity, config)] == ["qkv_laminar.tsv", "similarity.h5", "config.yaml"]
    rows = read_qkv_table(table)
    keys = {(r.layer, r.component, r.metric) for r in rows}
    assert len(keys) == len(rows), "duplicate (layer, component, metric) rows"
    per_component = ["selectivity", "selectivity_null", "within_mean", "between_mean",
                     *(f"selectivity:{c}" for c in CATEGORY_ORDER)]
    for layer in range(N_LAYERS):
        for component in QKV["components"]:
            for metric in per_component:
                assert (layer, component, metric) in keys, (layer, component, metric)
        for pair in ("q-k", "q-v", "k-v"):
            assert (layer, pair, "rsa") in keys
    for row in rows:
        if row.metric == "selectivity" or row.metric.startswith("selectivity:"):
            assert 0 < row.p_value <= 1, row
            assert row.p_value >= 1 / (QKV["n_permutations"] + 1)
        if row.metric == "rsa":
            assert row.ci_low <= row.value <= row.ci_high, row
            assert -1 <= row.ci_low and row.ci_high <= 1
        if row.metric == "selectivity_null":
            assert row.ci_low < row.ci_high
    # The synthetic Q is strongly category-selective in its first layer: the test must see it.
    first_q = next(r for r in rows if (r.layer, r.component, r.metric) == (0, "q", "selectivity"))
    assert first_q.value > 1 and first_q.p_value < 0.05


def test_metrics_provenance_and_config(metrics):
    root, (_, similarity, config) = metrics
    record = yaml.safe_load(config.read_text())
    assert record["stage"] == "qkv.analysis" and record["hash"] == "a1a1a1a1a1"
    assert record["config"]["qkv"]["n_permutations"] == QKV["n_permutations"]
    with h5py.File(similarity) as h5:
        assert h5.attrs["stage_hash"] == "a1a1a1a1a1" and h5.attrs["activations_stage_hash"] == EXTRACT_HASH
        assert h5.attrs["activations_model_id"] == "synthetic"
        assert [c.decode() for c in h5["categories"][()]] == CATEGORY_ORDER
        assert [w.decode() for w in h5["words"][()]] == [w for w, _ in WORDS]
        assert h5["q"].shape == (N_LAYERS, len(WORDS), len(WORDS))


def test_store_from_another_config_is_refused(tmp_path):
    write_synthetic_store(tmp_path / "activations", stage_hash="0123456789")
    with pytest.raises(InputFileError, match="another config"):
        run_qkv_metrics(analysis_stage(), tmp_path / "activations", tmp_path / "metrics")
    assert not (tmp_path / "metrics").exists()


def test_figures_written(metrics, tmp_path):
    root, (table, similarity, _) = metrics
    written = make_qkv_figures(plot_stage(), CONTEXT, table.parent, tmp_path / "figures")
    names = sorted(p.name for p in written)
    assert names == ["config.yaml", "qkv_laminar.pdf", "qkv_laminar.png", "qkv_similarity.pdf", "qkv_similarity.png"]
    for path in written:
        assert path.stat().st_size > (1000 if path.suffix != ".yaml" else 10), path
    assert (tmp_path / "figures" / "qkv_laminar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "figures" / "qkv_similarity.pdf").read_bytes()[:5] == b"%PDF-"
    assert yaml.safe_load((tmp_path / "figures" / "config.yaml").read_text())["config"]["plot"]["dpi"] == 60


def test_laminar_panels(metrics):
    _, (table, _, _) = metrics
    fig, axes = plot_laminar(LaminarTable.read(table), CONTEXT)
    rsa_labels = axes["rsa"].get_legend().get_texts()
    assert [t.get_text() for t in rsa_labels][:3] == ["Q–K", "Q–V", "K–V"]
    legend = [t.get_text() for t in axes["legend"].get_texts()]
    assert {"Q", "K", "V"} <= set(legend)
    assert any("q < 0.05" in text and "Benjamini-Hochberg" in text for text in legend)
    assert "no selectivity (= 1)" in legend
    assert [ax.get_title() for ax in axes["category"]] == CATEGORY_ORDER
    # The no-selectivity line sits at 1 for the ratio form and 0 for the difference form.
    assert any(np.allclose(line.get_ydata(), 1.0) for line in axes["selectivity"].get_lines())
    fig_diff, axes_diff = plot_laminar(LaminarTable.read(table), CONTEXT, {**QKV, "selectivity": "difference"})
    assert "no selectivity (= 0)" in [t.get_text() for t in axes_diff["legend"].get_texts()]
    assert "synthetic (RANDOM WEIGHTS)" in fig._suptitle.get_text()
    # Ratios (all positive here) go on a log axis; differences stay linear.
    assert axes["log_scale"] and axes["selectivity"].get_yscale() == "log"
    assert not axes_diff["log_scale"] and axes_diff["selectivity"].get_yscale() == "linear"


def test_significance_markers_match_table(metrics):
    _, (table_path, _, _) = metrics
    table = LaminarTable.read(table_path)
    _, axes = plot_laminar(table, CONTEXT)
    marked = {}
    for line in axes["selectivity"].get_lines():
        if line.get_linestyle() == "None" and line.get_marker() == "o":
            marked[line.get_color()] = set(np.asarray(line.get_xdata()).tolist())
    # Markers follow the q-values, recomputed here with scipy over the figure's family (every
    # component at every layer), not the stored column.
    p = np.stack([table.get("selectivity", c, "p_value") for c in ("q", "k", "v")])
    q = scipy.stats.false_discovery_control(p.ravel(), method="bh").reshape(p.shape)
    assert ((p < 0.05) != (q < 0.05)).any(), "p and q mark the same layers here: the test could not tell them apart"
    for k, (component, colour) in enumerate((("q", "#0072B2"), ("k", "#E69F00"), ("v", "#009E73"))):
        assert marked[colour] == set(np.flatnonzero(q[k] < 0.05).tolist()), component
    assert N_LAYERS // 2 not in marked["#009E73"], "V has no category signal in its middle layer"


def test_ratio_with_nonpositive_between_mean_is_flagged(tmp_path):
    # z-scored cosines of clustered items have a negative between-category mean: the ratio flips sign.
    write_synthetic_store(tmp_path / "activations")
    run_qkv_metrics(analysis_stage(zscore=True, n_permutations=19, n_bootstrap=9), tmp_path / "activations",
                    tmp_path / "metrics")
    table = LaminarTable.read(tmp_path / "metrics" / "qkv_laminar.tsv")
    assert (table.get("between_mean", "q") <= 0).any()
    _, axes = plot_laminar(table, CONTEXT)
    assert not axes["log_scale"]
    assert "between-mean ≤ 0: ratio not interpretable" in [t.get_text() for t in axes["legend"].get_texts()]
    assert any(patch.get_hatch() for patch in axes["selectivity"].patches)


def test_nice_log_ticks():
    assert nice_log_ticks(0.9, 5.0) == [1.0, 1.5, 2.0, 3.0, 5.0]
    assert nice_log_ticks(0.5, 40.0) == [0.5, 1.0, 2.0, 5.0, 10.0, 20.0]
    assert nice_log_ticks(0.95, 1.3) == [1.0, 1.1, 1.2, 1.3]


def test_similarity_words_sorted_by_category(metrics):
    _, (_, similarity, _) = metrics
    data = SimilarityData.read(similarity)
    fig, axes = plot_similarity(data, ["first", -1], CONTEXT)
    assert axes.shape == (3, 2)
    expected = [w for category in CATEGORY_ORDER for w, c in WORDS if c == category]
    assert expected != [w for w, _ in WORDS]           # the store is interleaved, so sorting matters
    fig.canvas.draw()
    assert [t.get_text() for t in axes[0, 0].get_yticklabels()] == expected
    assert [t.get_text() for t in axes[-1, 0].get_xticklabels()] == expected
    assert [ax.get_title() for ax in axes[0]] == ["layer 0 (first)", f"layer {N_LAYERS - 1}"]
    # The matrix drawn is the stored one, reordered (diagonal blanked).
    order = np.argsort(data.labels, kind="stable")
    shown = axes[1, 1].images[0].get_array()
    stored = data.matrices["k"][N_LAYERS - 1][np.ix_(order, order)]
    off = ~np.eye(len(WORDS), dtype=bool)
    np.testing.assert_allclose(np.asarray(shown)[off], stored[off])
    # One colour scale, centred on 0.
    norms = {(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in axes.ravel()}
    assert len(norms) == 1 and math.isclose(-next(iter(norms))[0], next(iter(norms))[1])


@pytest.mark.parametrize("layers", [[0, N_LAYERS], [-(N_LAYERS + 1)], ["deepest"]])
def test_bad_similarity_layer_fails_before_writing(metrics, tmp_path, layers):
    _, (table, similarity, _) = metrics
    with pytest.raises(ConfigError, match="qkv.plot.similarity_layers"):
        make_qkv_figures(plot_stage(layers), CONTEXT, table.parent, tmp_path / "figures")
    assert not (tmp_path / "figures").exists()


def test_resolve_similarity_layers_drops_duplicates():
    assert resolve_similarity_layers(["first", 0, "last", -1, "middle"], 5) == [
        (0, "layer 0 (first)"), (4, "layer 4 (last)"), (2, "layer 2 (middle)")]
