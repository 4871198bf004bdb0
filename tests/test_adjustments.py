"""Experiment 2: cosine(attn_out, mlp_out) and norms per layer, against naive loops; streaming
equals one-shot; exclude_first_token; upstream hash check; figures; the GPT-2 residual identity
on stored activations of a real (tiny, random) model."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.stats
import yaml

from laminae.errors import ConfigError, InputFileError
from laminae.experiments.adjustments.analysis import (TABLE_COLUMNS, AdjustmentAccumulator, compute_adjustments,
                                                      read_adjustment_table, read_cosines)
from laminae.metrics.moments import RunningMoments
from laminae.registry import discover
from laminae.stages.analysis import run_analysis
from laminae.stages.figures import run_figures
from laminae.store import ActivationStore, ActivationWriter, read_tsv

EXPERIMENT = discover()["adjustments"]

UPSTREAM = "feedc0ffee"
SITES = ("attn_out", "mlp_out", "resid_pre", "resid_post")
WINDOWS = (5, 7, 5)          # 17 rows: chunk sizes 3, 4 and 5 do not divide it
N_LAYERS, WIDTH = 3, 6
CONTEXT = {"model": "tiny-test", "random_weights": True, "corpus": "toy", "experiment": "adjustments",
           "analysis": {"exclude_first_token": False}}


def corpus_rows(windows=WINDOWS) -> list[dict]:
    return [{"document": "doc.txt", "window": w, "position": p, "token_id": 100 + p, "token": f"t{p}"}
            for w, length in enumerate(windows) for p in range(length)]


def write_corpus_store(out: Path, data: dict[str, np.ndarray], windows=WINDOWS, stage_hash=UPSTREAM,
                       batch_rows=4) -> Path:
    n_layers, n_rows = data["attn_out"].shape[:2]
    with ActivationWriter(out, n_layers, n_rows, {"stage_hash": stage_hash, "model_id": "test"},
                          config_text="stage: adjustments.extract\n") as writer:
        for start in range(0, n_rows, batch_rows):
            writer.write(start, {site: values[:, start : start + batch_rows] for site, values in data.items()})
        writer.set_rows(corpus_rows(windows), ["document", "window", "position", "token_id", "token"])
    return out


def run_adjustment_metrics(stage: dict, activations: Path, metrics: Path, chunk_rows: int | None = None) -> list[Path]:
    return run_analysis(EXPERIMENT, stage, activations, metrics, chunk_rows=chunk_rows)


def stage_record(exclude_first_token: bool = False, upstream: str = UPSTREAM) -> dict:
    config = {"adjustments": {"exclude_first_token": exclude_first_token}, "stage": "adjustments.analysis",
              "version": 1, "upstream": upstream}
    return {"stage": "adjustments.analysis", "hash": "a1b2c3d4e5", "config": config}


def plot_stage(error_bar: str = "sem", bins: int = 20) -> dict:
    config = {"plot": {"dpi": 40}, "adjustments": {"plot": {"error_bar": error_bar, "bins": bins}},
              "stage": "adjustments.plot", "version": 1, "upstream": "a1b2c3d4e5"}
    return {"stage": "adjustments.plot", "hash": "0123456789", "config": config}


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    """Random activations (n_layers, 17, width) with float32 storage, a shared component between
    attn and mlp (so cosines are not all ~0), and two zero vectors (undefined cosines)."""
    rng = np.random.default_rng(7)
    n_rows = sum(WINDOWS)
    shared = rng.normal(size=(N_LAYERS, n_rows, WIDTH))
    attn = shared + rng.normal(size=shared.shape)
    mlp = 0.5 * shared + rng.normal(size=shared.shape) + 0.3
    attn[1, 3] = 0.0          # layer 1, token 3: attention adjustment is zero
    mlp[2, 9] = 0.0           # layer 2, token 9: MLP adjustment is zero
    pre = 10 * rng.normal(size=shared.shape) + 2.0
    return {"attn_out": attn.astype(np.float32), "mlp_out": mlp.astype(np.float32),
            "resid_pre": pre.astype(np.float32), "resid_post": (pre + attn + mlp).astype(np.float32)}


def naive(data: dict[str, np.ndarray], keep: list[bool]) -> dict[str, list[dict]]:
    """Per-layer statistics with plain Python loops over tokens (statistics + scipy.stats.sem)."""
    out: dict[str, list[dict]] = {"cosine": [], "cosine_median": [], **{f"norm_{s}": [] for s in SITES}}
    for layer in range(N_LAYERS):
        cosines, norms = [], {s: [] for s in SITES}
        for token in range(len(keep)):
            if not keep[token]:
                continue
            vectors = {s: [float(x) for x in data[s][layer, token]] for s in SITES}
            for s in SITES:
                norms[s].append(math.sqrt(sum(x * x for x in vectors[s])))
            a, m = vectors["attn_out"], vectors["mlp_out"]
            na, nm = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in m))
            if na > 0 and nm > 0:
                cosines.append(sum(x * y for x, y in zip(a, m)) / (na * nm))
        for name, values in [("cosine", cosines), *((f"norm_{s}", norms[s]) for s in SITES)]:
            out[name].append({"value": statistics.fmean(values), "sd": statistics.stdev(values),
                              "sem": float(scipy.stats.sem(values)), "n": len(values)})
        out["cosine_median"].append({"value": statistics.median(cosines), "n": len(cosines)})
    return out


def table_by_metric(path: Path) -> dict[str, list[dict]]:
    rows = read_tsv(path)
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["metric"], []).append(row)
    return out


@pytest.mark.parametrize("chunk_rows", [4, 5])
def test_stage_matches_naive_loops(tmp_path, data, chunk_rows):
    store = write_corpus_store(tmp_path / "activations", data)
    metrics = tmp_path / "metrics"
    run_adjustment_metrics(stage_record(), store, metrics, chunk_rows=chunk_rows)
    assert (metrics / "adjustments.tsv").read_text().splitlines()[0].split("\t") == list(TABLE_COLUMNS)
    table = table_by_metric(metrics / "adjustments.tsv")
    expected = naive(data, [True] * sum(WINDOWS))
    assert list(table) == ["cosine", "cosine_median", *(f"norm_{s}" for s in SITES)]
    for metric, per_layer in expected.items():
        assert [int(r["layer"]) for r in table[metric]] == list(range(N_LAYERS))
        for row, want in zip(table[metric], per_layer):
            assert int(row["n"]) == want["n"]
            assert float(row["value"]) == pytest.approx(want["value"], rel=1e-12, abs=1e-14)
            if metric == "cosine_median":
                assert row["sd"] == row["sem"] == ""          # value only
            else:
                assert float(row["sd"]) == pytest.approx(want["sd"], rel=1e-10)
                assert float(row["sem"]) == pytest.approx(want["sem"], rel=1e-10)
    # the two zero vectors: undefined cosine, left out of n, kept as NaN in the .h5
    assert [r["n"] for r in table["cosine"]] == ["17", "16", "16"]
    cosine, included, attrs = read_cosines(metrics / "adjustment_cosine.h5")
    assert cosine.shape == included.shape == (N_LAYERS, 17)
    assert np.isnan(cosine[1, 3]) and np.isnan(cosine[2, 9]) and np.isfinite(np.delete(cosine[1], 3)).all()
    assert included.sum() == 17 + 16 + 16 and not included[1, 3] and not included[2, 9]
    assert attrs["stage_hash"] == "a1b2c3d4e5" and attrs["activations_stage_hash"] == UPSTREAM
    a, m = data["attn_out"][0, 5].astype(float), data["mlp_out"][0, 5].astype(float)
    assert cosine[0, 5] == pytest.approx(a @ m / np.linalg.norm(a) / np.linalg.norm(m), rel=1e-12)
    with h5py.File(metrics / "adjustment_cosine.h5") as handle:
        np.testing.assert_array_equal(handle["window"][()], [r["window"] for r in corpus_rows()])
        np.testing.assert_array_equal(handle["position"][()], [r["position"] for r in corpus_rows()])
        np.testing.assert_array_equal(handle["n_undefined"][()], [0, 1, 1])
        assert handle["cosine"].dtype == np.float64 and "config_yaml" in handle.attrs
    record = yaml.safe_load((metrics / "config.yaml").read_text())
    assert record["hash"] == "a1b2c3d4e5" and record["config"]["upstream"] == UPSTREAM
    assert sorted(p.name for p in metrics.iterdir()) == ["adjustment_cosine.h5", "adjustments.tsv", "config.yaml"]


def test_streaming_equals_one_shot(tmp_path, data):
    one_shot = compute_adjustments(*(data[s] for s in SITES))
    accumulator = AdjustmentAccumulator(N_LAYERS)
    for start, stop in [(0, 1), (1, 7), (7, 9), (9, 17)]:          # uneven chunks, one of 1 row
        chunk = accumulator.update(*(data[s][:, start:stop] for s in SITES))
        assert chunk.cosine.shape == (N_LAYERS, stop - start)
    streamed = accumulator.finish()
    write_corpus_store(tmp_path / "activations", data)
    run_adjustment_metrics(stage_record(), tmp_path / "activations", tmp_path / "metrics", chunk_rows=3)
    from_stage = read_adjustment_table(tmp_path / "metrics" / "adjustments.tsv")
    assert list(streamed.stats) == list(one_shot.stats)
    for metric, want in one_shot.stats.items():
        for got in (streamed.stats[metric], from_stage[metric]):
            np.testing.assert_array_equal(got.n, want.n)
            for field in ("mean", "sd", "sem"):
                np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(streamed.cosine_median, one_shot.cosine_median, rtol=1e-12)
    np.testing.assert_allclose(from_stage["cosine_median"].mean, one_shot.cosine_median, rtol=1e-12)
    np.testing.assert_array_equal(streamed.cosine, one_shot.cosine)
    np.testing.assert_array_equal(streamed.included, one_shot.included)


def test_running_moments_are_stable_for_large_offsets():
    rng = np.random.default_rng(0)
    values = 1e9 + rng.normal(size=(2, 1001))        # naive sum of squares loses every digit here
    moments = RunningMoments(2)
    for start in range(0, 1001, 97):
        moments.update(values[:, start : start + 97], np.ones((2, values[:, start : start + 97].shape[1]), bool))
    stats = moments.stats()
    np.testing.assert_allclose(stats.sd, values.std(axis=1, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(stats.mean, values.mean(axis=1), rtol=1e-15)


def test_exclude_first_token_drops_one_row_per_window(tmp_path, data):
    store = write_corpus_store(tmp_path / "activations", data)
    run_adjustment_metrics(stage_record(False), store, tmp_path / "all", chunk_rows=4)
    run_adjustment_metrics(stage_record(True), store, tmp_path / "excl", chunk_rows=4)
    all_rows, excl = (read_adjustment_table(tmp_path / d / "adjustments.tsv") for d in ("all", "excl"))
    for metric in all_rows:
        np.testing.assert_array_equal(all_rows[metric].n - excl[metric].n, len(WINDOWS))
    keep = [r["position"] != 0 for r in corpus_rows()]
    want = naive(data, keep)
    np.testing.assert_allclose(excl["cosine"].mean, [r["value"] for r in want["cosine"]], rtol=1e-12)
    np.testing.assert_allclose(excl["norm_resid_post"].sem, [r["sem"] for r in want["norm_resid_post"]], rtol=1e-10)
    cosine, included, attrs = read_cosines(tmp_path / "excl" / "adjustment_cosine.h5")
    assert not included[:, np.logical_not(keep)].any() and np.isfinite(cosine[0]).all()   # stored, not counted
    assert bool(attrs["exclude_first_token"]) and int(attrs["n_windows"]) == len(WINDOWS)


def test_store_from_another_config_is_refused(tmp_path, data):
    store = write_corpus_store(tmp_path / "activations", data, stage_hash="0000000000")
    with pytest.raises(InputFileError, match="does not match") as error:
        run_adjustment_metrics(stage_record(upstream=UPSTREAM), store, tmp_path / "metrics")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "metrics").exists()


def test_store_without_corpus_rows_is_refused(tmp_path, data):
    n_rows = sum(WINDOWS)
    with ActivationWriter(tmp_path / "act", N_LAYERS, n_rows, {"stage_hash": UPSTREAM}) as writer:
        writer.write(0, data)
        writer.set_rows([{"word": "w", "category": "c"}] * n_rows, ["word", "category"])
    with pytest.raises(InputFileError, match="'window'"):
        run_adjustment_metrics(stage_record(), tmp_path / "act", tmp_path / "metrics")


# ------------------------------------------------------------------------------------ figures
@pytest.fixture
def metrics_dir(tmp_path, data) -> Path:
    data = dict(data, resid_pre=data["resid_pre"] * 1000, resid_post=data["resid_post"] * 1000)  # > 2 decades
    write_corpus_store(tmp_path / "activations", data)
    run_adjustment_metrics(stage_record(), tmp_path / "activations", tmp_path / "metrics", chunk_rows=5)
    return tmp_path / "metrics"


def _error_bar_half_lengths(ax) -> np.ndarray:
    from matplotlib.container import ErrorbarContainer

    (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = container.lines[2][0].get_segments()
    return np.array([(seg[1][1] - seg[0][1]) / 2 for seg in segments])


@pytest.mark.parametrize("error_bar", ["sem", "sd"])
def test_laminar_error_bars_follow_the_setting(metrics_dir, error_bar):
    import matplotlib.pyplot as plt

    from laminae.experiments.adjustments.figures import plot_laminar

    table = read_adjustment_table(metrics_dir / "adjustments.tsv")
    fig, ax = plot_laminar(table, CONTEXT, error_bar=error_bar)
    want = getattr(table["cosine"], error_bar)
    other = table["cosine"].sd if error_bar == "sem" else table["cosine"].sem
    np.testing.assert_allclose(_error_bar_half_lengths(ax), want, rtol=1e-9)
    assert not np.allclose(_error_bar_half_lengths(ax), other)
    assert error_bar.upper() in ax.get_ylabel() and {"sem": "SD", "sd": "SEM"}[error_bar] not in ax.get_ylabel()
    assert "n = 16-17 tokens \u00d7 3 layers" in ax.get_title() and "tiny-test" in fig.texts[0].get_text()
    assert any(line.get_ydata()[0] == 0 for line in ax.get_lines())      # the zero line
    plt.close(fig)


def test_make_figures_writes_png_pdf_and_config(metrics_dir, tmp_path):
    from laminae.experiments.adjustments.figures import plot_histogram, plot_norms

    figures = tmp_path / "figures"
    written = run_figures(EXPERIMENT, plot_stage("sd", bins=12), CONTEXT, metrics_dir, figures)
    names = sorted(p.name for p in figures.iterdir())
    assert names == sorted(["adjustments_laminar.png", "adjustments_laminar.pdf", "adjustments_hist.png",
                            "adjustments_hist.pdf", "adjustments_norms.png", "adjustments_norms.pdf", "config.yaml"])
    assert sorted(p.name for p in written) == names
    for path in figures.glob("adjustments_*"):
        assert path.stat().st_size > 5000, path
    assert (figures / "adjustments_laminar.png").read_bytes()[:4] == b"\x89PNG"
    assert (figures / "adjustments_hist.pdf").read_bytes()[:4] == b"%PDF"
    assert yaml.safe_load((figures / "config.yaml").read_text())["config"]["adjustments"]["plot"]["error_bar"] == "sd"

    cosine, included, _ = read_cosines(metrics_dir / "adjustment_cosine.h5")
    fig, ax = plot_histogram(cosine, included, CONTEXT, bins=12)
    assert len(ax.patches) == 12 and sum(p.get_height() for p in ax.patches) == included.sum() == 49
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    values = cosine[included]
    assert labels == [f"mean = {values.mean():.3f}", f"median = {np.median(values):.3f}"]
    fig, ax = plot_norms(read_adjustment_table(metrics_dir / "adjustments.tsv"), CONTEXT)
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 4


def test_bad_plot_setting_fails_before_writing(metrics_dir, tmp_path):
    with pytest.raises(ConfigError, match="adjustments.plot.error_bar"):
        run_figures(EXPERIMENT, plot_stage("ci"), CONTEXT, metrics_dir, tmp_path / "figures")
    assert not (tmp_path / "figures").exists()


# ----------------------------------------------------------------------------- GPT-2 identity
def test_gpt2_stored_adjustments_sum_to_residual_output(tiny_gpt2, tmp_path):
    """Extraction of a short corpus through the real store: for GPT-2 (pre-LayerNorm) the stored
    resid_pre + attn_out + mlp_out equals the stored resid_post at every layer; then the stage
    runs on that store and exclude_first_token drops one row per window."""
    from laminae.inputs import corpus
    from laminae.capture import run_plan

    doc = tmp_path / "corpus.txt"
    doc.write_text("Friedrich Nietzsche was a German philosopher whose work on morality, culture and "
                   "the will to power has had a profound influence on modern thought.\n")
    config = {"corpus": {"path": str(doc), "windowing": True, "window_tokens": 12}}
    plan = corpus.plan(config, tiny_gpt2.tokenizer, tiny_gpt2.info.max_positions, tmp_path)
    n_windows = len(plan.sequences)
    assert n_windows >= 2 and plan.n_rows > n_windows
    out = tmp_path / "activations"
    with ActivationWriter(out, tiny_gpt2.info.n_layers, plan.n_rows, {"stage_hash": UPSTREAM}) as writer:
        run_plan(tiny_gpt2, plan, batch_size=2, writer=writer, sites=SITES)
        writer.set_rows(plan.rows, plan.columns)
    store = ActivationStore(out, expected_hash=UPSTREAM)
    sums = store.read("resid_pre") + store.read("attn_out") + store.read("mlp_out")
    post = store.read("resid_post")
    assert post.shape == (tiny_gpt2.info.n_layers, plan.n_rows, tiny_gpt2.info.d_model)
    for layer in range(store.n_layers):
        np.testing.assert_allclose(sums[layer], post[layer], rtol=0, atol=1e-5, err_msg=f"layer {layer}")

    run_adjustment_metrics(stage_record(True), out, tmp_path / "metrics", chunk_rows=7)
    table = read_adjustment_table(tmp_path / "metrics" / "adjustments.tsv")
    np.testing.assert_array_equal(table["norm_resid_post"].n, plan.n_rows - n_windows)
    assert np.isfinite(table["cosine"].mean).all() and (np.abs(table["cosine"].mean) <= 1).all()
