"""Experiment 3 (`pathlength`): every number against an independent naive computation (Python
loops over tokens, scipy.stats, a naive bootstrap loop with the same seeded draws, numpy on
whole arrays); streaming in uneven chunks equals one shot; `without_first` drops one token per
window; straightness in [0, 1]; refusals; figures and captions; during extraction equals the
two-stage pipeline on a tiny random GPT-2; and the bootstrap module on its own."""

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
from laminae.experiment import CompareJob, ReducerJob
from laminae.metrics.correlation import METHODS, bootstrap_correlations
from laminae.registry import discover
from laminae.stages.analysis import run_analysis
from laminae.stages.figures import run_figures
from laminae.store import ActivationStore, ActivationWriter, RowTable, read_tsv

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = discover()["pathlength"]
UPSTREAM = "feedc0ffee"
SITES = ("attn_out", "mlp_out", "resid_pre", "resid_post")
WINDOWS = (5, 7, 6)            # 18 rows: chunk sizes 4 and 7 do not divide it
N_LAYERS, WIDTH = 3, 6
N_BOOTSTRAP, CONFIDENCE, SEED = 120, 0.9, 3
PER_TOKEN = ("pl_attn", "pl_mlp", "pl_hs", "cumulative", "displacement")
CONTEXT = {"model": "tiny-test", "random_weights": True, "corpus": "toy", "experiment": "pathlength",
           "analysis": {"n_bootstrap": N_BOOTSTRAP, "confidence": CONFIDENCE, "seed": SEED, "during_extraction": False}}


def corpus_rows(windows=WINDOWS) -> list[dict]:
    return [{"document": "doc.txt", "window": w, "position": p, "token_id": 100 + 7 * w + p, "token": f"t{p}"}
            for w, length in enumerate(windows) for p in range(length)]


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    """float32 activations of a chained residual stream (resid_pre[l + 1] = resid_post[l]); the
    step is attn + mlp plus a rescaling (post-LN-like, so PL_hs != |attn + mlp|), and the first
    token of each window is an outlier with a much larger attention output."""
    rng = np.random.default_rng(11)
    n_rows = sum(WINDOWS)
    first = np.array([r["position"] == 0 for r in corpus_rows()])
    attn = rng.normal(size=(N_LAYERS, n_rows, WIDTH))
    attn[:, first] *= 15.0
    mlp = 0.7 * rng.normal(size=attn.shape) + 0.2
    pre = np.empty((N_LAYERS, n_rows, WIDTH), dtype=np.float32)
    post = np.empty_like(pre)
    pre[0] = 5 * rng.normal(size=(n_rows, WIDTH))
    for layer in range(N_LAYERS):
        post[layer] = 0.8 * (pre[layer] + attn[layer] + mlp[layer]) + 0.1 * rng.normal(size=(n_rows, WIDTH))
        if layer + 1 < N_LAYERS:
            pre[layer + 1] = post[layer]
    return {"attn_out": attn.astype(np.float32), "mlp_out": mlp.astype(np.float32), "resid_pre": pre, "resid_post": post}


def write_store(out: Path, data: dict[str, np.ndarray], stage_hash: str = UPSTREAM, random_weights: bool = False
                ) -> Path:
    n_layers, n_rows = data["attn_out"].shape[:2]
    attrs = {"stage_hash": stage_hash, "model_id": "test", "family": "gpt2", "random_weights": random_weights}
    with ActivationWriter(out, n_layers, n_rows, attrs,
                          config_text="stage: corpus.extract\n") as writer:
        for start in range(0, n_rows, 5):
            writer.write(start, {site: values[:, start : start + 5] for site, values in data.items()})
        writer.set_rows(corpus_rows(), ["document", "window", "position", "token_id", "token"])
    return out


