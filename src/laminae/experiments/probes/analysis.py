"""Experiment `probes`: a word's category decoded from its vectors at every layer.

    >>> analyse(job)     # -> job.out_dir / "probes_laminar.tsv", "probes_folds.tsv"

Per site in `settings["sites"]` and per layer, a multinomial logistic regression on
standardised features is cross-validated over folds that never put a word in two folds
(`laminae.metrics.decoding.group_folds`, stratified by category), and refitted on
`n_permutations` shuffles of the words' labels (whole words shuffled, the same shuffles at every
layer and site) for a one-sided p-value; Benjamini-Hochberg over the layers of a site and score.
`decoding_rows` turns any `DecodingResult` into the table rows, so `pos_probes` writes the same.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from laminae.errors import InputFileError
from laminae.experiment import AnalysisJob
from laminae.metrics.decoding import SCORES, DecodingResult, decode_layers, group_folds
from laminae.metrics.multiple_testing import bh_q_values
from laminae.experiments.probes.tables import (FOLDS_COLUMNS, FOLDS_FILENAME, TABLE_COLUMNS, TABLE_FILENAME,
                                               write_rows)

log = logging.getLogger(__name__)


def analyse(job: AnalysisJob) -> None:
    """The analysis hook (stimuli): labels are the rows' categories, groups their words."""
    settings, store = job.settings, job.store
    for column in ("word", "category"):
        if store.rows and column not in store.rows[0]:
            raise InputFileError(store.rows.source, f"has no {column!r} column; the probes analysis needs a "
                                                    "stimuli extraction (word, category per row)")
    categories = store.column("category")
    names = list(dict.fromkeys(categories))
    labels = np.array([names.index(c) for c in categories])       # (n_rows,)
    words = store.column("word")
    folds = group_folds(labels, words, settings["n_folds"], seed=settings["seed"])
    log.info("probes: %d words in %d categories, %d folds, %d permutations, sites %s", len(set(words)),
             len(names), len(folds), settings["n_permutations"], ", ".join(settings["sites"]))
    results = {site: decode_layers(store.read(site), labels, folds, groups=words,
                                   n_permutations=settings["n_permutations"], unit="group",
                                   seed=settings["seed"], c=settings["c"], max_iter=settings["max_iter"])
               for site in settings["sites"]}
    write_tables(results, job.out_dir, settings["confidence"], [test.size for _, test in folds])


def write_tables(results: Mapping[str, DecodingResult], out_dir: Path, confidence: float,
                 n_test: Sequence[int] | None = None) -> None:
    """`probes_laminar.tsv` and `probes_folds.tsv` from one result per site (n_test: rows per test fold)."""
    laminar, folds = [], []
    for site, result in results.items():
        table, per_fold = decoding_rows(site, result, confidence, n_test)
        laminar += table
        folds += per_fold
    write_rows(Path(out_dir) / TABLE_FILENAME, laminar, TABLE_COLUMNS)
    write_rows(Path(out_dir) / FOLDS_FILENAME, folds, FOLDS_COLUMNS)


def decoding_rows(site: str, result: DecodingResult, confidence: float,
                  n_test: Sequence[int] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The table's rows (per score and layer) and the per-fold rows of one site's result."""
    table, per_fold = [], []
    for score in SCORES:
        mean = result.mean(score)
        low, high = (np.clip(bound, 0.0, 1.0) for bound in result.interval(score, confidence))  # scores lie in [0, 1]
        if result.n_permutations:
            null_low, null_high = result.null_band(score, confidence)
            null_mean = result.null[score].mean(axis=1)
        else:
            null_low = null_high = null_mean = np.full(result.n_layers, np.nan)
        q = bh_q_values(result.p_value[score])
        for layer in range(result.n_layers):
            table.append({"layer": layer, "site": site, "score": score, "value": float(mean[layer]),
                          "ci_low": float(low[layer]), "ci_high": float(high[layer]),
                          "chance": result.chance[score], "null_mean": float(null_mean[layer]),
                          "null_low": float(null_low[layer]), "null_high": float(null_high[layer]),
                          "p_value": float(result.p_value[score][layer]), "q_value": float(q[layer])})
            for fold, value in enumerate(result.folds[score][layer]):
                per_fold.append({"layer": layer, "site": site, "score": score, "fold": fold,
                                 "n_test": "" if n_test is None else int(n_test[fold]), "value": float(value)})
    return table, per_fold
