"""Experiment `probes`: cross-validated linear decoding per layer (laminae.metrics.decoding).

The CV scores against a hand-written loop of fits (numpy standardisation, a bare
LogisticRegression, accuracy and balanced accuracy counted by hand) on the same folds; the folds
(no group in two folds, contiguous stretches); the permutations (groups respected); the
permutation p-value against its definition; the t interval against scipy; a planted decodable
layer found and pure noise at chance with p-values spread over (0, 1]; the analysis through the
real stages on a store written here, its measures, figures and compare hook; a sweep end to end
on a tiny random model (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from laminae.metrics.decoding import (
    chance_scores,
    check_folds,
    contiguous_folds,
    cross_validate,
    decode_layers,
    fold_interval,
    group_folds,
    permute_labels,
)


@pytest.fixture(autouse=True)
def one_thread():
    """The manual loops on one BLAS thread, as decode_layers runs (threads only slow these small fits)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def planted(n_layers=4, per_class=(6, 5, 7), width=10, signal_layer=2, strength=3.0, copies=1, seed=0):
    """Rows of words in 3 classes (each word `copies` times: several templates), noise except a
    class-dependent mean shift at `signal_layer`; a word's copies share its mean."""
    rng = np.random.default_rng(seed)
    labels_w = np.repeat(np.arange(3), per_class)
    words_w = np.arange(labels_w.size)
    word_means = rng.normal(size=(n_layers, labels_w.size, width))
    if signal_layer is not None:
        word_means[signal_layer, :, :3] += strength * np.eye(3)[labels_w]
    labels = np.repeat(labels_w, copies)
    words = np.repeat(words_w, copies)
    x = word_means[:, words] + 0.3 * rng.normal(size=(n_layers, words.size, width))
    return x, labels, words


def manual_scores(x, labels, folds, c=1.0):
    """Standardise with numpy on the training rows, fit a bare LogisticRegression, count by hand."""
    from sklearn.linear_model import LogisticRegression

    acc, bal = [], []
    for train, test in folds:
        mean, std = x[train].mean(axis=0), x[train].std(axis=0)
        std[std == 0] = 1.0
        model = LogisticRegression(C=c, max_iter=1000).fit((x[train] - mean) / std, labels[train])
        predicted = model.predict((x[test] - mean) / std)
        acc.append(np.mean(predicted == labels[test]))
        recalls = [np.mean(predicted[labels[test] == k] == k) for k in np.unique(labels[test])]
        bal.append(np.mean(recalls))
    return np.array(acc), np.array(bal)


# ------------------------------------------------------------------------------ folds
def test_group_folds_never_split_a_group_and_cover_every_row():
    x, labels, words = planted(copies=3)
    folds = group_folds(labels, words, 5, seed=1)
    assert len(folds) == 5
    seen = np.concatenate([test for _, test in folds])
    assert sorted(seen.tolist()) == list(range(labels.size))
    for train, test in folds:
        assert not set(words[train]) & set(words[test])
        assert set(train.tolist()) | set(test.tolist()) == set(range(labels.size))
    check_folds(folds, words, labels.size)
    # a row-level split would put copies of a word on both sides: check_folds says so
    bad = [(np.arange(1, labels.size), np.array([0]))]
    with pytest.raises(ValueError, match="group"):
        check_folds(bad, words, labels.size)
    with pytest.raises(ValueError, match="groups"):
        group_folds(labels[:6], words[:6], 5)          # 2 words, 5 folds


def test_contiguous_folds_are_stretches_of_whole_blocks():
    blocks = np.repeat(np.arange(12), [5, 3, 8, 2, 6, 6, 4, 7, 1, 5, 5, 4])
    folds = contiguous_folds(blocks, 4)
    check_folds(folds, blocks, blocks.size)
    for train, test in folds:
        assert np.all(np.diff(test) == 1)                         # one stretch
        assert not set(blocks[train]) & set(blocks[test])         # no block split
    sizes = [test.size for _, test in folds]
    assert sum(sizes) == blocks.size and max(sizes) - min(sizes) <= 8
    with pytest.raises(ValueError, match="order"):
        contiguous_folds(blocks[::-1], 3)
    with pytest.raises(ValueError, match="blocks"):
        contiguous_folds(np.zeros(10), 2)