def settings(n_bootstrap: int = N_BOOTSTRAP, confidence: float = CONFIDENCE, seed: int = SEED) -> dict:
    return {"n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed, "during_extraction": False}


def stage_record(upstream: str = UPSTREAM, **kwargs) -> dict:
    config = {"pathlength": settings(**kwargs), "stage": "pathlength.analysis", "version": 1, "upstream": upstream}
    return {"stage": "pathlength.analysis", "hash": "a1b2c3d4e5", "config": config}


def analyse(tmp_path: Path, data, name: str = "metrics", chunk_rows: int | None = None, **kwargs) -> Path:
    store = tmp_path / "activations"
    if not store.exists():
        write_store(store, data)
    run_analysis(EXPERIMENT, stage_record(**kwargs), store, tmp_path / name, chunk_rows=chunk_rows)
    return tmp_path / name


def table_rows(path: Path) -> dict[tuple[str, str, int], dict[str, str]]:
    return {(r["metric"], r["tokens"], int(r["layer"])): r for r in read_tsv(path / "pathlength.tsv")}


def cell(text: str) -> float:
    return float(text) if text else math.nan


# ------------------------------------------------------------------------------ naive reference
def naive_lengths(data) -> dict[str, list[list[float]]]:
    """PL_attn, PL_mlp, PL_hs per layer and token with Python loops over the float32 values."""
    def norm(vector) -> float:
        return math.sqrt(sum(float(x) * float(x) for x in vector))

    n_rows = data["attn_out"].shape[1]
    out: dict[str, list[list[float]]] = {"pl_attn": [], "pl_mlp": [], "pl_hs": []}
    for layer in range(N_LAYERS):
        out["pl_attn"].append([norm(data["attn_out"][layer, t]) for t in range(n_rows)])
        out["pl_mlp"].append([norm(data["mlp_out"][layer, t]) for t in range(n_rows)])
        out["pl_hs"].append([norm([float(b) - float(a) for a, b in zip(data["resid_pre"][layer, t],
                                                                          data["resid_post"][layer, t])])
                             for t in range(n_rows)])
    return out


def numpy_paths(data) -> dict[str, np.ndarray]:
    """Cumulative path length and displacement with numpy on the whole float64 arrays."""
    pre, post = data["resid_pre"].astype(np.float64), data["resid_post"].astype(np.float64)
    cumulative = np.cumsum(np.linalg.norm(post - pre, axis=-1), axis=0)
    displacement = np.linalg.norm(post - pre[0][None], axis=-1)
    return {"cumulative": cumulative, "displacement": displacement, "straightness": displacement / cumulative}


def naive_bootstrap(x: list[float], y: list[float], seed: list[int], n_bootstrap: int, confidence: float
                    ) -> dict[str, tuple[float, float]]:
    """Percentile CI of Pearson and Spearman from explicit resamples (scipy on each)."""
    rng = np.random.default_rng(seed)
    x, y = np.array(x), np.array(y)
    replicates: dict[str, list[float]] = {"pearson": [], "spearman": []}
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(x), size=len(x))
        replicates["pearson"].append(scipy.stats.pearsonr(x[idx], y[idx])[0])
        replicates["spearman"].append(scipy.stats.spearmanr(x[idx], y[idx])[0])
    tail = 50 * (1 - confidence)
    return {method: tuple(np.percentile(values, [tail, 100 - tail])) for method, values in replicates.items()}


