"""The `cka` analysis within one run: layer x layer CKA of one site over the rows (the stimuli's
words, or a corpus's tokens), with a bootstrap over rows and a permutation null.

    >>> reducer = CkaReducer(job)     # job: laminae.experiment.ReducerJob
    >>> for start, chunk in chunks:   # chunk[site]: (n_layers, rows, width)
    ...     reducer.update(start, chunk)
    >>> reducer.finish()              # -> job.out_dir / "cka_layers.tsv"
    >>> result = layer_cka(acts, estimator="debiased", n_bootstrap=1000, n_permutations=1000, seed=0)
    >>> result.cka.shape              # (n_layers, n_layers)

Up to `gram_rows` rows (stimuli: tens to hundreds of words) everything is computed in Gram form
on every row (`layer_cka`). Above it (a corpus), no n x n matrix is ever built: the CKA values
(both estimators) come from every row in feature space, streamed (`laminae.metrics.cka.
CrossProducts`: L(L+1)/2 blocks of width x width), and the bootstrap intervals, the permutation
null and its p- and q-values from `layer_cka` on `gram_rows` rows drawn at random without
replacement (a subsample's intervals are wider than the whole corpus's would be: conservative).

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

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from laminae.experiment import ReducerJob
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
                 "cka_linear", "cka_debiased", "n_rows", "n_resampled")


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


class CkaReducer:
    """The `reducer` hook's accumulator (module docstring): keeps the rows resampled (all of
    them up to `gram_rows`), and above that streams every row into feature-space sums."""

    def __init__(self, job: ReducerJob):
        self.settings = settings = job.settings
        self.site, self.out_dir = settings["site"], Path(job.out_dir)
        self.n_rows, n_layers, width = len(job.rows), job.n_layers, int(job.widths[self.site])
        self.rows_seen = 0
        if self.n_rows <= settings["gram_rows"]:
            self.kept, self.streamed = np.arange(self.n_rows), None
        else:
            rng = np.random.default_rng(subsample_stream(settings["seed"]))
            self.kept = np.sort(rng.choice(self.n_rows, settings["gram_rows"], replace=False))
            self.streamed = cka.CrossProducts(n_layers, width, debiased=True)
        self.acts = np.empty((n_layers, self.kept.size, width))                     # (n_layers, kept, width)
        log.info("cka of %s: %d layers x %d rows x %d; %s; %s estimator, %d bootstraps, %d permutations",
                 self.site, n_layers, self.n_rows, width,
                 "Gram form on every row" if self.streamed is None else
                 f"every row in feature space, resampling on {self.kept.size} rows drawn at random",
                 settings["estimator"], settings["n_bootstrap"], settings["n_permutations"])

    def update(self, start: int, chunk: Mapping[str, np.ndarray]) -> None:
        if start != self.rows_seen:
            raise RuntimeError(f"cka: chunk starts at row {start}, expected {self.rows_seen} (chunks in order)")
        x = np.asarray(chunk[self.site])                                            # (n_layers, rows, width)
        stop = start + x.shape[1]
        if self.streamed is not None:
            self.streamed.update(x)
        low, high = np.searchsorted(self.kept, [start, stop])
        self.acts[:, low:high] = x[:, self.kept[low:high] - start]
        self.rows_seen = stop

    def finish(self) -> None:
        if self.rows_seen != self.n_rows:
            raise RuntimeError(f"cka: {self.rows_seen} rows streamed, {self.n_rows} expected")
        settings = self.settings
        result = layer_cka(self.acts, estimator=settings["estimator"], n_bootstrap=settings["n_bootstrap"],
                           n_permutations=settings["n_permutations"], confidence=settings["confidence"],
                           seed=settings["seed"])
        if self.streamed is not None:      # the values from every row; the resampling stays the subsample's
            linear, debiased = self.streamed.cka(), self.streamed.debiased_cka()
            chosen = debiased if settings["estimator"] == "debiased" else linear
            result = dataclasses.replace(result, cka=chosen, linear=linear, debiased=debiased)
        write_table(result, self.out_dir / TABLE_FILENAME, n_rows=self.n_rows, n_resampled=self.kept.size)


def subsample_stream(seed: int) -> np.random.SeedSequence:
    """The rows resampled on large inputs: a stream apart from the bootstrap's and permutations'."""
    return np.random.SeedSequence(seed).spawn(3)[2]


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


def write_table(result: LayerCka, path: Path, n_rows: int, n_resampled: int) -> None:
    n_layers = result.cka.shape[0]
    rows = []
    for a in range(n_layers):
        for b in range(n_layers):
            row: dict[str, Any] = {"layer_a": a, "layer_b": b, "n_rows": n_rows, "n_resampled": n_resampled}
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
            if row.get(column, "") != "":
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
