"""The `cka` analysis within one run: layer x layer CKA of one site over the stimuli's words
(rows = words), with a bootstrap over words and a permutation null.

    >>> analyse(job)          # -> job.out_dir / "cka_layers.tsv"
    >>> result = layer_cka(acts, estimator="debiased", n_bootstrap=1000, n_permutations=1000, seed=0)
    >>> result.cka.shape      # (n_layers, n_layers)

`cka_layers.tsv`: one row per ordered pair of layers (layer_a, layer_b), columns TABLE_COLUMNS:

    cka                the chosen estimator (`cka.estimator`: debiased or linear)
    ci_low, ci_high    percentile bootstrap interval (words resampled; `confidence`; for the debiased
                       estimator each replicate uses its distinct words: conservative, see
                       laminae.metrics.cka)
    null_mean, null_high  the permutation null's mean and its upper `confidence` quantile
    p_value            one-sided permutation p (CKA above chance: the words of layer_b shuffled)
    q_value            Benjamini-Hochberg over the pairs layer_a < layer_b (one family)
    cka_linear, cka_debiased  both estimators' point values

The diagonal (a layer with itself, CKA 1) has no test. Bootstrap and permutations draw from
independent streams spawned from `seed`; the same draws serve every pair of layers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from laminae.experiment import AnalysisJob
from laminae.metrics import cka
from laminae.metrics.multiple_testing import bh_q_values
from laminae.metrics.resampling import (
    bootstrap_indices,
    null_mean,
    percentile_interval,
    permutation_p_value,
    permuted_labels,
)
from laminae.store import read_tsv, write_tsv

log = logging.getLogger(__name__)
TABLE_FILENAME = "cka_layers.tsv"
TABLE_COLUMNS = ("layer_a", "layer_b", "cka", "ci_low", "ci_high", "null_mean", "null_high", "p_value", "q_value",
                 "cka_linear", "cka_debiased")


@dataclass(frozen=True)
class LayerCka:
    """Everything `layer_cka` computed; each array (n_layers, n_layers)."""

    cka: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    null_mean: np.ndarray
    null_high: np.ndarray
    p_value: np.ndarray
    q_value: np.ndarray
    linear: np.ndarray
    debiased: np.ndarray


def analyse(job: AnalysisJob) -> None:
    """The analysis hook: `settings["site"]` from the store, every layer against every layer."""
    settings = job.settings
    acts = job.store.read(settings["site"])                     # (n_layers, n_words, width)
    log.info("cka of %s: %d layers x %d words x %d, %s estimator, %d bootstraps, %d permutations",
             settings["site"], *acts.shape, settings["estimator"], settings["n_bootstrap"],
             settings["n_permutations"])
    result = layer_cka(acts, estimator=settings["estimator"], n_bootstrap=settings["n_bootstrap"],
                       n_permutations=settings["n_permutations"], confidence=settings["confidence"],
                       seed=settings["seed"])
    write_table(result, job.out_dir / TABLE_FILENAME)


def resampling_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(bootstrap, permutation) generators, independent, from `seed`."""
    boot, perm = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(boot), np.random.default_rng(perm)


def layer_cka(acts: np.ndarray, *, estimator: str = "debiased", n_bootstrap: int = 1000, n_permutations: int = 1000,
              confidence: float = 0.95, seed: int = 0) -> LayerCka:
    """Layer x layer CKA of acts (n_layers, n_rows, width) in Gram form (few rows), with
    bootstrap intervals over rows and a permutation null (rows of the second layer shuffled)."""
    cka.check_estimator(estimator)
    grams = cka.gram(acts)                                       # (n_layers, n, n)
    n_layers, n = grams.shape[:2]
    linear = cka.gram_cka_matrix(grams, estimator="linear")
    debiased = cka.gram_cka_matrix(grams, estimator="debiased")
    value = debiased if estimator == "debiased" else linear
    boot_rng, perm_rng = resampling_streams(seed)
    replicates = cka.bootstrap_cka(grams, None, bootstrap_indices(n, n_bootstrap, boot_rng), estimator)
    low, high = percentile_interval(np.moveaxis(replicates, 0, -1), confidence, ignore_nan=True)
    perms = permuted_labels(np.arange(n), n_permutations, perm_rng)
    null = np.moveaxis(cka.permutation_cka(grams, None, perms, estimator), 0, -1)   # (L, L, P)
    p = permutation_p_value(value, null)
    _, null_high = percentile_interval(null, confidence)        # NaN without permutations
    upper = np.triu(np.ones((n_layers, n_layers), dtype=bool), k=1)
    q = np.full(value.shape, np.nan)
    q[upper] = bh_q_values(p[upper])
    q = np.where(upper, q, q.T)
    diagonal = np.eye(n_layers, dtype=bool)
    p, q = np.where(diagonal, np.nan, p), np.where(diagonal, np.nan, q)
    return LayerCka(value, low, high, null_mean(null), null_high, p, q, linear, debiased)


def write_table(result: LayerCka, path: Path) -> None:
    n_layers = result.cka.shape[0]
    rows = []
    for a in range(n_layers):
        for b in range(n_layers):
            row: dict[str, Any] = {"layer_a": a, "layer_b": b}
            for column, array in (("cka", result.cka), ("ci_low", result.ci_low), ("ci_high", result.ci_high),
                                  ("null_mean", result.null_mean), ("null_high", result.null_high),
                                  ("p_value", result.p_value), ("q_value", result.q_value),
                                  ("cka_linear", result.linear), ("cka_debiased", result.debiased)):
                row[column] = _number(array[a, b])
            rows.append(row)
    write_tsv(path, rows, TABLE_COLUMNS)


def _number(value: float) -> str:
    return "" if not math.isfinite(float(value)) else repr(float(value))


def read_table(path: Path) -> dict[str, np.ndarray]:
    """`cka_layers.tsv` back as (n_layers, n_layers) arrays per column (NaN for empty cells)."""
    rows = read_tsv(path)
    n_layers = max(int(r["layer_a"]) for r in rows) + 1
    out = {column: np.full((n_layers, n_layers), np.nan) for column in TABLE_COLUMNS[2:]}
    for row in rows:
        a, b = int(row["layer_a"]), int(row["layer_b"])
        for column in TABLE_COLUMNS[2:]:
            if row[column] != "":
                out[column][a, b] = float(row[column])
    return out


def adjacent(matrix: np.ndarray) -> np.ndarray:
    """CKA(layer l, layer l + 1) at l, NaN at the last layer: (L, L) -> (L,)."""
    n_layers = matrix.shape[0]
    out = np.full(n_layers, np.nan)
    out[:-1] = matrix[np.arange(n_layers - 1), np.arange(1, n_layers)]
    return out


def settings_line(settings: Mapping[str, Any]) -> str:
    """`debiased CKA of resid_post, 95% bootstrap CI` for labels and titles."""
    return f"{settings.get('estimator', 'debiased')} CKA of {settings.get('site', 'resid_post')}"
