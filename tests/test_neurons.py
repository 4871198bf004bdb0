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
    min_detectable,
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


def test_min_detectable_is_the_bh_floor():
    """k units at the smallest permutation p (the rest at 1) pass BH exactly when k >= the floor."""
    for n_units, n_perm, alpha in [(1536, 1000, 0.05), (1536, 10000, 0.05), (12, 200, 0.05), (40, 99, 0.1)]:
        floor = min_detectable(n_units, n_perm, alpha)
        for k in (floor - 1, floor):
            if k < 1:
                continue
            p = np.r_[np.full(k, 1 / (1 + n_perm)), np.ones(n_units - k)]
            passed = int((scipy.stats.false_discovery_control(p, method="bh") <= alpha).sum())
            assert passed == (k if k >= floor else 0)


def test_bad_shuffles_are_refused():
    labels = np.repeat([0, 1, 2], 3)
    with pytest.raises(ValueError, match="rearrangement"):
        unit_category_test(np.zeros((9, 2)), labels, np.zeros((3, 9), dtype=int))
    with pytest.raises(ValueError, match="n_null_draws"):
        unit_category_test(np.zeros((9, 2)), labels, permuted_labels(labels, 3, np.random.default_rng(0)), n_null_draws=4)


# ------------------------------------------------------------------ the experiment, through its stages
from laminae.stages.analysis import run_analysis  # noqa: E402
from laminae.stages.figures import run_figures  # noqa: E402
from laminae.store import ActivationWriter, read_tsv  # noqa: E402

UPSTREAM = "f00dfeed00"
CATEGORIES = {"fruit": 6, "space": 5, "furniture": 7}
WIDTHS = {"mlp_post": 40, "q": 12, "k": 8, "v": 8}
SETTINGS = {"sites": ["mlp_post", "q", "k", "v"], "n_permutations": 200, "n_null_draws": 20, "alpha": 0.05,
            "confidence": 0.95, "seed": 0, "top_site": "mlp_post", "top_k": 3, "top_words": 4}
CONTEXT = {"model": "tiny-test", "random_weights": True, "stimuli": "toy", "template": "A {word}.",
           "position": "target_last", "experiment": "neurons", "analysis": SETTINGS}


@pytest.fixture(scope="module")
def experiment():
    """The declaration as the registry completes it (module and folder), checked like the
    registry does; built directly so that another experiment's state cannot break these tests."""
    import dataclasses
    from pathlib import Path

    import laminae.experiments.neurons as package
    from laminae.registry import check_declaration

    declared = dataclasses.replace(package.EXPERIMENT, module=package.__name__, folder=Path(package.__file__).parent)
    check_declaration(declared, "src/laminae/experiments/neurons")
    return declared


def stimuli(n_layers=3, seed=0):
    """Words, labels and activations with planted units: mlp_post units 0-5 prefer fruit in
    layer 2 only, q dimensions 0-1 prefer space everywhere; the rest noise. (With 200
    permutations BH over 12 units finds no fewer than 2: `min_detectable`.)"""
    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    labels = np.repeat(np.arange(3), list(CATEGORIES.values()))
    words = [f"{names[c]}{i}" for i, c in enumerate(labels)]
    data = {site: rng.normal(size=(n_layers, labels.size, width)) for site, width in WIDTHS.items()}
    data["mlp_post"][2, :, :6] += 4.0 * (labels == 0)[:, None]
    data["q"][:, :, :2] += 4.0 * (labels == 1)[:, None]
    data["mlp_post"][:, :, 39] = 0.0                      # a dead neuron
    return words, labels, names, data


def write_stimuli_store(out, words, labels, names, data):
    n_layers, n_rows = data["q"].shape[:2]
    with ActivationWriter(out, n_layers, n_rows, {"stage_hash": UPSTREAM, "model_id": "test"},
                          config_text="stage: stimuli.extract\n") as writer:
        writer.write(0, {site: values.astype(np.float32) for site, values in data.items()})
        writer.set_rows([{"word": w, "category": names[c]} for w, c in zip(words, labels)], ["word", "category"])
    return out


def stage_record(settings=SETTINGS):
    config = {"neurons": dict(settings), "stage": "neurons.analysis", "version": 1, "upstream": UPSTREAM}
    return {"stage": "neurons.analysis", "hash": "a1b2c3d4e5", "config": config}