def test_permutations_respect_groups():
    rng = np.random.default_rng(0)
    _, labels, words = planted(copies=3)
    for _ in range(20):
        shuffled = permute_labels(labels, words, rng, "group")
        for w in np.unique(words):
            assert np.unique(shuffled[words == w]).size == 1          # a word keeps one label
        assert np.array_equal(np.bincount(shuffled), np.bincount(labels))
    blocks = np.repeat(np.arange(4), 10)
    tags = rng.integers(0, 5, size=40)
    moved = False
    for _ in range(10):
        shuffled = permute_labels(tags, blocks, rng, "within")
        for b in range(4):
            assert sorted(shuffled[blocks == b]) == sorted(tags[blocks == b])
        moved |= not np.array_equal(shuffled, tags)
    assert moved
    with pytest.raises(ValueError, match="one label per group"):
        permute_labels(tags, blocks, rng, "group")


# ------------------------------------------------------------------------------ scores
def test_cross_validated_scores_match_a_manual_loop():
    x, labels, words = planted(copies=2)
    folds = group_folds(labels, words, 4, seed=0)
    for layer in range(x.shape[0]):
        scores = cross_validate(x[layer], labels, folds, c=0.5)
        acc, bal = manual_scores(x[layer], labels, folds, c=0.5)
        np.testing.assert_allclose(scores[0], acc, atol=1e-12)
        np.testing.assert_allclose(scores[1], bal, atol=1e-12)


def test_chance_and_interval_match_their_definitions():
    labels = np.array([0] * 8 + [1] * 5 + [2] * 3)
    folds = [(np.setdiff1d(np.arange(16), t), t) for t in np.array_split(np.random.default_rng(2).permutation(16), 4)]
    folds = [(np.sort(a), np.sort(b)) for a, b in folds]
    expected_acc, expected_bal = [], []
    for train, test in folds:
        majority = np.bincount(labels[train]).argmax()
        expected_acc.append(np.mean(labels[test] == majority))
        expected_bal.append(1 / len(set(labels[test])))
    np.testing.assert_allclose(chance_scores(labels, folds), [np.mean(expected_acc), np.mean(expected_bal)])
    scores = np.random.default_rng(0).uniform(size=(3, 5))
    low, high = fold_interval(scores, 0.9)
    for row, lo, hi in zip(scores, low, high):
        ref = scipy.stats.t.interval(0.9, 4, loc=row.mean(), scale=scipy.stats.sem(row))
        assert (lo, hi) == pytest.approx(ref, rel=1e-12)


def test_permutation_p_value_follows_its_definition():
    """The null recomputed by hand: the same shuffles (same generator, drawn in order), each a
    full manual cross-validation; p = (1 + #{null >= observed}) / (1 + n)."""
    x, labels, words = planted(n_layers=2, signal_layer=None, strength=0.0, seed=4)
    x[1, :, 0] += 0.8 * labels                       # a weak signal: p neither minimal nor 1
    folds = group_folds(labels, words, 3, seed=0)
    n = 15
    result = decode_layers(x, labels, folds, groups=words, n_permutations=n, unit="group", seed=7)
    rng = np.random.default_rng(7)
    shuffles = [permute_labels(labels, words, rng, "group") for _ in range(n)]
    for layer in range(2):
        observed = manual_scores(x[layer], labels, folds)[0].mean()
        null = np.array([manual_scores(x[layer], s, folds)[0].mean() for s in shuffles])
        np.testing.assert_allclose(result.null["accuracy"][layer], null, atol=1e-12)
        assert result.mean("accuracy")[layer] == pytest.approx(observed, abs=1e-12)
        assert result.p_value["accuracy"][layer] == pytest.approx((1 + np.sum(null >= observed - 1e-12)) / (1 + n))


