"""Experiment `neurons`: per layer, the fraction of units (MLP neurons, Q/K/V dimensions)
selective for the stimulus categories, and each category's top neurons.

    >>> analyse(job)   # -> neurons_laminar.tsv, neurons_top.tsv, neurons_top_words.tsv in job.out_dir

built on the in-memory computation:

    >>> acts = {"mlp_post": m, "q": q}          # each (n_layers, n_items, width)
    >>> res = analyse_neurons(acts, labels, ["fruit", "space", "furniture"], words, n_permutations=1000)
    >>> res.laminar[0]                          # a LaminarRow: layer 0, first site, all categories
    >>> write_neurons_tables(res, out_dir)

Per site and layer, every unit is tested with `laminae.metrics.unit_selectivity.unit_category_test`
(one-way ANOVA F across the categories; one-vs-rest pooled t per category; p-values from the
same label shuffles for every unit, layer and site). Benjamini-Hochberg runs within each
(site, layer) family of units, at level `alpha`:

- `selective` (category `all`): units with ANOVA q <= alpha;
- `selective` (category c): units whose mean is highest for c and whose one-vs-rest q <= alpha
  (BH over the layer's units for that category's test).

The fraction k / n has a Clopper-Pearson interval (`confidence`): exact for the count of units
in the layer, given these words. Not a bootstrap over words: a resample repeats words, and
repeated items inflate every F (a duplicated word is its own perfect within-category match), so
the detection count of a word bootstrap is biased upward; re-running the permutation test per
resample would also cost n_bootstrap times the analysis. The binomial interval treats the units
as independent, which correlated neurons are not: read it as a lower bound on the uncertainty.

Resolution: a permutation p-value is at least 1 / (1 + P), so BH over n units can declare no
fewer than `min_detectable` = ceil(n / (alpha (1 + P))) units (all at the smallest p); a
layer with fewer truly selective units reads as 0. The default P = 10000 puts that floor at 4
of SmolLM2's 1536 neurons (0.26%); the table records it per row.

The reference: the first `n_null_draws` shuffles, each taken as if it were the observed labels
(against the other shuffles and the observed labels), run through the same BH; the mean
fraction over them (`null_mean`) and its upper percentile (`null_high`) are what the fraction
is under labels that carry no category. (Uncorrected, a null unit has p < alpha with
probability alpha: `n_uncorrected` counts the observed units with p < alpha, to read against it.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from laminae.errors import InputFileError
from laminae.experiment import AnalysisJob
from laminae.metrics.resampling import permuted_labels
from laminae.metrics.unit_selectivity import (clopper_pearson, fraction_significant, min_detectable, null_fractions,
                                             unit_category_test)
from laminae.store import write_tsv

log = logging.getLogger(__name__)
TABLE_FILENAME = "neurons_laminar.tsv"
TOP_FILENAME = "neurons_top.tsv"
TOP_WORDS_FILENAME = "neurons_top_words.tsv"
ALL = "all"   # the category column of the ANOVA rows
TABLE_COLUMNS = ("layer", "site", "category", "n_units", "n_selective", "fraction", "ci_low", "ci_high",
                 "n_uncorrected", "n_constant", "min_detectable", "null_mean", "null_high")
TOP_COLUMNS = ("category", "rank", "site", "layer", "unit", "cohens_d", "t", "p_value", "q_value", "f", "eta2",
               "q_value_anova", "mean_in", "mean_rest", "top_words")
TOP_WORDS_COLUMNS = ("category", "rank", "layer", "unit", "word", "word_category", "activation")


class LaminarRow(NamedTuple):
    """One (layer, site, category) row of neurons_laminar.tsv; NaN where not applicable."""

    layer: int
    site: str
    category: str
    n_units: int
    n_selective: int
    fraction: float
    ci_low: float
    ci_high: float
    n_uncorrected: int
    n_constant: int
    min_detectable: int
    null_mean: float = math.nan
    null_high: float = math.nan


@dataclass(frozen=True)
class NeuronsResults:
    """What `analyse_neurons` computed: the laminar rows and the top units' rows."""

    laminar: list[LaminarRow]
    top: list[dict[str, Any]]
    top_words: list[dict[str, Any]]