@pytest.fixture(scope="module")
def metrics(tmp_path_factory, experiment):
    words, labels, names, data = stimuli()
    root = tmp_path_factory.mktemp("neurons")
    store = write_stimuli_store(root / "activations", words, labels, names, data)
    run_analysis(experiment, stage_record(), store, root / "metrics")
    return root / "metrics", (words, labels, names, {s: v.astype(np.float32).astype(np.float64) for s, v in data.items()})


def test_laminar_table_matches_an_independent_computation(metrics):
    """Every (site, layer) count recomputed with scipy: f_oneway per unit, p from the same
    shuffles counted in a loop, BH with false_discovery_control, Clopper-Pearson with binomtest."""
    folder, (words, labels, names, data) = metrics
    rows = {(int(r["layer"]), r["site"], r["category"]): r for r in read_tsv(folder / "neurons_laminar.tsv")}
    shuffles = permuted_labels(labels, SETTINGS["n_permutations"], np.random.default_rng(SETTINGS["seed"]))
    for site in ("mlp_post", "q"):
        for layer in range(3):
            x = data[site][layer]
            f = lambda lab: scipy.stats.f_oneway(*[x[lab == c] for c in range(3)], axis=0).statistic  # noqa: E731
            observed = f(labels)                                                  # (n_units,)
            exceed = sum((f(s) >= observed * (1 - 1e-12)).astype(int) for s in shuffles)
            p = np.where(np.ptp(x, axis=0) == 0, 1.0, (1 + exceed) / (1 + len(shuffles)))
            q = scipy.stats.false_discovery_control(np.array(p), method="bh")
            k = int((q <= SETTINGS["alpha"]).sum())
            row = rows[(layer, site, "all")]
            assert int(row["n_selective"]) == k and int(row["n_units"]) == x.shape[1]
            assert int(row["n_uncorrected"]) == int((np.array(p) < SETTINGS["alpha"]).sum())
            ci = scipy.stats.binomtest(k, x.shape[1]).proportion_ci(0.95, method="exact")
            assert float(row["ci_low"]) == pytest.approx(ci.low, abs=1e-9)
            assert float(row["ci_high"]) == pytest.approx(ci.high, abs=1e-9)
    assert int(rows[(2, "mlp_post", "all")]["n_selective"]) >= 6
    assert int(rows[(2, "mlp_post", "fruit")]["n_selective"]) >= 6
    assert int(rows[(0, "mlp_post", "all")]["n_selective"]) <= 2
    assert int(rows[(0, "q", "space")]["n_selective"]) >= 1
    assert int(rows[(0, "mlp_post", "all")]["n_constant"]) == 1
    assert all(0 <= float(r["null_mean"]) <= float(r["null_high"]) <= 0.2
               for key, r in rows.items() if key[2] == "all")


def test_top_units_are_the_planted_ones_with_their_words(metrics):
    folder, (words, labels, names, data) = metrics
    top = read_tsv(folder / "neurons_top.tsv")
    fruit = [r for r in top if r["category"] == "fruit"]
    assert len(fruit) == 3 and all(int(r["layer"]) == 2 and int(r["unit"]) < 6 for r in fruit)
    for r in top:
        values = data["mlp_post"][int(r["layer"]), :, int(r["unit"])]
        c = names.index(r["category"])
        inside, rest = values[labels == c], values[labels != c]
        assert float(r["t"]) == pytest.approx(scipy.stats.ttest_ind(inside, rest).statistic, rel=1e-6)
        assert r["top_words"].split(", ") == [words[i] for i in np.argsort(-values, kind="stable")[:4]]
    d = [float(r["cohens_d"]) for r in fruit]
    assert d == sorted(d, reverse=True)
    per_word = read_tsv(folder / "neurons_top_words.tsv")
    assert len(per_word) == len(top) * len(words)


