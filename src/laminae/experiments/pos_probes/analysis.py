"""Experiment `pos_probes`: a token's part of speech decoded from resid_post at every layer.

    >>> analyse(job)     # -> probes_laminar.tsv, probes_folds.tsv (as `probes`), pos_tags.tsv

Rows: the corpus extraction's tokens, in storage order, up to `max_rows` (a prefix: the first
windows), without the first token of each window when `exclude_first_token` (its vector is the
attention sink's), without rows spaCy leaves untagged (special tokens, whitespace), and without
tags seen fewer than `min_count` times. Folds: `n_folds` contiguous stretches of whole windows
(`laminae.metrics.decoding.contiguous_folds`); the null shuffles the tags among the kept tokens of
each window (`unit="within"`, groups = windows), the same shuffles at every layer.
`pos_tags.tsv`: each tag kept, its count, and the rows dropped and why.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from laminae.errors import ConfigError, InputFileError
from laminae.experiment import AnalysisJob, FigureJob
from laminae.metrics.decoding import contiguous_folds, decode_layers
from laminae.experiments.probes.analysis import write_tables
from laminae.experiments.probes.figures import draw
from laminae.store import write_tsv

log = logging.getLogger(__name__)
TAGS_FILENAME = "pos_tags.tsv"


def analyse(job: AnalysisJob) -> None:
    settings, store = job.settings, job.store
    for column in ("document", "window", "position", "token_id"):
        if store.rows and column not in store.rows.columns:
            raise InputFileError(store.rows.source, f"has no {column!r} column; pos_probes needs a corpus extraction")
    n = store.n_rows if not settings["max_rows"] else min(store.n_rows, settings["max_rows"])
    tags = np.array(row_tags(job, n), dtype=object)                     # (n,) UPOS or ""
    window = store.rows.integers("window")[:n]
    position = store.rows.integers("position")[:n]
    keep, counts, dropped = select_rows(tags, position, settings["exclude_first_token"], settings["min_count"])
    names = sorted(counts)
    labels = np.array([names.index(t) for t in tags[keep]])
    n_windows = np.unique(window[keep]).size
    if n_windows < settings["n_folds"]:
        raise ConfigError("pos_probes.n_folds", f"at most the {n_windows} windows of the corpus's probed tokens (folds are "
                          "whole windows; shorter windows: corpus.window_tokens)", settings["n_folds"])
    folds = contiguous_folds(window[keep], settings["n_folds"])
    log.info("pos_probes: %d of %d rows kept, %d tags, %d folds, %d permutations", keep.sum(), n, len(names),
             len(folds), settings["n_permutations"])
    x = first_rows(store, "resid_post", n)[:, keep]                       # (n_layers, kept, d_model)
    result = decode_layers(x, labels, folds, groups=window[keep], n_permutations=settings["n_permutations"],
                           unit="within", seed=settings["seed"], c=settings["c"], max_iter=settings["max_iter"])
    write_tables({"resid_post": result}, job.out_dir, settings["confidence"], [test.size for _, test in folds])
    rows = [{"tag": t, "n_rows": counts[t]} for t in names] + [{"tag": f"(dropped: {why})", "n_rows": k}
                                                                for why, k in dropped.items()]
    write_tsv(Path(job.out_dir) / TAGS_FILENAME, rows, ["tag", "n_rows"])


def first_rows(store, site: str, n: int) -> np.ndarray:
    """(n_layers, n, width) float64: the store's first `n` rows of `site`, streamed, so a long
    corpus is never read whole."""
    parts = []
    for start, chunk in store.iter_chunks([site], store.chunk_rows([site]), dtype=store.read_dtype()):
        if start >= n:
            break
        parts.append(chunk[site][:, : n - start])
    return np.concatenate(parts, axis=1).astype(np.float64)


def row_tags(job: AnalysisJob, n: int) -> list[str]:
    """UPOS per row of the first `n` rows (`laminae.inputs.pos_tags.tag_rows`), with the run's
    tokenizer (`laminae.models.loading.open_model`: no weights) and the extraction's documents."""
    from laminae.inputs.alignment import document_texts
    from laminae.inputs.pos_tags import tag_rows
    from laminae.models.loading import open_model
    from laminae.provenance import read_stage_record

    if job.model is None:
        raise InputFileError(job.store.dir, "has no extraction config.yaml: pos_probes needs the model's tokenizer")
    tokenizer = open_model(dict(job.model.config), job.model.models_dir, job.model.project_root).tokenizer
    rows = [dict(row) for _, row in zip(range(n), job.store.rows)]
    record = read_stage_record(job.store.dir / "config.yaml")
    documents = document_texts(record.get("config", record), job.model.project_root,
                               {str(row["document"]) for row in rows})
    return tag_rows(rows, documents, tokenizer)


def select_rows(tags: np.ndarray, position: np.ndarray, exclude_first: bool,
                min_count: int) -> tuple[np.ndarray, dict[str, int], dict[str, int]]:
    """(keep mask (n,), count per kept tag, rows dropped per reason)."""
    dropped: dict[str, int] = {}
    keep = tags != ""
    dropped["untagged"] = int((~keep).sum())
    if exclude_first:
        first = keep & (position == 0)
        dropped["first token of a window"] = int(first.sum())
        keep &= position != 0
    counts = Counter(tags[keep].tolist())
    rare = {t for t, k in counts.items() if k < min_count}
    if rare:
        is_rare = keep & np.isin(tags, list(rare))
        dropped[f"tags seen < {min_count} times: {', '.join(sorted(rare))}"] = int(is_rare.sum())
        keep &= ~is_rare
    return keep, {t: k for t, k in counts.items() if t not in rare}, dropped


def plot(job: FigureJob) -> None:
    draw(job, "the part of speech (UPOS)", "pos_probes_laminar")
