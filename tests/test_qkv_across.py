"""Experiment 1 across runs (`qkv.across`): the layer x layer RSA of two runs' Q/K/V similarity
matrices against scipy on the upper triangles, its bootstrap against the within-run bootstrap
of each layer pair, and the figure."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from laminae.experiment import AcrossJob, FigureJob
from laminae.experiments.qkv.across import FIGURE, TABLE, analyse, plot
from laminae.metrics.rsa import rsa_bootstrap
from laminae.store import read_tsv

SETTINGS = {"components": ["q", "v"], "rsa_method": "pearson", "zscore": False, "n_bootstrap": 200,
            "confidence": 0.9, "seed": 3}


class Store:
    """Stands in for an ActivationStore: `read(site, layers)` of fixed arrays (n_layers, n, width)."""

    def __init__(self, sites: dict[str, np.ndarray]):
        self.sites = sites

    def read(self, site: str, layers=None) -> np.ndarray:
        return self.sites[site]


def cosine(x: np.ndarray) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
    return unit @ unit.T


@pytest.fixture()
def runs():
    rng = np.random.default_rng(0)
    n = 12
    shared = rng.normal(size=(n, 8))
    a = {site: np.stack([shared @ rng.normal(size=(8, 16)) + rng.normal(scale=s, size=(n, 16)) for s in (0.1, 1, 3)])
         for site in ("q", "v")}                                             # 3 layers, width 16
    b = {site: np.stack([shared @ rng.normal(size=(8, 6)) + rng.normal(scale=s, size=(n, 6)) for s in (0.2, 2)])
         for site in ("q", "v")}                                             # 2 layers, width 6
    order = rng.permutation(n)   # run B stores the words in another order: row r holds item order[r]
    b_stored = {site: values[:, order] for site, values in b.items()}
    return a, b, b_stored, order


def test_layer_by_layer_rsa_against_scipy_and_the_within_run_bootstrap(tmp_path, runs):
    a, b, b_stored, order = runs
    n = a["q"].shape[1]
    groups = [np.arange(n), order]   # stored row r of B holds item order[r]
    job = AcrossJob(settings=SETTINGS, labels=["model=a", "model=b"], stores=[Store(a), Store(b_stored)],
                    groups=groups, n_items=n, items=[f"w{i}" for i in range(n)], match_rule="by word",
                    out_dir=tmp_path, attrs={})
    assert np.allclose(job.read(1, "q"), b["q"])   # matched back into run A's order
    analyse(job)
    table = read_tsv(tmp_path / TABLE)
    assert len(table) == 2 * 3 * 2   # components x layers of A x layers of B
    for row in table:
        i, j, site = int(row["layer_a"]), int(row["layer_b"]), row["component"]
        upper = np.triu_indices(n, 1)
        x, y = cosine(a[site][i])[upper], cosine(b[site][j])[upper]
        assert float(row["rsa"]) == pytest.approx(pearsonr(x, y)[0], abs=1e-12)
        boot = rsa_bootstrap(np.stack([cosine(a[site][i]), cosine(b[site][j])]), [(0, 1)], n_bootstrap=200,
                             confidence=0.9, seed=3)
        assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((boot.ci_low[0], boot.ci_high[0]))
        assert float(row["depth_b"]) == j and row["match"] == "by word" and int(row["n_words"]) == n
    spearman = AcrossJob(settings={**SETTINGS, "rsa_method": "spearman", "n_bootstrap": 0}, labels=["a", "b"],
                         stores=[Store(a), Store(b)], groups=[np.arange(n), np.arange(n)], n_items=n,
                         items=[str(i) for i in range(n)], match_rule="", out_dir=tmp_path / "s", attrs={})
    (tmp_path / "s").mkdir()
    analyse(spearman)
    first = read_tsv(tmp_path / "s" / TABLE)[0]
    upper = np.triu_indices(n, 1)
    assert float(first["rsa"]) == pytest.approx(spearmanr(cosine(a["q"][0])[upper], cosine(b["q"][0])[upper])[0])
    assert first["ci_low"] == "nan" or np.isnan(float(first["ci_low"]))


def test_every_pair_of_three_runs_and_the_figure(tmp_path, runs):
    a, b, _, _ = runs
    n = a["q"].shape[1]
    stores = [Store(a), Store(b), Store({site: values[:1] for site, values in a.items()})]
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    job = AcrossJob(settings=SETTINGS, labels=["A", "B", "C"], stores=stores, groups=[np.arange(n)] * 3, n_items=n,
                    items=[str(i) for i in range(n)], match_rule="by word", out_dir=metrics, attrs={})
    analyse(job)
    pairs = {(row["run_a"], row["run_b"]) for row in read_tsv(metrics / TABLE)}
    assert pairs == set(combinations(["A", "B", "C"], 2))
    figures = tmp_path / "figures"
    figures.mkdir()
    plot(FigureJob(settings=SETTINGS, plot={}, dpi=60, metrics_dir=metrics, out_dir=figures,
                   context={"labels": ["A", "B", "C"], "models": ["m1", "m2"]}))
    assert (figures / f"{FIGURE}.png").stat().st_size > 0 and Path(figures / f"{FIGURE}.pdf").is_file()