def test_planted_layer_is_found_and_noise_is_at_chance():
    x, labels, words = planted(n_layers=5, signal_layer=3, strength=6.0, copies=2)
    folds = group_folds(labels, words, 5, seed=0)
    result = decode_layers(x, labels, folds, groups=words, n_permutations=19, seed=0)
    acc, p = result.mean("accuracy"), result.p_value["accuracy"]
    assert int(np.argmax(acc)) == 3 and acc[3] > 0.9
    assert p[3] == pytest.approx(1 / 20)                 # beats every shuffle
    noise = [0, 1, 2, 4]
    assert np.all(acc[noise] < 0.7) and np.all(p[noise] > 0.05)
    assert result.chance["accuracy"] == pytest.approx(chance_scores(labels, folds)[0])


@pytest.mark.slow
def test_no_signal_gives_chance_accuracy_and_spread_p_values():
    """30 noise layers: mean accuracy near chance (1/3 of balanced classes), p-values not piled up
    near 0 (their mean near 1/2, at most a few below 0.05)."""
    x, labels, words = planted(n_layers=30, per_class=(10, 10, 10), width=4, signal_layer=None)
    folds = group_folds(labels, words, 5, seed=0)
    result = decode_layers(x, labels, folds, groups=words, n_permutations=9, seed=1)
    assert abs(result.mean("balanced_accuracy").mean() - 1 / 3) < 0.07
    p = result.p_value["accuracy"]
    assert 0.35 < p.mean() < 0.65 and np.sum(p <= 0.1) <= 7
    assert scipy.stats.kstest(p, "uniform").pvalue > 0.001


# ------------------------------------------------------------------ the experiment, through its stages
from laminae.stages.analysis import run_analysis  # noqa: E402
from laminae.stages.figures import run_figures  # noqa: E402
from laminae.store import ActivationWriter, read_tsv  # noqa: E402

UPSTREAM = "f00dfeed00"
NAMES = ["fruit", "space", "furniture"]
SETTINGS = {"sites": ["resid_post", "mlp_out"], "n_folds": 4, "n_permutations": 9, "c": 1.0, "max_iter": 1000,
            "confidence": 0.95, "seed": 0}
CONTEXT = {"model": "tiny-test", "random_weights": True, "stimuli": "toy", "template": "A {word}.",
           "position": "target_last", "experiment": "probes", "analysis": SETTINGS}


@pytest.fixture(scope="module")
def experiment():
    import dataclasses
    from pathlib import Path

    import laminae.experiments.probes as package
    from laminae.registry import check_declaration

    declared = dataclasses.replace(package.EXPERIMENT, module=package.__name__, folder=Path(package.__file__).parent)
    check_declaration(declared, "src/laminae/experiments/probes")
    return declared


@pytest.fixture(scope="module")
def metrics(tmp_path_factory, experiment):
    x, labels, words = planted(n_layers=3, signal_layer=1, strength=3.0)
    data = {"resid_post": x, "attn_out": x[:, :, :4] * 0.5, "mlp_out": x[:, :, ::-1].copy()}
    root = tmp_path_factory.mktemp("probes")
    with ActivationWriter(root / "activations", 3, labels.size, {"stage_hash": UPSTREAM, "model_id": "test"},
                          config_text="stage: stimuli.extract\n") as writer:
        writer.write(0, {site: values.astype(np.float32) for site, values in data.items()})
        writer.set_rows([{"word": f"w{w}", "category": NAMES[c]} for w, c in zip(words, labels)], ["word", "category"])
    config = {"probes": dict(SETTINGS), "stage": "probes.analysis", "version": 1, "upstream": UPSTREAM}
    run_analysis(experiment, {"stage": "probes.analysis", "hash": "a1b2c3d4e5", "config": config},
                 root / "activations", root / "metrics")
    stored = {s: v.astype(np.float32).astype(np.float64) for s, v in data.items()}
    return root / "metrics", (stored, labels, np.array([f"w{w}" for w in words]))


