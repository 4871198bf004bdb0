"""`trajectories`: the streamed PCA against numpy's SVD of the stacked points; step lengths and
turning angles against Python loops; the steps against the path-length experiment's PL_hs
(token_paths) on a chained stream; the stage (uneven chunks equal one chunk, projections of the
selected tokens, first tokens left out), figures, captions, measures, the sweep overlay; and an
end-to-end run through Snakemake on tiny-gpt2 with a sweep."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.stats

from laminae.errors import ConfigError
from laminae.experiment import CompareJob, MeasureJob
from laminae.metrics.paths import token_paths
from laminae.metrics.trajectories import StreamingPCA, trajectory_points, trajectory_steps
from laminae.registry import discover
from laminae.stages.analysis import run_analysis
from laminae.stages.figures import run_figures
from laminae.store import ActivationWriter, read_tsv

from workflow_helpers import scheduled_rules, snakemake

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = discover()["trajectories"]
UPSTREAM = "feedc0ffee"
WINDOWS = (5, 7, 6)
N_LAYERS, WIDTH = 4, 7
CONTEXT = {"model": "tiny-test", "random_weights": True, "corpus": "toy", "experiment": "trajectories",
           "analysis": {}}


def corpus_rows() -> list[dict]:
    words = ["the", "cat", "sat", "on", "a", "mat", "and"]
    return [{"document": "doc.txt", "window": w, "position": p, "token_id": 100 + p, "token": f" {words[p % 7]}"}
            for w, length in enumerate(WINDOWS) for p in range(length)]


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    """A chained float32 stream (resid_pre[l + 1] = resid_post[l]) with a large offset (the
    mean far from 0, as in real models) and anisotropic steps; first tokens 20x larger."""
    rng = np.random.default_rng(3)
    n_rows = sum(WINDOWS)
    first = np.array([r["position"] == 0 for r in corpus_rows()])
    pre = np.empty((N_LAYERS, n_rows, WIDTH), dtype=np.float32)
    post = np.empty_like(pre)
    pre[0] = 50 + rng.normal(size=(n_rows, WIDTH)) * np.arange(1, WIDTH + 1)
    for layer in range(N_LAYERS):
        post[layer] = pre[layer] + rng.normal(size=(n_rows, WIDTH)) * np.linspace(3, 0.2, WIDTH)
        post[layer, first] *= 20
        if layer + 1 < N_LAYERS:
            pre[layer + 1] = post[layer]
    return {"resid_pre": pre, "resid_post": post}


def write_store(out: Path, data, random_weights: bool = False) -> Path:
    n_layers, n_rows = data["resid_pre"].shape[:2]
    attrs = {"stage_hash": UPSTREAM, "model_id": "test", "family": "gpt2", "random_weights": random_weights}
    with ActivationWriter(out, n_layers, n_rows, attrs, config_text="stage: corpus.extract\n") as writer:
        for start in range(0, n_rows, 5):
            writer.write(start, {site: values[:, start : start + 5] for site, values in data.items()})
        writer.set_rows(corpus_rows(), ["document", "window", "position", "token_id", "token"])
    return out


def settings(**changes) -> dict:
    base = {"n_components": 3, "exclude_first_token": True, "select": {"window": 1, "count": 4, "strings": []}}
    base.update(changes)
    return base


def analyse(tmp_path: Path, data, name: str = "metrics", chunk_rows: int | None = None, monkeypatch=None,
            random_weights: bool = False, **changes) -> Path:
    store = tmp_path / "activations"
    if not store.exists():
        write_store(store, data, random_weights)
    if monkeypatch is not None:
        monkeypatch.setattr("laminae.experiments.trajectories.analysis.CHUNK_ROWS", chunk_rows)
    config = {"trajectories": settings(**changes), "stage": "trajectories.analysis", "version": 1, "upstream": UPSTREAM}
    run_analysis(EXPERIMENT, {"stage": "trajectories.analysis", "hash": "a1b2c3d4e5", "config": config}, store,
                 tmp_path / name)
    return tmp_path / name


def table(path: Path) -> dict[tuple[str, int], dict[str, str]]:
    return {(r["metric"], int(r["layer"])): r for r in read_tsv(path / "trajectories.tsv")}


# ------------------------------------------------------------------------------ the metric
def naive_geometry(points: np.ndarray) -> tuple[list[list[float]], list[list[float]]]:
    """Step lengths and angles (degrees) with Python loops: points (n_points, rows, width)."""
    steps, turns = [], []
    for l in range(points.shape[0] - 1):
        steps.append([math.sqrt(sum((float(b) - float(a)) ** 2 for a, b in zip(points[l, t], points[l + 1, t])))
                      for t in range(points.shape[1])])
    for l in range(1, points.shape[0] - 1):
        row = []
        for t in range(points.shape[1]):
            u = [float(b) - float(a) for a, b in zip(points[l - 1, t], points[l, t])]
            v = [float(b) - float(a) for a, b in zip(points[l, t], points[l + 1, t])]
            dot = sum(x * y for x, y in zip(u, v))
            row.append(math.degrees(math.acos(max(-1.0, min(1.0, dot / (math.hypot(*u) * math.hypot(*v)))))))
        turns.append(row)
    return steps, turns


def test_steps_and_turns_equal_loops_and_pathlength_definitions(data):
    points = trajectory_points(data["resid_pre"], data["resid_post"])
    assert points.shape == (N_LAYERS + 1, sum(WINDOWS), WIDTH) and points.dtype == np.float64
    geometry = trajectory_steps(points)
    steps, turns = naive_geometry(points)
    np.testing.assert_allclose(geometry.step, steps, rtol=1e-12)
    np.testing.assert_allclose(geometry.turn, turns, rtol=1e-9, atol=1e-6)   # arccos near 1: ill-conditioned
    paths = token_paths(data["resid_post"], data["resid_post"], data["resid_pre"], data["resid_post"])
    np.testing.assert_allclose(geometry.step, paths.pl_hs, rtol=1e-12)            # the chained stream: PL_hs
    np.testing.assert_allclose(np.cumsum(geometry.step, axis=0), paths.cumulative, rtol=1e-12)
    # a straight path turns by 0, an out-and-back one by 180, a right angle by 90
    line = np.array([[[0.0, 0]], [[1, 0]], [[3, 0]], [[2, 0]], [[2, 5]]])
    np.testing.assert_allclose(trajectory_steps(line).turn[:, 0], [0, 180, 90], atol=1e-6)
    assert np.isnan(trajectory_steps(np.zeros((3, 1, 2))).turn).all()             # zero steps: no angle


def test_streamed_pca_equals_svd_in_any_chunks():
    rng = np.random.default_rng(0)
    x = 1e3 + rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))                 # offset >> spread
    centred = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    pca = StreamingPCA(6)
    for start, stop in [(0, 1), (1, 77), (77, 300), (300, 500)]:
        pca.update(x[start:stop])
    fit = pca.fit(3)
    np.testing.assert_allclose(fit.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(pca.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fit.variances, singular[:3] ** 2 / 499, rtol=1e-9)
    np.testing.assert_allclose(np.abs(fit.components @ vt[:3].T), np.eye(3), atol=1e-8)   # same axes up to sign
    np.testing.assert_allclose(fit.explained_ratio, singular[:3] ** 2 / (singular ** 2).sum(), rtol=1e-9)
    np.testing.assert_allclose(np.abs(fit.project(x)), np.abs(centred @ vt[:3].T), rtol=1e-7, atol=1e-7)
    # merged shards equal one accumulator
    a, b = StreamingPCA(6), StreamingPCA(6)
    a.update(x[:123])
    b.update(x[123:] * 1.0)
    a.merge(b)
    np.testing.assert_allclose(a.covariance(), pca.covariance(), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="non-finite"):
        StreamingPCA(2).update(np.array([[1.0, np.nan]]))


# ------------------------------------------------------------------------------ the stage
@pytest.mark.parametrize("chunk_rows", [4, 18])
def test_stage_against_naive_computation(tmp_path, data, monkeypatch, chunk_rows):
    metrics = analyse(tmp_path, data, chunk_rows=chunk_rows, monkeypatch=monkeypatch)
    assert sorted(p.name for p in metrics.iterdir()) == ["config.yaml", "trajectories.tsv", "trajectories_pca.tsv",
                                                         "trajectories_tokens.h5"]
    rows = corpus_rows()
    kept = np.array([r["position"] > 0 for r in rows])
    points = trajectory_points(data["resid_pre"], data["resid_post"])
    stacked = points[:, kept].reshape(-1, WIDTH)                                 # every kept token x depth
    centred = stacked - stacked.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    pca = read_tsv(metrics / "trajectories_pca.tsv")
    np.testing.assert_allclose([float(r["explained_ratio"]) for r in pca], (singular ** 2 / (singular ** 2).sum())[:3],
                               rtol=1e-8)
    assert int(pca[0]["n_points"]) == stacked.shape[0]
    # projections: signs follow the convention (largest coordinate positive)
    axes = vt[:3] * np.sign(vt[:3][np.arange(3), np.abs(vt[:3]).argmax(axis=1)])[:, None]
    projected = (points - stacked.mean(axis=0)) @ axes.T                        # (L + 1, rows, 3)
    full_steps, full_turns = naive_geometry(points)
    pca_steps, pca_turns = naive_geometry(projected)
    got = table(metrics)
    for metric, values, first in (("step_full", full_steps, 0), ("turn_full", full_turns, 1),
                                  ("step_pca", pca_steps, 0), ("turn_pca", pca_turns, 1),
                                  ("length_full", np.cumsum(full_steps, axis=0), 0),
                                  ("length_pca", np.cumsum(pca_steps, axis=0), 0)):
        for index, per_token in enumerate(values):
            sample = np.array(per_token)[kept]
            row = got[metric, index + first]
            assert int(row["n"]) == kept.sum()
            assert float(row["value"]) == pytest.approx(sample.mean(), rel=1e-8)
            assert float(row["sem"]) == pytest.approx(scipy.stats.sem(sample), rel=1e-7)
            assert float(row["q50"]) == pytest.approx(np.median(sample), rel=1e-8)
            assert float(row["q05"]) == pytest.approx(np.percentile(sample, 5), rel=1e-8)
    with h5py.File(metrics / "trajectories_tokens.h5") as handle:
        np.testing.assert_allclose(handle["step_full"][()], full_steps, rtol=1e-12)
        np.testing.assert_allclose(handle["step_pca"][()], pca_steps, rtol=1e-7, atol=1e-9)
        chosen = handle["selected/row"][()]
        np.testing.assert_array_equal(chosen, [6, 7, 8, 9])                      # window 1, first token left out
        np.testing.assert_allclose(handle["selected/coords"][()], projected[:, chosen].transpose(1, 0, 2),
                                   rtol=1e-7, atol=1e-7)
        assert [t.decode() for t in handle["selected/token"][()]] == [" cat", " sat", " on", " a"]
        assert handle.attrs["activations_stage_hash"] == UPSTREAM


def test_uneven_chunks_equal_one_chunk_and_first_token_switch(tmp_path, data, monkeypatch):
    a = table(analyse(tmp_path, data, "one", chunk_rows=18, monkeypatch=monkeypatch))
    b = table(analyse(tmp_path, data, "uneven", chunk_rows=7, monkeypatch=monkeypatch))
    assert list(a) == list(b)
    for key, row in a.items():
        for column in ("value", "sem", "q25", "q95"):
            assert float(b[key][column]) == pytest.approx(float(row[column]), rel=1e-9), key
    c = table(analyse(tmp_path, data, "all", chunk_rows=7, monkeypatch=monkeypatch, exclude_first_token=False))
    assert int(c["step_full", 0]["n"]) - int(a["step_full", 0]["n"]) == len(WINDOWS)
    assert float(c["step_full", 0]["q95"]) > 5 * float(a["step_full", 0]["q95"])  # the 20x first tokens
    strings = analyse(tmp_path, data, "strings", chunk_rows=7, monkeypatch=monkeypatch,
                      select={"window": 0, "count": 3, "strings": ["mat", "on"]})
    with h5py.File(strings / "trajectories_tokens.h5") as handle:
        assert handle["selected/row"][()].tolist() == [3, 8, 10]          # " on", " on", " mat"
    with pytest.raises(ConfigError, match="trajectories.select.window"):
        analyse(tmp_path, data, "bad", select={"window": 9, "count": 3, "strings": []})
    with pytest.raises(ConfigError, match="trajectories.n_components"):
        analyse(tmp_path, data, "bad", n_components=WIDTH + 1)


def test_figures_measures_compare_and_captions(tmp_path, data, monkeypatch):
    from laminae.plots.style import save_figure

    metrics = analyse(tmp_path, data, chunk_rows=5, monkeypatch=monkeypatch)
    figures = tmp_path / "figures"
    config = {"plot": {"dpi": 40}, "trajectories": {**settings(), "plot": {"log_steps": "auto"}},
              "stage": "trajectories.plot", "version": 1, "upstream": "a1b2c3d4e5"}
    run_figures(EXPERIMENT, {"stage": "trajectories.plot", "hash": "0123456789", "config": config}, CONTEXT, metrics,
                figures)
    assert sorted(p.name for p in figures.iterdir()) == sorted(
        [f"{f.name}.{ext}" for f in EXPERIMENT.figures for ext in ("png", "pdf")] + ["config.yaml"])
    measured = EXPERIMENT.hook("measure")(MeasureJob(metrics, settings()))
    assert set(measured) == {m.name for m in EXPERIMENT.measures}
    rows = table(metrics)
    assert measured["step_full"].values[2] == pytest.approx(float(rows["step_full", 2]["value"]))
    assert np.isnan(measured["turn_full"].values[0]) and measured["turn_full"].n_layers == N_LAYERS
    other = analyse(tmp_path / "random", data, "other", chunk_rows=5, monkeypatch=monkeypatch, random_weights=True)
    fig = EXPERIMENT.hook("compare")(CompareJob(metrics_dirs=[metrics, other], labels=["a", "b"],
                                                settings=[settings(), settings()], plot={}))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b (RANDOM WEIGHTS)"]
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(),
                               [float(rows["step_full", layer]["q50"]) for layer in range(N_LAYERS)])
    assert save_figure(fig, tmp_path / "compare.png", dpi=40)[0].stat().st_size > 5000

    import docutils.core
    import docutils.utils
    import jinja2
    from types import SimpleNamespace

    stage = {"config": {"trajectories": settings(), "runs": [{"label": "model=a", "analysis": "0123456789"}]}}
    snakemake_ns = SimpleNamespace(params=SimpleNamespace(context={**CONTEXT, "random_weights": False}, stage=stage))
    for caption in [f.caption for f in EXPERIMENT.figures] + [EXPERIMENT.compare_caption]:
        text = jinja2.Template(EXPERIMENT.path(caption).read_text()).render(snakemake=snakemake_ns)
        docutils.core.publish_doctree(text, settings_overrides={"halt_level": docutils.utils.Reporter.WARNING_LEVEL,
                                                                "report_level": 5})


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_end_to_end_on_tiny_gpt2_with_a_sweep(tmp_path, built_models):
    """Snakemake on tiny-gpt2 (random weights): the stage's steps equal |x_(l+1) - x_l| of the
    stored activations; a sweep over n_components reuses the extraction and draws the overlay."""
    from laminae.config import load_runs
    from laminae.store import ActivationStore

    overrides = ["model=tiny-gpt2", "experiments=[trajectories]", "corpus.window_tokens=64", "corpus.max_tokens=300",
                 "device=cpu", built_models]
    sweep = ["trajectories.n_components=2,3"]
    snakemake(tmp_path, overrides, "--cores", "2", sweep=sweep)
    assert scheduled_rules(snakemake(tmp_path, overrides, "-n", sweep=sweep)) == {}
    runs = load_runs(overrides, sweep, project_root=ROOT)
    store = ActivationStore(tmp_path / runs[0].extraction("trajectories").output_dir)
    points = trajectory_points(store.read("resid_pre", layers=[0]).repeat(store.n_layers, axis=0),
                               store.read("resid_post"))
    kept = store.rows.integers("position") > 0
    steps = np.linalg.norm(np.diff(points, axis=0), axis=-1)[:, kept]
    got = table(tmp_path / runs[0].stages["trajectories.analysis"].output_dir)
    for layer in range(store.n_layers):
        assert float(got["step_full", layer]["value"]) == pytest.approx(steps[layer].mean(), rel=1e-6)
    assert list((tmp_path / "results" / "sweeps").glob("trajectories-*/compare_trajectories.png"))
