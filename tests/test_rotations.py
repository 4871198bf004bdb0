"""The `rotations` experiment: every angle and statistic against naive Python loops (math.acos,
statistics, scipy.stats.sem); streaming in uneven chunks equals one shot; consecutive pairs never
cross windows and each window has one first-token pair; undefined angles are left out and
counted; a store of another config is refused; figures and the sweep overlay; the reducer run
during extraction equals the two-stage pipeline on a tiny random GPT-2."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.stats
import yaml

from laminae.config import load_runs
from laminae.errors import ConfigError, InputFileError
from laminae.experiment import ReducerJob
from laminae.experiments.rotations.analysis import RotationReducer
from laminae.experiments.rotations.angles import consecutive_pairs
from laminae.experiments.rotations.bands import band_count, depth_bands
from laminae.experiments.rotations.compare import plot_rotation_comparison
from laminae.experiments.rotations.figures import band_histograms, plot_histograms, plot_laminar
from laminae.experiments.rotations.outputs import METRICS, TABLE_COLUMNS, open_angles, read_rotation_table
from laminae.plots.style import plt
from laminae.registry import discover
from laminae.stages.analysis import run_analysis
from laminae.stages.extract import extract
from laminae.stages.figures import run_figures
from laminae.store import ActivationStore, ActivationWriter, RowTable, read_tsv

EXPERIMENT = discover()["rotations"]
ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = "feedc0ffee"
SITES = ("attn_out", "mlp_out", "resid_pre", "resid_post")
WINDOWS = (5, 7, 1, 6)        # 19 rows (prime: no chunk size divides it); a 1-token window has no pair
N_LAYERS, WIDTH = 3, 6
N_ROWS = sum(WINDOWS)
CONTEXT = {"model": "tiny-test", "random_weights": True, "corpus": "toy", "experiment": "rotations",
           "analysis": {"during_extraction": False}}


def corpus_rows(windows=WINDOWS) -> list[dict]:
    return [{"document": "doc.txt", "window": w, "position": p, "token_id": 100 + 7 * w + p, "token": f"t{p}"}
            for w, length in enumerate(windows) for p in range(length)]


def write_store(out: Path, data: dict[str, np.ndarray], stage_hash: str = UPSTREAM) -> Path:
    with ActivationWriter(out, N_LAYERS, N_ROWS, {"stage_hash": stage_hash, "model_id": "test"},
                          config_text="stage: corpus.extract\n") as writer:
        for start in range(0, N_ROWS, 4):
            writer.write(start, {site: values[:, start : start + 4] for site, values in data.items()})
        writer.set_rows(corpus_rows(), ["document", "window", "position", "token_id", "token"])
    return out


def stage_record(upstream: str = UPSTREAM) -> dict:
    config = {"rotations": {"during_extraction": False}, "stage": "rotations.analysis", "version": 1,
              "upstream": upstream}
    return {"stage": "rotations.analysis", "hash": "a1b2c3d4e5", "config": config}


def plot_stage(error_bar: str = "sem", bins: int = 12, depth_bands: int = 2) -> dict:
    config = {"plot": {"dpi": 40}, "rotations": {"plot": {"error_bar": error_bar, "bins": bins,
                                                          "depth_bands": depth_bands}},
              "stage": "rotations.plot", "version": 1, "upstream": "a1b2c3d4e5"}
    return {"stage": "rotations.plot", "hash": "0123456789", "config": config}


def analyse(data: dict[str, np.ndarray], tmp_path: Path, chunk_rows: int | None, name: str = "metrics") -> Path:
    store = tmp_path / "activations"
    if not store.exists():
        write_store(store, data)
    run_analysis(EXPERIMENT, stage_record(), store, tmp_path / name, chunk_rows=chunk_rows)
    return tmp_path / name


# Rows: window 0 = 0-4, window 1 = 5-11, window 2 = 12 (alone), window 3 = 13-18.
@pytest.fixture
def data() -> dict[str, np.ndarray]:
    """float32 activations with resid_post = resid_pre + attn_out + mlp_out, a shared direction
    across tokens (so sequential angles are not all near pi/2), and undefined angles: a zero
    resid_pre (layer 1, token 3), a zero resid_post mid-window (layer 2, token 9) and at a
    window's first token (layer 0, token 13), an infinite attn_out (layer 0, token 2)."""
    rng = np.random.default_rng(11)
    pre = 3.0 * rng.normal(size=(N_LAYERS, 1, WIDTH)) + rng.normal(size=(N_LAYERS, N_ROWS, WIDTH))
    attn, mlp = rng.normal(size=pre.shape), 0.5 * rng.normal(size=pre.shape) + 0.2
    post = pre + attn + mlp
    pre[1, 3] = 0.0
    post[2, 9] = 0.0
    post[0, 13] = 0.0
    attn[0, 2] = np.inf
    return {"attn_out": attn.astype(np.float32), "mlp_out": mlp.astype(np.float32),
            "resid_pre": pre.astype(np.float32), "resid_post": post.astype(np.float32)}