# ----------------------------------------------------------------------------------- the stage
@pytest.mark.parametrize("chunk_rows", [4, 7])
def test_table_and_tokens_match_naive_computation(tmp_path, data, chunk_rows):
    metrics = analyse(tmp_path, data, chunk_rows=chunk_rows)
    assert sorted(p.name for p in metrics.iterdir()) == ["config.yaml", "pathlength.tsv", "pathlength_tokens.h5"]
    assert (metrics / "pathlength.tsv").read_text().splitlines()[0].split("\t") == [
        "layer", "metric", "tokens", "value", "ci_low", "ci_high", "sem", "n"]
    rows = table_rows(metrics)
    lengths, paths = naive_lengths(data), numpy_paths(data)
    position = [r["position"] for r in corpus_rows()]
    for set_index, (tokens, keep) in enumerate([("all", [True] * len(position)),
                                                ("without_first", [p != 0 for p in position])]):
        for layer in range(N_LAYERS):
            kept = [t for t in range(len(keep)) if keep[t]]
            per_token = {**{name: [lengths[name][layer][t] for t in kept] for name in lengths},
                         **{name: [float(paths[name][layer, t]) for t in kept] for name in paths}}
            for metric, values in per_token.items():
                row = rows[metric, tokens, layer]
                assert int(row["n"]) == len(kept)
                assert float(row["value"]) == pytest.approx(statistics.fmean(values), rel=1e-12)
                assert float(row["sem"]) == pytest.approx(float(scipy.stats.sem(values)), rel=1e-9)
                assert row["ci_low"] == row["ci_high"] == ""
            hs = per_token["pl_hs"]
            for sublayer in ("attn", "mlp"):
                x = per_token[f"pl_{sublayer}"]
                ci = naive_bootstrap(x, hs, [SEED, set_index], N_BOOTSTRAP, CONFIDENCE)
                for method, reference in (("pearson", scipy.stats.pearsonr), ("spearman", scipy.stats.spearmanr)):
                    row = rows[f"{method}_{sublayer}_hs", tokens, layer]
                    assert float(row["value"]) == pytest.approx(reference(x, hs)[0], rel=1e-10, abs=1e-12)
                    assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx(ci[method], rel=1e-9, abs=1e-12)
                    assert int(row["n"]) == len(kept) and row["sem"] == ""
    assert len(rows) == (4 + 6) * 2 * N_LAYERS

    with h5py.File(metrics / "pathlength_tokens.h5") as handle:
        for name in PER_TOKEN:
            assert handle[name].dtype == np.float64 and handle[name].shape == (N_LAYERS, sum(WINDOWS))
        for name in ("pl_attn", "pl_mlp", "pl_hs"):
            np.testing.assert_allclose(handle[name][()], lengths[name], rtol=1e-13)
        for name in ("cumulative", "displacement"):
            np.testing.assert_allclose(handle[name][()], paths[name], rtol=1e-12)
        for column in ("window", "position", "token_id"):
            np.testing.assert_array_equal(handle[column][()], [r[column] for r in corpus_rows()])
        np.testing.assert_array_equal(handle["chain_gap"][()], 0.0)        # the synthetic stream chains exactly
        assert handle.attrs["stage_hash"] == "a1b2c3d4e5" and handle.attrs["activations_stage_hash"] == UPSTREAM
        assert handle.attrs["n_windows"] == len(WINDOWS) and handle.attrs["seed"] == SEED
        assert "config_yaml" in handle.attrs
    assert yaml.safe_load((metrics / "config.yaml").read_text())["config"]["upstream"] == UPSTREAM


def test_first_token_flips_pearson_but_not_spearman_much(tmp_path, data):
    """The outlier first tokens (synthetic): Pearson with them differs from without them more than
    Spearman does; a check that the two token sets really differ, not of any course value."""
    rows = table_rows(analyse(tmp_path, data, chunk_rows=4, n_bootstrap=0))
    pearson = [cell(rows["pearson_attn_hs", t, 1]["value"]) for t in ("all", "without_first")]
    spearman = [cell(rows["spearman_attn_hs", t, 1]["value"]) for t in ("all", "without_first")]
    assert abs(pearson[0] - pearson[1]) > abs(spearman[0] - spearman[1])
    assert rows["pearson_attn_hs", "all", 0]["ci_low"] == ""           # n_bootstrap 0: no CI


