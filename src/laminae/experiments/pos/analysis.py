"""Parts of speech and trajectory step lengths (course module of the path-length challenge,
parts 1 and 2: "do nouns or adjectives have longer trajectories?").

    >>> analyse(job)     # job: laminae.experiment.AnalysisJob -> pos.tsv, pos_contrasts.tsv, pos_tokens.h5

1. Tags: the corpus's documents (read again as the extraction read them: the store's
   config.yaml names them) are tagged by spaCy's English pipeline, and every stored row gets
   the universal POS tag of the word its characters fall in (`laminae.inputs.pos_tags`;
   alignment: `laminae.inputs.alignment`); special tokens get none. A word split into several
   tokens gives each of them its tag.
2. Per token and layer, the trajectory measures of `laminae.metrics.trajectories` (streamed
   chunk by chunk): `step`, block l's step ||x_(l+1) - x_l|| (x_0 the embedding, x_(l+1) =
   resid_post of layer l), and `cumulative`, the path length up to layer l (its value at the last
   layer is the token's whole trajectory length).
3. Per metric, layer and tag (of `tags`, with at least `min_tokens` tokens): the mean over
   the tag's tokens, its percentile bootstrap interval (units: tokens or windows,
   `bootstrap_unit`) and the same for the mean relative to every included token's mean at that
   layer; for every pair of tags, the difference of means with a two-sided label-permutation
   test (`laminae.metrics.group_contrasts`), and Benjamini-Hochberg q-values over all layers x
   pairs of one metric (`laminae.metrics.multiple_testing`).

Every window's first token is left out with `exclude_first_token` (an outlier of huge norm in
many models, whatever its tag). Per-token values and tags go into `pos_tokens.h5`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from laminae.errors import ConfigError
from laminae.experiment import AnalysisJob
from laminae.metrics.group_contrasts import bootstrap_group_means, permutation_difference
from laminae.metrics.multiple_testing import bh_q_values
from laminae.metrics.trajectories import trajectory_points, trajectory_steps
from laminae.store import CONFIG_FILE, write_tsv

log = logging.getLogger(__name__)

SITES = ("resid_pre", "resid_post")
TABLE_FILENAME = "pos.tsv"
CONTRASTS_FILENAME = "pos_contrasts.tsv"
TOKENS_FILENAME = "pos_tokens.h5"
METRICS = ("step", "cumulative")
TABLE_COLUMNS = ("metric", "layer", "tag", "n", "mean", "ci_low", "ci_high", "relative", "relative_low",
                 "relative_high")
CONTRAST_COLUMNS = ("metric", "layer", "tag_a", "tag_b", "n_a", "n_b", "mean_a", "mean_b", "difference", "ratio",
                    "p_value", "q_value")
DEFINITIONS = {
    "step": "||x_(l+1) - x_l||, x_0 = resid_pre[0], x_(l+1) = resid_post[l]",
    "cumulative": "sum over k <= l of step[k]",
    "tag": "UPOS of the spaCy token the row's characters overlap most; '' special or whitespace",
}


def check_settings(settings: Mapping[str, Any]) -> None:
    """ConfigError naming the `pos.*` key (what the schema cannot say)."""
    tags = list(settings["tags"])
    if len(set(tags)) != len(tags) or len(tags) < 2:
        raise ConfigError("pos.tags", "at least two different UPOS tags", tags)


def tagger_check() -> None:
    """One line naming what to install when spaCy or its English pipeline is missing."""
    from laminae.inputs.pos_tags import missing

    problem = missing()
    if problem:
        raise ConfigError("experiments", f"spaCy's English pipeline for experiment 'pos' ({problem})", "pos")


def corpus_tags(job: AnalysisJob) -> tuple[list[str], str]:
    """Per stored row its UPOS tag, and the pipeline that tagged it."""
    from laminae.inputs.alignment import document_texts
    from laminae.inputs.pos_tags import pipeline_name, tag_rows
    from laminae.models.loading import open_model
    from laminae.provenance import read_stage_record

    if job.model is None:
        raise RuntimeError("pos: this analysis job was built without its model (ModelSource): no tokenizer")
    record = read_stage_record(Path(job.store.dir) / CONFIG_FILE)
    config = record.get("config", {})
    if "corpus" not in config:
        raise RuntimeError(f"pos: {job.store.dir / CONFIG_FILE} names no corpus; the store is not a corpus extraction")
    rows = list(job.store.rows)
    documents = document_texts(config, job.model.project_root, {str(row["document"]) for row in rows})
    tokenizer = open_model(dict(job.model.config), job.model.models_dir, job.model.project_root).tokenizer
    return tag_rows(rows, documents, tokenizer), pipeline_name()


def per_token_values(store, chunk_rows: int | None = None) -> dict[str, np.ndarray]:
    """`step` and `cumulative` per layer and row, each (n_layers, n_rows) float64, streamed."""
    out = {name: np.full((store.n_layers, store.n_rows), np.nan) for name in METRICS}
    for start, chunk in store.iter_chunks(SITES, chunk_rows or store.chunk_rows(SITES), dtype=store.read_dtype()):
        steps = trajectory_steps(trajectory_points(chunk["resid_pre"], chunk["resid_post"])).step
        stop = start + steps.shape[1]
        out["step"][:, start:stop] = steps
        out["cumulative"][:, start:stop] = np.cumsum(steps, axis=0)
    return out


def analyse(job: AnalysisJob) -> None:
    settings = job.settings
    check_settings(settings)
    tagger_check()
    store, out_dir = job.store, Path(job.out_dir)
    tags_of_rows, pipeline = corpus_tags(job)
    values = per_token_values(store)
    included = np.array([bool(tag) for tag in tags_of_rows])
    if settings["exclude_first_token"]:
        included &= store.rows.integers("position") > 0
    write_tokens(out_dir / TOKENS_FILENAME, job.attrs, pipeline, tags_of_rows, included, values, store.rows)
    tags = list(settings["tags"])
    tag_array = np.array(tags_of_rows, dtype=object)
    counts = {tag: int(((tag_array == tag) & included).sum()) for tag in tags}
    tested = [tag for tag in tags if counts[tag] >= settings["min_tokens"]]
    log.info("tagged by %s; tokens per tag: %s; tested (>= %d tokens): %s", pipeline, counts, settings["min_tokens"],
             tested)
    units = store.rows.integers("window") if settings["bootstrap_unit"] == "windows" else np.arange(store.n_rows)
    _, units = np.unique(units[included], return_inverse=True)
    groups = np.full(int(included.sum()), -1, dtype=np.int64)
    for index, tag in enumerate(tags):
        groups[tag_array[included] == tag] = index
    table, contrasts = [], []
    for metric_index, metric in enumerate(METRICS):
        x = values[metric][:, included].T                                        # (n_included, n_layers)
        boot_kwargs = {"n_bootstrap": settings["n_bootstrap"], "confidence": settings["confidence"],
                       "seed": [settings["seed"], metric_index]}
        means = bootstrap_group_means(x, groups, units, len(tags), **boot_kwargs)
        relative = bootstrap_group_means(x, groups, units, len(tags), ratio_to_all=True, **boot_kwargs)
        for g, tag in enumerate(tags):
            for layer in range(store.n_layers):
                table.append({"metric": metric, "layer": layer, "tag": tag, "n": int(means.n[g]),
                              "mean": means.mean[g, layer], "ci_low": means.low[g, layer],
                              "ci_high": means.high[g, layer], "relative": relative.mean[g, layer],
                              "relative_low": relative.low[g, layer], "relative_high": relative.high[g, layer]})
        contrasts.extend(pair_tests(metric, metric_index, x, groups, tags, tested, settings, store.n_layers))
    write_tsv(out_dir / TABLE_FILENAME, [_cells(r) for r in table], TABLE_COLUMNS)
    write_tsv(out_dir / CONTRASTS_FILENAME, [_cells(r) for r in contrasts], CONTRAST_COLUMNS)


def pair_tests(metric: str, metric_index: int, x: np.ndarray, groups: np.ndarray, tags: list[str],
               tested: list[str], settings: Mapping[str, Any], n_layers: int) -> list[dict[str, Any]]:
    """Every pair of tested tags at every layer: difference, ratio, permutation p; BH q over
    all of this metric's rows. Pair p (in order of `itertools.combinations(tested, 2)`) draws
    its permutations from default_rng([seed, 2 + metric_index, p])."""
    rows = []
    for pair_index, (a, b) in enumerate(itertools.combinations(tested, 2)):
        in_a, in_b = groups == tags.index(a), groups == tags.index(b)
        test = permutation_difference(x, in_a, in_b, settings["n_permutations"],
                                      seed=[settings["seed"], 2 + metric_index, pair_index])
        mean_a, mean_b = x[in_a].mean(axis=0), x[in_b].mean(axis=0)
        for layer in range(n_layers):
            rows.append({"metric": metric, "layer": layer, "tag_a": a, "tag_b": b, "n_a": test.n_a, "n_b": test.n_b,
                         "mean_a": mean_a[layer], "mean_b": mean_b[layer], "difference": test.difference[layer],
                         "ratio": mean_a[layer] / mean_b[layer] if mean_b[layer] else np.nan,
                         "p_value": test.p_value[layer]})
    q = bh_q_values([row["p_value"] for row in rows]) if rows else []
    for row, value in zip(rows, q):
        row["q_value"] = value
    return rows


def _cells(row: Mapping[str, Any]) -> dict[str, Any]:
    """NaN as an empty cell, floats as they are."""
    return {key: ("" if isinstance(value, float) and not np.isfinite(value) else value) for key, value in row.items()}


def write_tokens(path: Path, attrs: Mapping[str, Any], pipeline: str, tags: list[str], included: np.ndarray,
                 values: Mapping[str, np.ndarray], rows) -> None:
    with h5py.File(path, "w", track_order=True) as handle:
        handle.attrs.update({**attrs, "pos_pipeline": pipeline,
                             **{f"definition_{name}": text for name, text in DEFINITIONS.items()}})
        for name, array in values.items():
            handle.create_dataset(name, data=array, track_times=False)
        handle.create_dataset("tag", data=np.array(tags, dtype=h5py.string_dtype()), track_times=False)
        handle.create_dataset("included", data=included, track_times=False)
        for column in ("window", "position", "token_id"):
            handle.create_dataset(column, data=rows.integers(column), track_times=False)


def read_table(path: str | Path) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """`pos.tsv` -> {(metric, tag): {column: (n_layers,) array}} (empty cells NaN)."""
    from laminae.store import read_tsv

    out: dict[tuple[str, str], dict[str, list[float]]] = {}
    for row in read_tsv(Path(path)):
        columns = out.setdefault((row["metric"], row["tag"]), {c: [] for c in TABLE_COLUMNS[3:]})
        for column in columns:
            columns[column].append(float(row[column]) if row[column] != "" else np.nan)
    return {key: {c: np.asarray(v) for c, v in columns.items()} for key, columns in out.items()}


def read_contrasts(path: str | Path) -> list[dict[str, Any]]:
    """`pos_contrasts.tsv` rows with numbers parsed (empty cells NaN)."""
    from laminae.store import read_tsv

    out = []
    for row in read_tsv(Path(path)):
        parsed: dict[str, Any] = dict(row)
        for column in CONTRAST_COLUMNS[4:]:
            parsed[column] = float(row[column]) if row[column] != "" else np.nan
        parsed["layer"] = int(row["layer"])
        out.append(parsed)
    return out