def test_tables_match_an_independent_computation(metrics):
    """Every (site, layer) mean recomputed from the manual loop on folds rebuilt from the rows;
    the null's p-values with BH from scipy."""
    folder, (data, labels, words) = metrics
    rows = {(r["site"], r["score"], int(r["layer"])): r for r in read_tsv(folder / "probes_laminar.tsv")}
    folds = group_folds(labels, words, 4, seed=0)
    for site in SETTINGS["sites"]:
        p = []
        for layer in range(3):
            acc, bal = manual_scores(data[site][layer], labels, folds)
            assert float(rows[(site, "accuracy", layer)]["value"]) == pytest.approx(acc.mean(), abs=1e-12)
            assert float(rows[(site, "balanced_accuracy", layer)]["value"]) == pytest.approx(bal.mean(), abs=1e-12)
            p.append(float(rows[(site, "accuracy", layer)]["p_value"]))
        q = scipy.stats.false_discovery_control(p, method="bh")
        np.testing.assert_allclose([float(rows[(site, "accuracy", layer)]["q_value"]) for layer in range(3)], q)
        assert float(rows[(site, "accuracy", 1)]["value"]) >= 0.85 and float(rows[(site, "accuracy", 1)]["p_value"]) == 0.1
    per_fold = read_tsv(folder / "probes_folds.tsv")
    assert len(per_fold) == 2 * 2 * 3 * 4
    assert sum(int(r["n_test"]) for r in per_fold if r["layer"] == "0" and r["score"] == "accuracy"
               and r["site"] == "resid_post") == labels.size


def test_measures_figures_and_compare(metrics, experiment, tmp_path):
    from laminae.experiment import CompareJob, MeasureJob

    folder, _ = metrics
    measured = experiment.hook("measure")(MeasureJob(metrics_dir=folder, settings=SETTINGS))
    assert set(measured) == {f"{k}:{s}" for k in ("accuracy", "balanced_accuracy", "null_accuracy")
                             for s in SETTINGS["sites"]}
    assert {m.name for m in experiment.measures} >= set(measured)
    assert measured["accuracy:resid_post"].has_interval and measured["accuracy:resid_post"].n_layers == 3
    record = {"stage": "probes.plot", "hash": "0123456789",
              "config": {"plot": {"dpi": 60}, "probes": {"plot": {"alpha": 0.05}}, "stage": "probes.plot",
                         "version": 1, "upstream": "a1b2c3d4e5"}}
    written = run_figures(experiment, record, CONTEXT, folder, tmp_path / "figures")
    assert {p.name for p in written} >= {"probes_laminar.png", "probes_laminar.pdf"}
    job = CompareJob(metrics_dirs=[folder, folder], labels=["a", "b"], settings=[SETTINGS, SETTINGS],
                     plot={"alpha": 0.05})
    fig = experiment.hook("compare")(job)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4          # two runs: a line and a chance each


def test_bad_config_is_one_line_before_work():
    from laminae.errors import ConfigError
    from laminae.experiments.probes import validate

    cfg = {"probes": {**SETTINGS, "n_folds": 40}, "stimuli": {"categories": {"a": ["x", "y"], "b": ["z", "w"]}}}
    with pytest.raises(ConfigError, match="probes.n_folds"):
        validate(cfg)