def test_streaming_in_uneven_chunks_equals_one_shot(tmp_path, data):
    one_shot = analyse(tmp_path, data, "one", chunk_rows=sum(WINDOWS))
    chunked = analyse(tmp_path, data, "chunked", chunk_rows=7)
    a, b = table_rows(one_shot), table_rows(chunked)
    assert list(a) == list(b)
    for key, row in a.items():
        assert row["n"] == b[key]["n"]
        for column in ("value", "ci_low", "ci_high", "sem"):
            assert cell(b[key][column]) == pytest.approx(cell(row[column]), rel=1e-12, abs=1e-15, nan_ok=True)
    with h5py.File(one_shot / "pathlength_tokens.h5") as x, h5py.File(chunked / "pathlength_tokens.h5") as y:
        for name in PER_TOKEN:
            np.testing.assert_array_equal(x[name][()], y[name][()])

    # the reducer fed directly, in chunks of 1, 6, 2 and 9 rows
    (tmp_path / "direct").mkdir()
    reducer = EXPERIMENT.hook("reducer")(ReducerJob(
        settings=settings(), rows=RowTable(corpus_rows()), n_layers=N_LAYERS, widths=dict.fromkeys(SITES, WIDTH),
        model_attrs={}, out_dir=tmp_path / "direct", attrs={"stage_hash": "x"}))
    for start, stop in [(0, 1), (1, 7), (7, 9), (9, 18)]:
        reducer.update(start, {site: data[site][:, start:stop] for site in SITES})
    reducer.finish()
    direct = table_rows(tmp_path / "direct")
    for key, row in a.items():
        for column in ("value", "ci_low", "ci_high", "sem"):
            assert cell(direct[key][column]) == pytest.approx(cell(row[column]), rel=1e-12, abs=1e-15, nan_ok=True)


def test_without_first_drops_exactly_one_token_per_window(tmp_path, data):
    rows = table_rows(analyse(tmp_path, data, chunk_rows=4))
    metrics = {metric for metric, _, _ in rows}
    assert len(metrics) == 10
    for metric in metrics:
        for layer in range(N_LAYERS):
            assert int(rows[metric, "all", layer]["n"]) - int(rows[metric, "without_first", layer]["n"]) == len(WINDOWS)
    with h5py.File(tmp_path / "metrics" / "pathlength_tokens.h5") as handle:
        assert int((handle["position"][()] == 0).sum()) == len(WINDOWS)


def test_straightness_lies_in_unit_interval(tmp_path, data):
    from laminae.experiments.pathlength.analysis import read_tokens
    from laminae.experiments.pathlength.tokens import token_paths

    arrays, _ = read_tokens(analyse(tmp_path, data, chunk_rows=5) / "pathlength_tokens.h5")
    ratio = arrays["straightness"]
    assert np.isfinite(ratio).all() and (ratio >= 0).all() and (ratio <= 1 + 1e-12).all()
    np.testing.assert_array_equal(ratio[0], 1.0)                         # one step: straight by definition
    assert (ratio[1:] < 1 - 1e-6).any()                                  # and the bound is not trivially met

    # a straight path (every step the same direction) and an out-and-back one
    step = np.array([3.0, 4.0, 0.0])
    pre = np.zeros((3, 2, 3))
    post = np.zeros((3, 2, 3))
    for layer, signs in enumerate([(1, 1), (2, -1), (1, 0.5)]):     # token 0 straight, token 1 out and back
        post[layer] = pre[layer] + np.outer(signs, step)
        if layer < 2:
            pre[layer + 1] = post[layer]
    paths = token_paths(post, post, pre, post)
    np.testing.assert_allclose(paths.straightness[:, 0], 1.0, rtol=1e-15)
    np.testing.assert_allclose(paths.displacement[1, 1], 0.0, atol=1e-15)
    np.testing.assert_allclose(paths.straightness[:, 1], [1.0, 0.0, 0.5 * 5 / (5 + 5 + 2.5)], atol=1e-15)
    np.testing.assert_allclose(paths.cumulative[:, 1], [5.0, 10.0, 12.5])
    np.testing.assert_array_equal(paths.chain_gap, 0.0)
    broken = token_paths(post, post, pre + 1.0, post)                    # resid_pre no longer chains
    assert (broken.chain_gap[1:] > 0.01).all()


