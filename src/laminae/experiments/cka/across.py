"""The `cka` experiment BETWEEN the runs of a sweep (models, training checkpoints): for every pair
of runs (A, B), CKA of each layer of A against each layer of B over the matched rows (stimuli:
the same words in the same order; a corpus: its words, each run's tokens averaged over the word),
with a bootstrap over those rows (the same draws for both runs, so each replicate compares the
two models on the same resampled words). Above `gram_rows` matched words (a corpus), the values
and intervals are those of `gram_rows` words drawn at random (`resampled_items`), in Gram form.

    >>> analyse(job)   # laminae.experiment.AcrossJob -> cka_across.tsv, cka_across_runs.tsv
    >>> across_figures.plot(job)   # FigureJob -> cka_across, cka_best_match, cka_reference

`cka_across.tsv`: one row per (run_a, run_b, layer_a, layer_b), run_a < run_b (indices into the
sweep's runs), columns ACROSS_COLUMNS. `cka_across_runs.tsv`: one row per run: its label,
model, depth, width of the site, and the matching rule the rows were matched by.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from laminae.metrics import cka
from laminae.metrics.resampling import bootstrap_indices, percentile_interval
from laminae.store import read_tsv, write_tsv

log = logging.getLogger(__name__)
ACROSS_FILENAME = "cka_across.tsv"
RUNS_FILENAME = "cka_across_runs.tsv"
ACROSS_COLUMNS = ("run_a", "run_b", "layer_a", "layer_b", "cka", "ci_low", "ci_high")
RUNS_COLUMNS = ("run", "label", "model", "n_layers", "width", "n_items", "n_used", "site", "estimator", "match_rule")
MAX_PAIR_PANELS = 6   # more runs: each run against the reference run only


def analyse(job: Any) -> None:
    """The across hook (`laminae.experiment.AcrossJob`)."""
    settings = job.settings
    site, estimator = settings["site"], settings["estimator"]
    acts = [job.read(run, site) for run in range(job.n_runs)]         # each (n_layers_r, n_items, width_r)
    used = resampled_items(job.n_items, settings)
    acts = [a[:, used] for a in acts]                                  # each (n_layers_r, n_used, width_r)
    grams = [cka.gram(a) for a in acts]
    boot_rng, _ = np.random.SeedSequence(settings["seed"]).spawn(2)
    draws = bootstrap_indices(used.size, settings["n_bootstrap"], np.random.default_rng(boot_rng))
    rows = []
    for a, b in job.pairs():   # the pairs the figures show (shown_pairs): linear in a large sweep
        value = cka.gram_cka_matrix(grams[a], grams[b], estimator)
        replicates = cka.bootstrap_cka(grams[a], grams[b], draws, estimator)      # (B, La, Lb)
        low, high = percentile_interval(np.moveaxis(replicates, 0, -1), settings["confidence"], ignore_nan=True)
        log.info("cka %s vs %s: %d x %d layers", job.labels[a], job.labels[b], *value.shape)
        for i in range(value.shape[0]):
            for j in range(value.shape[1]):
                rows.append({"run_a": a, "run_b": b, "layer_a": i, "layer_b": j, "cka": _number(value[i, j]),
                             "ci_low": _number(low[i, j]), "ci_high": _number(high[i, j])})
    write_tsv(job.out_dir / ACROSS_FILENAME, rows, ACROSS_COLUMNS)
    runs = [{"run": r, "label": job.labels[r], "model": job.model_attrs[r].get("name", job.model_attrs[r].get("model", "")),
             "n_layers": acts[r].shape[0], "width": acts[r].shape[2], "n_items": job.n_items, "n_used": used.size,
             "site": site,
             "estimator": estimator, "match_rule": job.match_rule} for r in range(job.n_runs)]
    write_tsv(job.out_dir / RUNS_FILENAME, runs, RUNS_COLUMNS)


def resampled_items(n_items: int, settings: dict[str, Any]) -> np.ndarray:
    """The matched items compared: all of them up to `gram_rows`; above (a corpus's words), that
    many drawn at random without replacement, the same in every run, in order."""
    if n_items <= settings["gram_rows"]:
        return np.arange(n_items)
    from .analysis import subsample_stream

    rng = np.random.default_rng(subsample_stream(settings["seed"]))
    return np.sort(rng.choice(n_items, settings["gram_rows"], replace=False))


def _number(value: float) -> str:
    return "" if not math.isfinite(float(value)) else repr(float(value))


def read_across(metrics_dir: Path) -> tuple[list[dict[str, str]], dict[tuple[int, int], dict[str, np.ndarray]]]:
    """The runs table, and per pair (a, b) its (La, Lb) arrays `cka`, `ci_low`, `ci_high`."""
    runs = read_tsv(metrics_dir / RUNS_FILENAME)
    depth = [int(r["n_layers"]) for r in runs]
    pairs: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for row in read_tsv(metrics_dir / ACROSS_FILENAME):
        a, b = int(row["run_a"]), int(row["run_b"])
        entry = pairs.setdefault((a, b), {c: np.full((depth[a], depth[b]), np.nan) for c in ACROSS_COLUMNS[4:]})
        for column in ACROSS_COLUMNS[4:]:
            if row[column] != "":
                entry[column][int(row["layer_a"]), int(row["layer_b"])] = float(row[column])
    return runs, pairs


def pair_matrix(pairs: dict[tuple[int, int], dict[str, np.ndarray]], a: int, b: int, column: str = "cka") -> np.ndarray:
    """(La, Lb): run a's layers (rows) against run b's (columns), whichever order was stored."""
    if a == b:
        raise ValueError("a run against itself is the within-run analysis")
    return pairs[(a, b)][column] if a < b else pairs[(b, a)][column].T


def reference_run(n_runs: int, steps: list[int] | None) -> int:
    """The run every other is compared with: the last checkpoint by step, else the last run."""
    return int(np.argmax(steps)) if steps else n_runs - 1


def shown_pairs(n_runs: int, reference: int) -> list[tuple[int, int]]:
    """Every pair when there are few; else each run against the reference."""
    every = [(a, b) for a in range(n_runs) for b in range(a + 1, n_runs)]
    if len(every) <= MAX_PAIR_PANELS:
        return every
    return [(r, reference) for r in range(n_runs) if r != reference]


def same_layer_profile(pairs, run: int, reference: int, depths: list[int]) -> np.ndarray:
    """CKA of each layer of `run` with the layer of `reference` at the same relative depth: (L_run,)."""
    matrix = pair_matrix(pairs, run, reference)
    partner = np.rint(cka.relative_depth(np.arange(depths[run]), depths[run]) * (depths[reference] - 1)).astype(int)
    return matrix[np.arange(depths[run]), partner]