# ------------------------------------------------------------------ end to end: a tiny model, a sweep
@pytest.mark.slow
def test_a_sweep_on_a_tiny_model_runs_end_to_end_and_overlays(tmp_path, built_models):
    """Snakemake on tiny-gpt2 with the experiment alone, swept over C: both runs' tables and
    figures, the comparison figure; one layer's accuracy recomputed from the stored resid_post
    with the manual loop."""
    import yaml

    from laminae.store import ActivationStore
    from workflow_helpers import snakemake

    overrides = ["model=tiny-gpt2", "experiments=[probes]", "probes.n_permutations=3", built_models]
    snakemake(tmp_path, overrides, "--cores", "2", sweep=["probes.c=0.1,1.0"])
    tables = sorted((tmp_path / "results").glob("**/probes/analysis-*/metrics/probes_laminar.tsv"))
    assert len(tables) == 2
    (sweep,) = (tmp_path / "results" / "sweeps").glob("probes-*")
    assert (sweep / "compare_probes.png").stat().st_size > 0
    assert len(list((tmp_path / "results").glob("**/probes/analysis-*/plot-*/figures/probes_laminar.png"))) == 2
    (activations,) = {p for p in (tmp_path / "results").glob("**/activations") if (p / "rows.tsv").exists()}
    store = ActivationStore(activations)
    x = store.read("resid_post", layers=[1])[0]
    names = list(dict.fromkeys(store.column("category")))
    labels = np.array([names.index(c) for c in store.column("category")])
    folds = group_folds(labels, store.column("word"), 5, seed=0)
    for table in tables:
        record = yaml.safe_load((table.parent / "config.yaml").read_text())
        c = float(record.get("config", record)["probes"]["c"])
        acc, _ = manual_scores(x, labels, folds, c=c)
        row = next(r for r in read_tsv(table) if r["layer"] == "1" and r["score"] == "accuracy")
        assert float(row["value"]) == pytest.approx(acc.mean(), abs=1e-9)


# ------------------------------------------------------------------ pos_probes: the corpus counterpart
def write_corpus_store(out, x, rows):
    with ActivationWriter(out, x.shape[0], x.shape[1], {"stage_hash": UPSTREAM, "model_id": "test"},
                          config_text="stage: corpus.extract\n") as writer:
        writer.write(0, {"resid_post": x.astype(np.float32)})
        writer.set_rows(rows, ["document", "window", "position", "token_id", "token"])
    return out