def test_store_from_another_config_or_inputs_is_refused(tmp_path, data):
    store = write_store(tmp_path / "activations", data, stage_hash="0000000000")
    with pytest.raises(InputFileError, match="does not match") as error:
        run_analysis(EXPERIMENT, stage_record(), store, tmp_path / "metrics")
    assert "\n" not in str(error.value) and not (tmp_path / "metrics").exists()
    with ActivationWriter(tmp_path / "words", N_LAYERS, 18, {"stage_hash": UPSTREAM}) as writer:
        writer.write(0, data)
        writer.set_rows([{"word": "w", "category": "c"}] * 18, ["word", "category"])
    with pytest.raises(InputFileError, match="'window'"):
        run_analysis(EXPERIMENT, stage_record(), tmp_path / "words", tmp_path / "metrics")
    assert not (tmp_path / "metrics").exists()


def test_bad_settings_fail_with_one_line_naming_the_key(tmp_path, data):
    from laminae.config import load_runs
    from laminae.experiments.pathlength.analysis import check_settings

    for key, value in [("confidence", 1.5), ("n_bootstrap", -1), ("plot.log_lengths", "sometimes")]:
        with pytest.raises(ConfigError, match=f"pathlength.{key}") as error:
            load_runs(["model=tiny-gpt2", "experiments=[pathlength]", f"pathlength.{key}={value}"], project_root=ROOT)
        assert "\n" not in str(error.value)
    for key, value in [("n_bootstrap", 2.5), ("confidence", 0), ("seed", -3)]:
        with pytest.raises(ConfigError, match=f"pathlength.{key}"):
            check_settings({**settings(), key: value})


# ------------------------------------------------------------------------------------- figures
def plot_stage(log_lengths="auto") -> dict:
    config = {"plot": {"dpi": 40}, "pathlength": {"plot": {"log_lengths": log_lengths}},
              "stage": "pathlength.plot", "version": 1, "upstream": "a1b2c3d4e5"}
    return {"stage": "pathlength.plot", "hash": "0123456789", "config": config}