# ------------------------------------------------------------------------------- naive truth
def naive_angle(a, b) -> float:
    """math.acos of the cosine of two vectors (plain Python), NaN if either is zero or not finite."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if not all(math.isfinite(x) for x in (*a, *b)):
        return math.nan
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:
        return math.nan
    return math.acos(max(-1.0, min(1.0, sum(x * y for x, y in zip(a, b)) / (na * nb))))


def naive_pairs(rows: list[dict]) -> list[tuple[int, int, bool]]:
    """(t, t + 1, is_first_token_pair) for consecutive tokens of each window, from the rows."""
    by_window: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        by_window.setdefault(row["window"], []).append(index)
    pairs = []
    for members in by_window.values():
        members.sort(key=lambda i: rows[i]["position"])
        pairs += [(members[i], members[i + 1], i == 0) for i in range(len(members) - 1)]
    return pairs


def naive_values(data: dict[str, np.ndarray]) -> dict[str, list[list[float]]]:
    """Every angle per metric and layer (NaN included), in token (or pair) order."""
    out: dict[str, list[list[float]]] = {metric: [] for metric in METRICS}
    pairs = naive_pairs(corpus_rows())
    for layer in range(N_LAYERS):
        d = {site: data[site][layer] for site in SITES}
        out["block_rotation"].append([naive_angle(d["resid_pre"][t], d["resid_post"][t]) for t in range(N_ROWS)])
        out["attn_angle"].append([naive_angle(d["attn_out"][t], d["resid_pre"][t]) for t in range(N_ROWS)])
        out["mlp_angle"].append([naive_angle(d["mlp_out"][t], d["resid_pre"][t]) for t in range(N_ROWS)])
        for metric, first in (("sequential_first", True), ("sequential_rest", False)):
            out[metric].append([naive_angle(d["resid_post"][t], d["resid_post"][u]) for t, u, f in pairs if f == first])
    return out


def naive_stats(values: list[float]) -> dict:
    defined = [v for v in values if not math.isnan(v)]
    return {"value": statistics.fmean(defined), "sd": statistics.stdev(defined),
            "sem": float(scipy.stats.sem(defined)), "median": statistics.median(defined), "n": len(defined),
            "n_undefined": len(values) - len(defined)}


# -------------------------------------------------------------------------------------- tests
def test_table_and_angles_match_naive_loops(tmp_path, data):
    metrics = analyse(data, tmp_path, chunk_rows=5)
    assert sorted(p.name for p in metrics.iterdir()) == ["config.yaml", "rotation_angles.h5", "rotations.tsv"]
    rows = read_tsv(metrics / "rotations.tsv")
    assert tuple(rows[0]) == TABLE_COLUMNS
    assert [(r["metric"], int(r["layer"])) for r in rows] == [(m, l) for m in METRICS for l in range(N_LAYERS)]
    expected = naive_values(data)
    for row in rows:
        want = naive_stats(expected[row["metric"]][int(row["layer"])])
        assert (int(row["n"]), int(row["n_undefined"])) == (want["n"], want["n_undefined"]), row
        for column in ("value", "sd", "sem", "median"):
            assert float(row[column]) == pytest.approx(want[column], rel=1e-10, abs=1e-13), (row, column)

    pairs = naive_pairs(corpus_rows())
    with open_angles(metrics / "rotation_angles.h5") as handle:
        for name in ("block_rotation", "attn_angle", "mlp_angle"):
            assert handle[name].dtype == np.float64 and handle[name].shape == (N_LAYERS, N_ROWS)
            np.testing.assert_allclose(handle[name][()], expected[name], rtol=1e-10, atol=1e-13)
        sequential = handle["sequential"][()]
        for metric, first in (("sequential_first", True), ("sequential_rest", False)):
            starts = [t for t, _, f in pairs if f == first]
            np.testing.assert_allclose(sequential[:, starts], expected[metric], rtol=1e-10, atol=1e-13)
        no_pair = sorted(set(range(N_ROWS)) - {t for t, _, _ in pairs})
        assert no_pair == [4, 11, 12, 18] and np.isnan(sequential[:, no_pair]).all()
        np.testing.assert_array_equal(handle["has_next"][()], [t not in no_pair for t in range(N_ROWS)])
        first_starts = {t for t, _, first in pairs if first}
        np.testing.assert_array_equal(handle["first_pair"][()], [t in first_starts for t in range(N_ROWS)])
        for column in ("window", "position", "token_id"):
            np.testing.assert_array_equal(handle[column][()], [r[column] for r in corpus_rows()])
        for metric in METRICS:
            np.testing.assert_array_equal(handle["n_undefined"][metric][()],
                                          [naive_stats(v)["n_undefined"] for v in expected[metric]])
        attrs = dict(handle.attrs)
    assert attrs["stage_hash"] == "a1b2c3d4e5" and attrs["activations_stage_hash"] == UPSTREAM
    assert attrs["unit"] == "radians" and int(attrs["n_windows"]) == len(WINDOWS) and "config_yaml" in attrs
    assert yaml.safe_load((metrics / "config.yaml").read_text())["config"]["upstream"] == UPSTREAM


def test_undefined_angles_are_excluded_and_counted(tmp_path, data):
    table = read_rotation_table(analyse(data, tmp_path, chunk_rows=4) / "rotations.tsv")
    # zero resid_pre (layer 1, token 3): all three block angles; zero resid_post (layer 2, token 9):
    # the block rotation and both pairs it is in; (layer 0, token 13): a first-token pair;
    # infinite attn_out (layer 0, token 2): the attention angle only
    np.testing.assert_array_equal(table["block_rotation"].n_undefined, [1, 1, 1])
    np.testing.assert_array_equal(table["attn_angle"].n_undefined, [1, 1, 0])
    np.testing.assert_array_equal(table["mlp_angle"].n_undefined, [0, 1, 0])
    np.testing.assert_array_equal(table["sequential_first"].n_undefined, [1, 0, 0])
    np.testing.assert_array_equal(table["sequential_rest"].n_undefined, [0, 0, 2])
    for metric, total in (("block_rotation", N_ROWS), ("sequential_first", 3), ("sequential_rest", N_ROWS - 4 - 3)):
        np.testing.assert_array_equal(table[metric].n + table[metric].n_undefined, total)
    assert np.isfinite(table["sequential_rest"].mean).all()


def test_first_token_pairs_once_per_window_and_pairs_never_cross_windows():
    rows = corpus_rows()
    has_next, first = consecutive_pairs(np.array([r["window"] for r in rows]), np.array([r["position"] for r in rows]))
    pairs = naive_pairs(rows)
    assert [t for t in range(N_ROWS) if has_next[t]] == [t for t, _, _ in pairs]
    assert [t for t in range(N_ROWS) if first[t]] == [t for t, _, f in pairs if f] == [0, 5, 13]
    # two windows side by side whose positions do not restart still never pair across
    has_next, first = consecutive_pairs(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 2, 3, 4]))
    assert has_next.tolist() == [True, False, True, True, False]
    assert first.tolist() == [True, False, False, False, False]
    # a gap in the positions (a row left out) breaks the pair
    assert consecutive_pairs(np.array([0, 0, 0]), np.array([0, 1, 3]))[0].tolist() == [True, False, False]


def test_streaming_in_uneven_chunks_equals_one_shot(tmp_path, data):
    one_shot = analyse(data, tmp_path, chunk_rows=N_ROWS, name="one")
    runs = [analyse(data, tmp_path, chunk_rows=rows, name=f"chunks{rows}") for rows in (1, 3, 4)]
    # the reducer itself, fed chunks of 1, 6, 1, 2 and 9 rows that are views of one reused buffer
    # (as during extraction), overwritten after each update
    out = tmp_path / "reused"
    out.mkdir()
    reducer = RotationReducer(ReducerJob(settings={"during_extraction": True}, rows=RowTable(corpus_rows()),
                                         n_layers=N_LAYERS, widths={s: WIDTH for s in SITES}, model_attrs={},
                                         out_dir=out, attrs={"stage_hash": "x"}))
    buffer = {site: np.empty((N_LAYERS, 9, WIDTH), dtype=np.float32) for site in SITES}
    start = 0
    for rows in (1, 6, 1, 2, 9):
        for site in SITES:
            buffer[site][:, :rows] = data[site][:, start : start + rows]
        reducer.update(start, {site: buffer[site][:, :rows] for site in SITES})
        for site in SITES:
            buffer[site][:] = np.nan
        start += rows
    reducer.finish()
    want = read_rotation_table(one_shot / "rotations.tsv")
    for folder in (*runs, out):
        got = read_rotation_table(folder / "rotations.tsv")
        for metric in METRICS:
            for field in ("n", "n_undefined"):
                np.testing.assert_array_equal(getattr(got[metric], field), getattr(want[metric], field))
            for field in ("mean", "sd", "sem", "median"):
                np.testing.assert_allclose(getattr(got[metric], field), getattr(want[metric], field), rtol=1e-12)
        with h5py.File(folder / "rotation_angles.h5") as a, h5py.File(one_shot / "rotation_angles.h5") as b:
            for name in ("block_rotation", "attn_angle", "mlp_angle", "sequential"):
                np.testing.assert_allclose(a[name][()], b[name][()], rtol=0, atol=1e-14, equal_nan=True)


def test_reducer_refuses_chunks_out_of_order_or_missing(tmp_path, data):
    job = ReducerJob(settings={}, rows=RowTable(corpus_rows()), n_layers=N_LAYERS, widths={}, model_attrs={},
                     out_dir=tmp_path, attrs={})
    reducer = RotationReducer(job)
    reducer.update(0, {site: data[site][:, :5] for site in SITES})
    with pytest.raises(RuntimeError, match="expected 5"):
        reducer.update(6, {site: data[site][:, 6:9] for site in SITES})
    with pytest.raises(RuntimeError, match="5 rows streamed, 19 expected"):
        reducer.finish()


def test_store_from_another_config_is_refused(tmp_path, data):
    store = write_store(tmp_path / "activations", data, stage_hash="0000000000")
    with pytest.raises(InputFileError, match="does not match") as error:
        run_analysis(EXPERIMENT, stage_record(), store, tmp_path / "metrics")
    assert "\n" not in str(error.value) and not (tmp_path / "metrics").exists()


def test_depth_bands_cover_every_layer_once_by_relative_depth():
    for n_layers in range(1, 40):
        for n_bands in range(1, n_layers + 1):
            bands = depth_bands(n_layers, n_bands)
            assert [l for band in bands for l in band] == list(range(n_layers))
            assert all(math.floor(n_bands * l / n_layers) == b for b, band in enumerate(bands) for l in band)
            assert max(map(len, bands)) - min(map(len, bands)) <= 1
    with pytest.raises(ConfigError, match="rotations.plot.depth_bands"):
        depth_bands(6, 7)


# ------------------------------------------------------------------------------------ figures
def test_figure_stage_writes_every_declared_figure(tmp_path, data, monkeypatch):
    metrics = analyse(data, tmp_path, chunk_rows=4)
    figures = tmp_path / "figures"
    written = run_figures(EXPERIMENT, plot_stage("sd", bins=12, depth_bands=2), CONTEXT, metrics, figures)
    expected = sorted([f"{f.name}.{ext}" for f in EXPERIMENT.figures for ext in ("png", "pdf")] + ["config.yaml"])
    assert sorted(p.name for p in figures.iterdir()) == expected == sorted(p.name for p in written)
    for path in figures.glob("rotations_*"):
        assert path.stat().st_size > 5000, path

    # the histograms: every defined sequential angle of the band's layers, in equal bins over [0, pi]
    table = read_rotation_table(metrics / "rotations.tsv")
    expected_values = naive_values(data)
    with open_angles(metrics / "rotation_angles.h5") as handle:
        histograms = band_histograms(handle, depth_bands(N_LAYERS, 2), bins=12)
    assert [list(h.layers) for h in histograms] == [[l for l in range(N_LAYERS) if 2 * l // N_LAYERS == b]
                                                    for b in range(2)]
    for band in histograms:
        for metric, counts in (("sequential_first", band.first), ("sequential_rest", band.rest)):
            values = [v for l in band.layers for v in expected_values[metric][l] if not math.isnan(v)]
            assert counts.sum() == sum(table[metric].n[l] for l in band.layers) == len(values)
            for b in range(12):
                low, high = b * math.pi / 12, (b + 1) * math.pi / 12
                assert counts[b] == sum(low <= v < high or (b == 11 and v == high) for v in values)
        assert sorted(band.first_values) == pytest.approx(sorted(
            v for l in band.layers for v in expected_values["sequential_first"][l] if not math.isnan(v)), rel=1e-10)

    fig, axes = plot_histograms(histograms, N_LAYERS, CONTEXT)
    largest = max(v for m in ("sequential_first", "sequential_rest") for layer in expected_values[m] for v in layer
                  if not math.isnan(v))
    for ax, band in zip(axes, histograms):
        assert ax.get_xlim()[1] >= largest                                # no angle is cut off
        heights = [patch.get_height() for patch in ax.patches]
        assert heights == [*band.rest, *band.first]
    with open_angles(metrics / "rotation_angles.h5") as handle:     # too many first-token angles for a rug
        monkeypatch.setattr("laminae.experiments.rotations.figures.RUG_MAX", 2)
        crowded = band_histograms(handle, depth_bands(N_LAYERS, 1), bins=12)[0]
    assert crowded.first_values is None and crowded.first.sum() == table["sequential_first"].n.sum() > 2
    plot_histograms([crowded], N_LAYERS, CONTEXT)
    fig, axes = plot_laminar(table, CONTEXT, error_bar="sem")
    assert len(axes) == 2 and "SEM" in axes[0].get_ylabel() and "radians" in axes[0].get_ylabel()
    assert "RANDOM WEIGHTS" in fig.texts[0].get_text()
    plt.close("all")


def test_captions_render_with_the_run_settings():
    import jinja2
    from types import SimpleNamespace

    stage = plot_stage(bins=45, depth_bands=3)
    stage["config"]["runs"] = [{"label": "model=a", "analysis": "123"}, {"label": "model=b", "analysis": "456"}]
    snakemake = SimpleNamespace(params=SimpleNamespace(context=CONTEXT, stage=stage),
                                wildcards=SimpleNamespace(label="toy"))
    captions = [figure.caption for figure in EXPERIMENT.figures] + [EXPERIMENT.compare_caption]
    texts = [jinja2.Template(EXPERIMENT.path(c).read_text()).render(snakemake=snakemake) for c in captions]
    assert "45 equal bins" in texts[1] and "floor(3 l / L)" in texts[1]
    assert all("RANDOM WEIGHTS" in text and "tiny-test" in text for text in texts[:2])
    assert "``model=a``" in texts[2] and "``model=b``" in texts[2]
    assert not any("{{" in text or "{%" in text for text in texts)


@pytest.mark.parametrize("plot, key", [({"error_bar": "ci"}, "rotations.plot.error_bar"),
                                       ({"depth_bands": 0}, "rotations.plot.depth_bands")])
def test_bad_plot_setting_fails_before_writing(tmp_path, data, plot, key):
    metrics = analyse(data, tmp_path, chunk_rows=7)
    stage = plot_stage()
    stage["config"]["rotations"]["plot"].update(plot)
    with pytest.raises(ConfigError, match=key):
        run_figures(EXPERIMENT, stage, CONTEXT, metrics, tmp_path / "figures")
    assert not (tmp_path / "figures").exists()


def test_sweep_overlay_draws_every_run(tmp_path, data):
    table = read_rotation_table(analyse(data, tmp_path, chunk_rows=6) / "rotations.tsv")
    fig = plot_rotation_comparison([table, table], ["a", "b"], "sweep")
    for ax, metric in zip(fig.axes, ("block_rotation", "sequential_rest", "sequential_first")):
        lines = [line for line in ax.get_lines() if len(line.get_xdata()) == N_LAYERS]
        assert len(lines) == 2
        np.testing.assert_allclose(lines[1].get_ydata(), table[metric].mean)
    plt.close(fig)


# ---------------------------------------------------------------------- during extraction
# 4 windows of 100, 100, 100 and 46 GPT-2 tokens; batches of 2 windows (the second padded)
SMALL = ["model=tiny-gpt2", "experiments=[rotations]", "corpus.window_tokens=100", "batch_size=2", "device=cpu"]


def pipeline(out: Path, models_dir: Path, *overrides: str):
    (run,) = load_runs([*SMALL, f"models_dir={models_dir}", *overrides], project_root=ROOT)
    record = {name: {"stage": s.name, "hash": s.hash, "config": s.config} for name, s in run.stages.items()}
    extract(record["corpus.extract"], run.runtime, out / "activations", ROOT, discover())
    run_analysis(EXPERIMENT, record["rotations.analysis"], out / "activations", out / "metrics", run.runtime)
    return out / "activations", out / "metrics"


def test_during_extraction_equals_the_two_stage_pipeline(tmp_path, models_dir):
    stored, two_stage = pipeline(tmp_path / "two", models_dir)
    inline, during = pipeline(tmp_path / "during", models_dir, "rotations.during_extraction=true")
    assert not list(inline.glob("layer_*.h5")) and list(stored.glob("layer_*.h5"))
    expected, actual = (read_rotation_table(d / "rotations.tsv") for d in (two_stage, during))
    for metric in METRICS:
        for field in ("n", "n_undefined"):
            np.testing.assert_array_equal(getattr(actual[metric], field), getattr(expected[metric], field))
        for field in ("mean", "sd", "sem", "median"):
            np.testing.assert_allclose(getattr(actual[metric], field), getattr(expected[metric], field),
                                       rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(expected["sequential_first"].n, 4)          # one per window
    np.testing.assert_array_equal(expected["sequential_rest"].n, 346 - 4 - 4)
    with h5py.File(two_stage / "rotation_angles.h5") as a, h5py.File(during / "rotation_angles.h5") as b:
        for name in ("block_rotation", "attn_angle", "mlp_angle", "sequential"):
            np.testing.assert_allclose(b[name][()], a[name][()], rtol=0, atol=1e-10, equal_nan=True)
        for name in ("has_next", "first_pair", "window", "position", "token_id"):
            np.testing.assert_array_equal(b[name][()], a[name][()])
        assert b.attrs["computed_during_extraction"] and "computed_during_extraction" not in a.attrs
        # the stored activations of the real model give the same angles, computed naively
        store = ActivationStore(stored)
        post = store.read("resid_post", layers=[2])[0]
        pre = store.read("resid_pre", layers=[2])[0]
        for t in (0, 1, 99, 100, 150, 345):
            assert a["block_rotation"][2, t] == pytest.approx(naive_angle(pre[t], post[t]), rel=1e-9, abs=1e-12)
            want = naive_angle(post[t], post[t + 1]) if t not in (99, 345) else math.nan
            assert a["sequential"][2, t] == pytest.approx(want, rel=1e-9, abs=1e-12, nan_ok=True)


def test_more_depth_bands_than_layers_draw_one_band_per_layer(models_dir):
    """depth_bands is at most one band per layer: the default (3) works on a 2-layer model, and
    a deeper model's bands are unchanged (tests/test_depths.py draws them at 1 and 2 layers)."""
    (run,) = load_runs([*SMALL, f"models_dir={models_dir}", "rotations.plot.depth_bands=5"], project_root=ROOT)
    assert run.config["rotations"]["plot"]["depth_bands"] == 5   # as set: the figure stage's hash is unchanged
    assert [band_count(n, 3) for n in (1, 2, 3, 36)] == [1, 2, 3, 3]
    assert depth_bands(2, band_count(2, 3)) == [range(0, 1), range(1, 2)]
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ConfigError, match="rotations.plot.depth_bands"):
            band_count(4, bad)


def test_shares_one_extraction_with_adjustments(models_dir):
    overrides = [o if not o.startswith("experiments=") else "experiments=[adjustments,rotations]" for o in SMALL]
    (run,) = load_runs([*overrides, f"models_dir={models_dir}"], project_root=ROOT)
    extractions = [name for name in run.stages if name.endswith(".extract")]
    assert extractions == ["corpus.extract"]
    assert (run.stages["rotations.analysis"].config["upstream"] == run.stages["adjustments.analysis"].config["upstream"]
            == run.stages["corpus.extract"].hash)