@pytest.mark.parametrize("max_rows", [None, 90])
def test_pos_probes_analysis_matches_a_manual_loop(tmp_path, monkeypatch, max_rows):
    """A corpus store of 10 windows x 12 tokens; tags planted (decodable at layer 1 only), one
    untagged row per window, a rare tag; the table against the manual loop on contiguous folds of
    the kept rows (all, or the first max_rows), and pos_tags.tsv's counts."""
    import dataclasses
    from pathlib import Path

    import laminae.experiments.pos_probes as package
    import laminae.experiments.pos_probes.analysis as pos_analysis
    from laminae.registry import check_declaration

    experiment = dataclasses.replace(package.EXPERIMENT, module=package.__name__, folder=Path(package.__file__).parent)
    check_declaration(experiment, "src/laminae/experiments/pos_probes")
    rng = np.random.default_rng(5)
    n_windows, length = 10, 12
    window = np.repeat(np.arange(n_windows), length)
    position = np.tile(np.arange(length), n_windows)
    names = np.array(["NOUN", "VERB", "DET"])
    codes = rng.integers(0, 3, size=window.size)
    tags = names[codes].astype(object)
    tags[position == 5] = ""                       # untagged (whitespace)
    tags[[7, 30]] = "INTJ"                         # rare
    x = rng.normal(size=(3, window.size, 6))
    x[1, :, :3] += 4.0 * np.eye(3)[codes]
    rows = [{"document": "doc", "window": int(w), "position": int(p), "token_id": 1, "token": "t"}
            for w, p in zip(window, position)]
    store = write_corpus_store(tmp_path / "activations", x, rows)
    monkeypatch.setattr(pos_analysis, "row_tags", lambda job, n: list(tags[:n]))
    settings = {"max_rows": max_rows, "exclude_first_token": True, "min_count": 3, "n_folds": 4, "n_permutations": 4,
                "c": 1.0, "max_iter": 1000, "confidence": 0.95, "seed": 0}
    config = {"pos_probes": settings, "stage": "pos_probes.analysis", "version": 1, "upstream": UPSTREAM}
    run_analysis(experiment, {"stage": "pos_probes.analysis", "hash": "a1b2c3d4e5", "config": config},
                 store, tmp_path / "metrics")
    keep = (tags != "") & (position != 0) & (tags != "INTJ")
    if max_rows:
        keep[max_rows:] = False
    kept = tags[keep]
    labels = np.array([sorted(set(kept)).index(t) for t in kept])
    folds = contiguous_folds(window[keep], 4)
    table = {(r["score"], int(r["layer"])): r for r in read_tsv(tmp_path / "metrics" / "probes_laminar.tsv")}
    stored = x.astype(np.float32).astype(np.float64)
    for layer in range(3):
        acc, bal = manual_scores(stored[layer][keep], labels, folds)
        assert float(table[("accuracy", layer)]["value"]) == pytest.approx(acc.mean(), abs=1e-12)
        assert float(table[("balanced_accuracy", layer)]["value"]) == pytest.approx(bal.mean(), abs=1e-12)
    assert float(table[("accuracy", 1)]["value"]) > 0.9 > float(table[("accuracy", 0)]["value"])
    counts = {r["tag"]: int(r["n_rows"]) for r in read_tsv(tmp_path / "metrics" / "pos_tags.tsv")}
    first = np.arange(window.size) < (max_rows or window.size)
    assert counts["(dropped: untagged)"] == np.sum(first & (tags == ""))
    assert counts["(dropped: first token of a window)"] == np.sum(first & (position == 0) & (tags != ""))
    assert sum(counts[t] for t in ("NOUN", "VERB", "DET")) == keep.sum()
    assert any("INTJ" in t for t in counts)
    from laminae.experiment import CompareJob, MeasureJob

    measured = experiment.hook("measure")(MeasureJob(metrics_dir=tmp_path / "metrics", settings=settings))
    assert set(measured) == {m.name for m in experiment.measures}
    fig = experiment.hook("compare")(CompareJob(metrics_dirs=[tmp_path / "metrics"] * 2, labels=["a", "b"],
                                                settings=[settings] * 2, plot={"alpha": 0.05}))
    assert len(fig.axes) == 2 and "part of speech" in fig._suptitle.get_text()


@pytest.mark.slow
def test_pos_probes_end_to_end_on_a_tiny_model(tmp_path, built_models):
    """Snakemake on tiny-gpt2 over a small corpus: spaCy tags the rows, the probe runs, the figure
    is drawn; the tags' counts add up to the rows kept."""
    pytest.importorskip("spacy")
    from workflow_helpers import snakemake

    overrides = ["model=tiny-gpt2", "experiments=[pos_probes]", "corpus.max_tokens=600", "corpus.window_tokens=64",
                 "pos_probes.n_permutations=2", "pos_probes.max_rows=500", built_models]
    snakemake(tmp_path, overrides, "--cores", "2")
    (table,) = (tmp_path / "results").glob("**/pos_probes/analysis-*/metrics/probes_laminar.tsv")
    rows = read_tsv(table)
    assert {r["score"] for r in rows} == {"accuracy", "balanced_accuracy"}
    tags = {r["tag"]: int(r["n_rows"]) for r in read_tsv(table.parent / "pos_tags.tsv")}
    assert {"NOUN", "DET"} <= set(tags)
    per_fold = [r for r in read_tsv(table.parent / "probes_folds.tsv") if r["layer"] == "0" and r["score"] == "accuracy"]
    assert sum(int(r["n_test"]) for r in per_fold) == sum(k for t, k in tags.items() if not t.startswith("("))
    assert list((tmp_path / "results").glob("**/pos_probes/analysis-*/plot-*/figures/pos_probes_laminar.png"))