def test_figure_stage_writes_every_declared_figure(tmp_path, data):
    from laminae.experiments.pathlength.figures import plot_correlations, plot_cumulative
    from laminae.experiments.pathlength.table import PathLengthTable
    from laminae.plots.style import save_figure

    metrics = analyse(tmp_path, data, chunk_rows=4)
    figures = tmp_path / "figures"
    written = run_figures(EXPERIMENT, plot_stage(), CONTEXT, metrics, figures)
    expected = sorted([f"{f.name}.{ext}" for f in EXPERIMENT.figures for ext in ("png", "pdf")] + ["config.yaml"])
    assert sorted(p.name for p in figures.iterdir()) == expected == sorted(p.name for p in written)
    for path in figures.glob("pathlength_*"):
        assert path.stat().st_size > 5000, path

    table = PathLengthTable.read(metrics / "pathlength.tsv")
    fig, axes = plot_correlations(table, CONTEXT, family="bert")
    assert len(axes[0].get_lines()) == 1 + 4                             # zero line + 2 methods x 2 token sets
    np.testing.assert_allclose(axes[0].get_lines()[1].get_ydata(), table.get("pearson_attn_hs", "all"))
    assert "RANDOM WEIGHTS" in fig.texts[0].get_text() and "post-LayerNorm" in fig.texts[0].get_text()
    fig, axes = plot_cumulative(table, CONTEXT, log_lengths=True)
    assert axes[0].get_yscale() == axes[1].get_yscale() == "log" and axes[2].get_ylim() == (0.0, 1.04)

    with pytest.raises(ConfigError, match="pathlength.plot.log_lengths"):
        run_figures(EXPERIMENT, plot_stage("sometimes"), CONTEXT, metrics, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()

    random_store = write_store(tmp_path / "random" / "activations", data, random_weights=True)
    other = analyse(tmp_path / "random", data, "other", chunk_rows=5, seed=SEED + 1)
    assert random_store.is_dir()
    comparison = EXPERIMENT.hook("compare")(CompareJob(metrics_dirs=[metrics, other], labels=["seed 3", "seed 4"],
                                                       settings=[settings(), settings(seed=SEED + 1)], plot={}))
    assert len(comparison.axes) == 4 and len(comparison.axes[0].get_lines()) == 1 + 2
    assert [text.get_text() for text in comparison.legends[0].get_texts()] == ["seed 3", "seed 4 (RANDOM WEIGHTS)"]
    assert save_figure(comparison, tmp_path / "compare.png", dpi=40)[0].stat().st_size > 5000


def test_captions_render_to_valid_restructuredtext():
    """Every caption through Jinja (as Snakemake's report does) and docutils, errors fatal."""
    import docutils.core
    import docutils.utils
    import jinja2
    from types import SimpleNamespace

    context = {**CONTEXT, "random_weights": False}
    stage = {"config": {"pathlength": {"plot": {"log_lengths": "auto"}},
                        "runs": [{"label": "model=a", "analysis": "0123456789"}]}}
    snakemake = SimpleNamespace(params=SimpleNamespace(context=context, stage=stage),
                                wildcards=SimpleNamespace(label="nietzsche"))
    captions = [f.caption for f in EXPERIMENT.figures] + [EXPERIMENT.compare_caption]
    for caption in captions:
        text = jinja2.Template(EXPERIMENT.path(caption).read_text()).render(snakemake=snakemake)
        assert "tiny-test" in text or caption.endswith("compare.rst")
        docutils.core.publish_doctree(text, settings_overrides={"halt_level": docutils.utils.Reporter.WARNING_LEVEL,
                                                                "report_level": 5})


# ---------------------------------------------------------------------------- bootstrap module
def test_bootstrap_with_ties_and_blocks_matches_explicit_resamples():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(3, 30))
    values[1, :12] = np.round(values[1, :12])                            # ties in a variable
    values[2] += values[0]
    pairs = [(0, 2), (1, 2), (1, 0)]
    one_block = bootstrap_correlations(values, pairs, n_bootstrap=90, confidence=0.8, seed=[7, 1])
    small_blocks = bootstrap_correlations(values, pairs, n_bootstrap=90, confidence=0.8, seed=[7, 1],
                                          block_elements=4 * 30)        # blocks of 4 replicates
    draws = np.random.default_rng([7, 1])
    reps = np.empty((2, len(pairs), 90))
    for b in range(90):
        idx = draws.integers(0, 30, size=30)
        for p, (i, j) in enumerate(pairs):
            reps[0, p, b] = scipy.stats.pearsonr(values[i][idx], values[j][idx])[0]
            reps[1, p, b] = scipy.stats.spearmanr(values[i][idx], values[j][idx])[0]
    low, high = np.percentile(reps, [10, 90], axis=-1)
    for boot in (one_block, small_blocks):
        np.testing.assert_allclose(boot.ci_low, low, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(boot.ci_high, high, rtol=1e-10, atol=1e-13)
        assert (boot.n_valid == 90).all()
    assert METHODS == ("pearson", "spearman")
    np.testing.assert_allclose(one_block.value[1, 1], scipy.stats.spearmanr(values[1], values[2])[0], rtol=1e-12)


def test_bootstrap_degenerate_inputs():
    constant = bootstrap_correlations(np.array([[1.0, 2, 3, 4], [5.0, 5, 5, 5]]), [(0, 1)], n_bootstrap=20,
                                      confidence=0.95, seed=0)
    assert np.isnan(constant.value).all() and np.isnan(constant.ci_low).all() and (constant.n_valid == 0).all()
    single = bootstrap_correlations(np.array([[1.0], [2.0]]), [(0, 1)], n_bootstrap=5, confidence=0.95, seed=0)
    assert np.isnan(single.value).all() and single.n_items == 1
    two = bootstrap_correlations(np.array([[1.0, 2.0], [1.0, 3.0]]), [(0, 1)], n_bootstrap=200, confidence=0.95, seed=0)
    assert (two.value == 1.0).all() and (two.n_valid < 200).all()      # resamples of one item drawn twice: NaN
    with pytest.raises(ValueError, match="finite"):
        bootstrap_correlations(np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]]), [(0, 1)], n_bootstrap=1,
                               confidence=0.9, seed=0)