def analyse(job: AnalysisJob) -> None:
    """The analysis hook: the configured sites from the store, tested unit by unit."""
    settings, store = job.settings, job.store
    for column in ("word", "category"):
        if store.rows and column not in store.rows[0]:
            raise InputFileError(store.rows.source, f"has no {column!r} column; the neurons analysis needs a "
                                                    "stimuli extraction (word, category per row)")
    categories, labels = category_labels(store.column("category"))
    log.info("testing %s unit by unit over %d layers, %d words in %d categories, %d permutations",
             "/".join(settings["sites"]), store.n_layers, store.n_rows, len(categories), settings["n_permutations"])
    activations = {site: (lambda site=site: store.read(site)) for site in settings["sites"]}
    results = analyse_neurons(activations, labels, categories, store.column("word"), **options(settings))
    write_neurons_tables(results, job.out_dir)


def category_labels(categories: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Category names in order of first appearance, and each row's integer code into them.

        >>> category_labels(["fruit", "fruit", "space"])
        (['fruit', 'space'], array([0, 0, 1]))
    """
    order: dict[str, int] = {}
    codes = [order.setdefault(name, len(order)) for name in categories]
    return list(order), np.asarray(codes, dtype=np.int64)


def options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `analyse_neurons` from the config group."""
    keys = ("n_permutations", "n_null_draws", "alpha", "confidence", "seed", "top_site", "top_k", "top_words")
    return {key: settings[key] for key in keys}


def analyse_neurons(
    activations: Mapping[str, np.ndarray | Any],
    labels: np.ndarray,
    categories: Sequence[str],
    words: Sequence[str],
    *,
    n_permutations: int = 10000,
    n_null_draws: int = 100,
    alpha: float = 0.05,
    confidence: float = 0.95,
    seed: int = 0,
    top_site: str = "mlp_post",
    top_k: int = 6,
    top_words: int = 5,
) -> NeuronsResults:
    """Per-unit tests of every site and layer; the fractions, their intervals and nulls; the
    top units of `top_site` per category.

    activations[site]: (n_layers, n_items, width), or a callable returning it (read lazily, one
    site at a time); labels: (n_items,) codes into `categories`; words: (n_items,) names.
    """
    words = [str(w) for w in words]
    labels = np.asarray(labels, dtype=np.int64)
    shuffled = permuted_labels(labels, n_permutations, np.random.default_rng(seed))   # (P, n_items)
    n_null_draws = min(n_null_draws, n_permutations)
    rows: list[LaminarRow] = []
    top: list[dict[str, Any]] = []
    top_word_rows: list[dict[str, Any]] = []
    for site, source in activations.items():
        x = source() if callable(source) else np.asarray(source, dtype=np.float64)   # (L, N, width)
        if x.shape[1] != labels.size:
            raise ValueError(f"{site}: {x.shape[1]} rows for {labels.size} labels")
        per_layer = []
        for layer in range(x.shape[0]):
            test = unit_category_test(x[layer], labels, shuffled, n_categories=len(categories), n_null_draws=n_null_draws)
            rows.extend(_layer_rows(test, layer, site, categories, alpha, confidence))
            per_layer.append(test)
        if site == top_site:
            top, top_word_rows = _top_units(per_layer, x, labels, categories, words, site, alpha, top_k, top_words)
        del x
    return NeuronsResults(rows, top, top_word_rows)


def _layer_rows(test, layer: int, site: str, categories: Sequence[str], alpha: float,
                confidence: float) -> list[LaminarRow]:
    """The ANOVA row and one row per category for one (site, layer)."""
    n_units = int(test.p_value.size)
    n_constant = int(test.constant.sum())
    _, count = fraction_significant(test.p_value, alpha)
    null = null_fractions(test.null_p_value, alpha)                        # (n_null_draws,)
    null_mean = float(null.mean()) if null.size else math.nan
    null_high = float(np.percentile(null, 100 * confidence)) if null.size else math.nan
    low, high = clopper_pearson(int(count), n_units, confidence)
    floor = min_detectable(n_units, test.n_permutations, alpha)
    out = [LaminarRow(layer, site, ALL, n_units, int(count), int(count) / n_units, float(low), float(high),
                      int((test.p_value < alpha).sum()), n_constant, floor, null_mean, null_high)]
    q_cat, _ = fraction_significant(test.p_value_per_category, alpha)       # (C, U): BH per category
    for c, name in enumerate(categories):
        selective = (q_cat[c] <= alpha) & (test.preferred == c) & ~test.constant
        k = int(selective.sum())
        low, high = clopper_pearson(k, n_units, confidence)
        uncorrected = int(((test.p_value_per_category[c] < alpha) & (test.preferred == c)).sum())
        out.append(LaminarRow(layer, site, name, n_units, k, k / n_units, float(low), float(high), uncorrected,
                              n_constant, floor))
    return out


def _top_units(tests: list, x: np.ndarray, labels: np.ndarray, categories: Sequence[str], words: Sequence[str],
               site: str, alpha: float, top_k: int, n_words: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per category, the `top_k` units of `site` (all layers) that prefer it, by one-vs-rest
    Cohen's d; with their statistics and every word's activation."""
    d = np.stack([t.cohens_d for t in tests])                             # (L, C, U)
    preferred = np.stack([t.preferred for t in tests])                    # (L, U)
    constant = np.stack([t.constant for t in tests])
    q_cat = np.stack([fraction_significant(t.p_value_per_category, alpha)[0] for t in tests])   # (L, C, U)
    q_anova = np.stack([fraction_significant(t.p_value, alpha)[0] for t in tests])             # (L, U)
    top, top_words = [], []
    for c, name in enumerate(categories):
        score = np.where((preferred == c) & ~constant & np.isfinite(d[:, c]), d[:, c], -np.inf)   # (L, U)
        order = np.argsort(-score, axis=None, kind="stable")[:top_k]
        for rank, flat in enumerate(order):
            if not np.isfinite(score.flat[flat]):
                break
            layer, unit = np.unravel_index(flat, score.shape)
            test, values = tests[layer], x[layer, :, unit]                 # values: (N,)
            strongest = np.argsort(-values, kind="stable")[:n_words]
            top.append({
                "category": name, "rank": rank + 1, "site": site, "layer": int(layer), "unit": int(unit),
                "cohens_d": test.cohens_d[c, unit], "t": test.t[c, unit],
                "p_value": test.p_value_per_category[c, unit], "q_value": q_cat[layer, c, unit],
                "f": test.f[unit], "eta2": test.eta2[unit], "q_value_anova": q_anova[layer, unit],
                "mean_in": float(values[labels == c].mean()), "mean_rest": float(values[labels != c].mean()),
                "top_words": ", ".join(words[i] for i in strongest)})
            top_words.extend({"category": name, "rank": rank + 1, "layer": int(layer), "unit": int(unit),
                              "word": words[i], "word_category": categories[labels[i]], "activation": float(values[i])}
                             for i in range(len(words)))
    return top, top_words


def write_neurons_tables(results: NeuronsResults, out_dir: Path) -> None:
    """neurons_laminar.tsv, neurons_top.tsv and neurons_top_words.tsv in `out_dir` (NaN: empty)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tsv(out_dir / TABLE_FILENAME, [_cells(row._asdict()) for row in results.laminar], TABLE_COLUMNS)
    write_tsv(out_dir / TOP_FILENAME, [_cells(row) for row in results.top], TOP_COLUMNS)
    write_tsv(out_dir / TOP_WORDS_FILENAME, [_cells(row) for row in results.top_words], TOP_WORDS_COLUMNS)


def _cells(row: Mapping[str, Any]) -> dict[str, Any]:
    """Floats written with 10 significant digits, NaN as an empty cell."""
    out = {}
    for key, value in row.items():
        if isinstance(value, (float, np.floating)):
            out[key] = "" if math.isnan(value) else f"{float(value):.10g}"
        else:
            out[key] = value
    return out