def test_measures_and_figures(metrics, experiment, tmp_path):
    from laminae.experiment import MeasureJob

    folder, _ = metrics
    measured = experiment.hook("measure")(MeasureJob(metrics_dir=folder, settings=SETTINGS))
    assert set(measured) == {f"{kind}:{site}" for kind in ("fraction", "null_fraction") for site in WIDTHS}
    assert {m.name for m in experiment.measures} >= set(measured)
    assert measured["fraction:mlp_post"].has_interval and measured["fraction:mlp_post"].n_layers == 3
    record = {"stage": "neurons.plot", "hash": "0123456789",
              "config": {"plot": {"dpi": 60}, "neurons": {"plot": {"per_category": True}}, "stage": "neurons.plot",
                         "version": 1, "upstream": "a1b2c3d4e5"}}
    written = run_figures(experiment, record, CONTEXT, folder, tmp_path / "figures")
    assert {p.name for p in written} >= {"neurons_laminar.png", "neurons_top.pdf"}


def test_compare_overlays_runs(metrics, experiment):
    from laminae.experiment import CompareJob

    folder, _ = metrics
    job = CompareJob(metrics_dirs=[folder, folder], labels=["a", "b"], settings=[SETTINGS, SETTINGS],
                     plot={"per_category": True})
    fig = experiment.hook("compare")(job)
    assert len(fig.axes) == 4 and len(fig.axes[0].lines) == 3       # 2 x 2 panels; alpha line + two runs


def test_bad_config_is_one_line_before_work():
    from laminae.errors import ConfigError
    from laminae.experiments.neurons import validate

    cfg = {"neurons": {**SETTINGS, "top_site": "q", "sites": ["mlp_post"]}}
    with pytest.raises(ConfigError, match="neurons.top_site"):
        validate(cfg)
    with pytest.raises(ConfigError, match="neurons.n_null_draws"):
        validate({"neurons": {**SETTINGS, "n_null_draws": 500}})


# ------------------------------------------------------------------ end to end: a tiny model, a sweep
@pytest.mark.slow
def test_a_sweep_on_a_tiny_model_runs_end_to_end_and_overlays(tmp_path, built_models):
    """Snakemake on tiny-gpt2 with the experiment alone, swept over alpha: both runs' metrics and
    figures, the comparison figure; the stored mlp_post is d_mlp (4 x 64) wide, and one layer's
    count of selective neurons is recomputed from the stored activations with scipy."""
    import yaml

    from laminae.store import ActivationStore
    from workflow_helpers import snakemake

    overrides = ["model=tiny-gpt2", "experiments=[neurons]", "neurons.n_permutations=200", "neurons.n_null_draws=10",
                 built_models]
    snakemake(tmp_path, overrides, "--cores", "2", sweep=["neurons.alpha=0.05,0.2"])
    tables = sorted((tmp_path / "results").glob("**/neurons/analysis-*/metrics/neurons_laminar.tsv"))
    assert len(tables) == 2
    (sweep,) = (tmp_path / "results" / "sweeps").glob("neurons-*")
    assert (sweep / "compare_neurons.png").stat().st_size > 0
    assert len(list((tmp_path / "results").glob("**/neurons/analysis-*/plot-*/figures/neurons_top.png"))) == 2
    (activations,) = {p for p in (tmp_path / "results").glob("**/activations") if (p / "rows.tsv").exists()}
    store = ActivationStore(activations)
    mlp = store.read("mlp_post", layers=[1])[0]                          # (n_words, 256)
    assert mlp.shape[1] == 256
    names = list(dict.fromkeys(store.column("category")))
    labels = np.array([names.index(c) for c in store.column("category")])
    shuffles = permuted_labels(labels, 200, np.random.default_rng(0))
    f = lambda lab: scipy.stats.f_oneway(*[mlp[lab == c] for c in range(len(names))], axis=0).statistic  # noqa: E731
    observed = f(labels)
    exceed = sum((f(s) >= observed * (1 - 1e-12)).astype(int) for s in shuffles)
    p = np.where(np.ptp(mlp, axis=0) == 0, 1.0, (1 + exceed) / 201)
    for table in tables:
        record = yaml.safe_load((table.parent / "config.yaml").read_text())
        alpha = float(record.get("config", record)["neurons"]["alpha"])
        expected = int((scipy.stats.false_discovery_control(p, method="bh") <= alpha).sum())
        row = next(r for r in read_tsv(table) if r["layer"] == "1" and r["site"] == "mlp_post" and r["category"] == "all")
        assert int(row["n_selective"]) == expected and int(row["n_units"]) == 256