# --------------------------------------------------------------------- during extraction, GPT-2
SMALL = ["model=tiny-gpt2", "experiments=[pathlength]", "corpus.window_tokens=100", "batch_size=2", "device=cpu",
         "pathlength.n_bootstrap=200"]


def test_during_extraction_equals_two_stage_on_tiny_gpt2(tmp_path, models_dir):
    """Same numbers whether the reducer runs on the model's batches or on the stored activations;
    on GPT-2 (pre-LayerNorm, blocks in sequence) PL_hs = |attn_out + mlp_out| and the path chains."""
    from laminae.config import load_runs
    from laminae.experiments.pathlength.analysis import read_tokens
    from laminae.stages.extract import extract

    def pipeline(out: Path, *overrides: str):
        (run,) = load_runs([*SMALL, f"models_dir={models_dir}", *overrides], project_root=ROOT)
        record = {name: {"stage": s.name, "hash": s.hash, "config": s.config} for name, s in run.stages.items()}
        extract(record["corpus.extract"], run.runtime, out / "activations", ROOT, discover())
        run_analysis(EXPERIMENT, record["pathlength.analysis"], out / "activations", out / "metrics", run.runtime)
        return out / "activations", out / "metrics"

    stored, two_stage = pipeline(tmp_path / "two")
    inline, during = pipeline(tmp_path / "during", "pathlength.during_extraction=true")
    assert sorted(p.name for p in inline.iterdir()) == ["config.yaml", "fidelity.tsv", "reductions", "rows.tsv"]
    expected, actual = table_rows(two_stage), table_rows(during)
    assert list(actual) == list(expected)
    for key, row in expected.items():
        assert actual[key]["n"] == row["n"]
        for column in ("value", "ci_low", "ci_high", "sem"):
            assert cell(actual[key][column]) == pytest.approx(cell(row[column]), rel=1e-9, abs=1e-12, nan_ok=True), key
    assert int(expected["pl_hs", "all", 0]["n"]) == 346 and int(expected["pl_hs", "without_first", 0]["n"]) == 342

    a, attrs_a = read_tokens(two_stage / "pathlength_tokens.h5")
    b, attrs_b = read_tokens(during / "pathlength_tokens.h5")
    for name in (*PER_TOKEN, "window", "position", "token_id"):
        np.testing.assert_allclose(b[name], a[name], rtol=1e-12)
    assert attrs_b["computed_during_extraction"] and "computed_during_extraction" not in attrs_a
    assert attrs_b["activations_family"] == attrs_a["activations_family"] == "gpt2"

    store = ActivationStore(stored, expected_hash=attrs_a["activations_stage_hash"])
    attn, mlp = store.read("attn_out"), store.read("mlp_out")
    np.testing.assert_allclose(a["pl_hs"], np.linalg.norm(attn + mlp, axis=-1), rtol=1e-4)
    assert (a["chain_gap"] == 0).all()
    assert (a["straightness"] >= 0).all() and (a["straightness"] <= 1 + 1e-12).all()


def test_resources_grow_with_tokens_and_resamples():
    from laminae.experiment import JobShape

    hook = EXPERIMENT.hook("resources")
    small = JobShape(n_layers=36, d_model=1280, n_rows=10_000, bytes_per_value=4, n_sites=4)
    large = JobShape(n_layers=36, d_model=1280, n_rows=1_000_000, bytes_per_value=4, n_sites=4)
    few, many = {"pathlength": {"n_bootstrap": 10}}, {"pathlength": {"n_bootstrap": 1000}}
    assert hook("analysis", large, many)["runtime"] > hook("analysis", large, few)["runtime"] > hook("analysis", small, few)["runtime"]
    # a million tokens, 1000 resamples, 36 layers x 2 token sets at >= 0.7 us per token-resample (measured)
    assert hook("analysis", large, many)["runtime"] >= 36 * 2 * 1000 * 1e6 * 0.7e-6 / 60
    assert hook("analysis", large, many)["mem_mb"] >= 1e6 * 200 / 2**20
    assert hook("plot", large, many)["mem_mb"] < hook("analysis", large, many)["mem_mb"]
