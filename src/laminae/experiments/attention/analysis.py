"""Where each head looks: the streaming reducer behind `attention.tsv`, `attention_heads.tsv`
and `attention_blocks.h5`.

    >>> reducer = AttentionReducer(job)             # job: laminae.experiment.ReducerJob
    >>> for start, chunk in chunks:                 # chunk["pattern"]: (n_layers, rows, n_heads * n_keys)
    ...     reducer.update(start, chunk)            # chunk["resid_post"]: (n_layers, rows, d_model)
    >>> reducer.finish()

The same code runs on a store's chunks and on an extraction's batches
(`attention.during_extraction=true`, recommended: the n x n patterns of a corpus are then never
written to disk). Per chunk and layer, each query's pattern is reduced to its statistics
(`laminae.metrics.attention.pattern_statistics`: entropy, normalised entropy, sink mass,
mean distance, the uniform baseline of the sink mass), which are summed per resampling block
(consecutive queries of one window, `block_tokens` at a time) and per head; the chunk's
patterns are then dropped. Memory: the block sums, 2 x n_blocks x n_layers x n_heads x 5
float64, plus each token's resid_post norm (n_layers x n_rows float64).

`finish` writes

- `attention_heads.tsv`: per layer, head and statistic, the mean over queries with its block
  bootstrap CI;
- `attention.tsv`: per layer and statistic, the mean and median over heads of those per-head
  means (each with a block bootstrap CI: the same resampled blocks for every head), and the
  heads' quartiles and range; and per layer the first token's resid_post norm against the
  median token's (`first_token_norm_ratio`: the median over windows of the first token's norm
  over the median norm of every other token, with the range over windows);
- `attention_blocks.h5`: the block sums and counts, each token's resid_post norm and block,
  and rows.tsv's window / position / token_id (what a sharded run merges).

Queries at position 0 are left out of the pattern statistics when `exclude_first_token`
(default): under a causal mask they see only themselves (sink mass 1, entropy 0 by
construction). The norms always use every token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from laminae.errors import ConfigError, InputFileError
from laminae.experiment import ReducerJob
from laminae.metrics.attention import (STATISTICS, block_bootstrap_means, block_sums, mass_after_query,
                                       pattern_statistics, query_blocks, ratio_of_sums)
from laminae.metrics.resampling import percentile_interval
from laminae.metrics.vectors import row_norms
from laminae.partials import PARTIAL, copy_token_rows

from .table import HEADS_COLUMNS, HEADS_FILENAME, TABLE_COLUMNS, TABLE_FILENAME

log = logging.getLogger(__name__)

BLOCKS_FILENAME = "attention_blocks.h5"
SITES = ("pattern", "resid_post")
INDEX_COLUMNS = ("window", "position", "token_id")
ENCODER_FAMILIES = ("bert",)          # bidirectional attention: distance is |q - j|
FUTURE_MASS_TOLERANCE = 1e-5          # mass after the query above which a pattern is not causal
SLICE_ELEMENTS = 2**24               # pattern values turned into statistics at once (float64: 128 MiB)


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The analysis settings checked, or ConfigError naming the `attention.*` key."""
    def integer(key: str, minimum: int) -> int:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"attention.{key}", f"an integer >= {minimum}", value)
        return int(value)

    confidence = settings["confidence"]
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ConfigError("attention.confidence", "a number strictly between 0 and 1", confidence)
    if settings["causal"] not in ("auto", True, False):
        raise ConfigError("attention.causal", "auto, true or false", settings["causal"])
    if not isinstance(settings["exclude_first_token"], bool):
        raise ConfigError("attention.exclude_first_token", "true or false", settings["exclude_first_token"])
    return {"n_bootstrap": integer("n_bootstrap", 0), "block_tokens": integer("block_tokens", 1),
            "seed": integer("seed", 0), "confidence": float(confidence), "causal": settings["causal"],
            "exclude_first_token": settings["exclude_first_token"]}


def row_index(rows: Any) -> dict[str, np.ndarray]:
    """INDEX_COLUMNS of the store's rows (n_rows,) each. On stimuli (no `window` column) every
    row is its own prompt, so its own window and resampling block; `position` is the kept token's."""
    index = {column: rows.integers(column) for column in INDEX_COLUMNS if column in rows.columns}
    index.setdefault("window", np.arange(len(rows)))
    return {column: index[column] for column in INDEX_COLUMNS}


def is_causal(setting: Any, model_attrs: Mapping[str, Any]) -> bool:
    """`attention.causal`, with auto resolved from the model's family (BERT: bidirectional)."""
    if setting == "auto":
        return str(model_attrs.get("family", "")) not in ENCODER_FAMILIES
    return bool(setting)


class AttentionReducer:
    """The `reducer` hook's accumulator (module docstring)."""

    def __init__(self, job: ReducerJob):
        self.settings = check_settings(job.settings)
        self.out_dir = Path(job.out_dir)
        self.attrs = dict(job.attrs)
        self.n_layers = job.n_layers
        self.n_heads = int(job.model_attrs["n_heads"])
        width = int(job.widths["pattern"])
        if width % self.n_heads:
            raise ValueError(f"attention: pattern width {width} is not a multiple of n_heads {self.n_heads}")
        self.n_keys = width // self.n_heads
        self.causal = is_causal(self.settings["causal"], job.model_attrs)
        self.n_rows = len(job.rows)
        self.rows_seen = 0
        self.index = row_index(job.rows)
        # on stimuli, each row's category: the sink figure draws the statistics per category
        self.categories = job.rows.column("category") if "category" in job.rows.columns else None
        position, window = self.index["position"], self.index["window"]
        if self.n_rows and position.max() >= self.n_keys:
            raise ValueError(f"attention: a query at position {position.max()} but only {self.n_keys} keys per pattern")
        _, first_row, inverse, length = np.unique(window, return_index=True, return_inverse=True, return_counts=True)
        self.n_visible = position + 1 if self.causal else length[inverse.reshape(-1)]
        include = position > 0 if self.settings["exclude_first_token"] else np.ones(self.n_rows, dtype=bool)
        self.block, self.n_blocks = query_blocks(window, position, self.settings["block_tokens"], include)
        shape = (self.n_blocks, self.n_layers, self.n_heads, len(STATISTICS))
        self.sums, self.counts = np.zeros(shape), np.zeros(shape)
        self.norms = np.full((self.n_layers, self.n_rows), np.nan)
        self.future_mass = np.zeros(self.n_layers)
        log.info("attention over %d layers x %d heads, %d keys, %d queries in %d windows (%s), %d resampling blocks",
                 self.n_layers, self.n_heads, self.n_keys, self.n_rows, first_row.size,
                 "causal" if self.causal else "bidirectional", self.n_blocks)

    def update(self, start: int, chunk: Mapping[str, np.ndarray]) -> None:
        if start != self.rows_seen:
            raise RuntimeError(f"attention: chunk starts at row {start}, expected {self.rows_seen} (chunks in order)")
        pattern = chunk["pattern"]
        rows = pattern.shape[1]
        stop = start + rows
        position, n_visible, block = (self.index["position"][start:stop], self.n_visible[start:stop],
                                      self.block[start:stop])
        self.norms[:, start:stop] = row_norms(chunk["resid_post"])
        used = block[block >= 0]
        if used.size:
            low, high = int(used.min()), int(used.max()) + 1
            local = np.where(block >= 0, block - low, -1)
        for layer in range(self.n_layers):
            p = np.asarray(pattern[layer]).reshape(rows, self.n_heads, self.n_keys)    # (rows, n_heads, n_keys)
            if self.causal:
                self.future_mass[layer] = max(self.future_mass[layer], float(np.nanmax(
                    mass_after_query(p, position), initial=0.0)))
            if not used.size:
                continue
            step = max(1, SLICE_ELEMENTS // (self.n_heads * self.n_keys))     # float64 temporaries stay bounded
            for begin in range(0, rows, step):
                piece = slice(begin, begin + step)
                stats = pattern_statistics(p[piece], position[piece], n_visible[piece],
                                           causal=self.causal)                  # (piece, n_heads, n_stats)
                sums, counts = block_sums(stats, local[piece], high - low)
                self.sums[low:high, layer] += sums
                self.counts[low:high, layer] += counts
        self.rows_seen = stop

    # ------------------------------------------------------------------ shards
    def partial(self) -> None:
        """A shard's state, for `absorb`: its block sums and counts, and its tokens' norms."""
        self._check_rows()
        with h5py.File(self.out_dir / BLOCKS_FILENAME, "w", track_order=True) as handle:
            self._write_blocks(handle)
            group = handle.create_group(PARTIAL)
            group.create_dataset("future_mass", data=self.future_mass, track_times=False)

    def absorb(self, start: int, part: Path) -> None:
        """Rows `start:` from a shard's partial (its folder `part`), instead of their chunks."""
        if start != self.rows_seen:
            raise RuntimeError(f"attention: shard starts at row {start}, expected {self.rows_seen}")
        with h5py.File(Path(part) / BLOCKS_FILENAME, "r") as handle:
            rows = copy_token_rows(handle, {"resid_norm": self.norms}, start)
            sums, counts = handle["sums"][()], handle["counts"][()]
            if sums.shape[0]:
                first = self.block[start : start + rows]
                offset = int(first[first >= 0].min())      # blocks are numbered in row order
                self.sums[offset : offset + sums.shape[0]] += sums
                self.counts[offset : offset + counts.shape[0]] += counts
            self.future_mass = np.maximum(self.future_mass, handle[PARTIAL]["future_mass"][()])
        self.rows_seen += rows

    # ------------------------------------------------------------------ finish
    def finish(self) -> None:
        self._check_rows()
        if self.causal and (self.future_mass > FUTURE_MASS_TOLERANCE).any():
            raise RuntimeError(
                f"attention: the patterns put up to {self.future_mass.max():.3g} of their mass on keys after the query "
                f"(layers {','.join(map(str, np.flatnonzero(self.future_mass > FUTURE_MASS_TOLERANCE)))}): the model "
                f"is not causal; set attention.causal=false")
        with h5py.File(self.out_dir / BLOCKS_FILENAME, "w", track_order=True) as handle:
            self._write_blocks(handle)
        head_rows, layer_rows = self._pattern_rows()
        from laminae.store import write_tsv

        write_tsv(self.out_dir / HEADS_FILENAME, head_rows, HEADS_COLUMNS)
        write_tsv(self.out_dir / TABLE_FILENAME, layer_rows + self._norm_rows(), TABLE_COLUMNS)

    def _check_rows(self) -> None:
        if self.rows_seen != self.n_rows:
            raise RuntimeError(f"attention: {self.rows_seen} rows streamed, {self.n_rows} expected")

    def _write_blocks(self, handle: h5py.File) -> None:
        handle.attrs.update({**self.attrs, "causal": self.causal, "n_heads": self.n_heads, "n_keys": self.n_keys,
                             "statistics": ",".join(STATISTICS), **{k: v for k, v in self.settings.items()
                                                                    if k != "causal"}})
        for name, data in (("sums", self.sums), ("counts", self.counts), ("resid_norm", self.norms),
                           ("block", self.block), *self.index.items()):
            handle.create_dataset(name, data=data, track_times=False)
        if self.categories is not None:
            handle.create_dataset("category", data=self.categories, dtype=h5py.string_dtype(), track_times=False)

    def _pattern_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        settings = self.settings
        confidence = settings["confidence"]
        interval = f"{100 * confidence:g}% block bootstrap CI ({settings['block_tokens']} queries per block)"
        head_means = ratio_of_sums(self.sums, self.counts)             # (n_layers, n_heads, n_stats)
        n_queries = self.counts.sum(axis=0)                             # (n_layers, n_heads, n_stats)
        boot = block_bootstrap_means(self.sums, self.counts, n_bootstrap=settings["n_bootstrap"],
                                     seed=settings["seed"])             # (n_boot, n_layers, n_heads, n_stats)
        head_low, head_high = percentile_interval(np.moveaxis(boot, 0, -1), confidence, ignore_nan=True)
        with np.errstate(all="ignore"):
            summaries = {"mean": (np.nanmean(head_means, axis=1), np.nanmean(boot, axis=2)),
                         "median": (np.nanmedian(head_means, axis=1), np.nanmedian(boot, axis=2))}
            quantiles = {"q25": np.nanquantile(head_means, 0.25, axis=1), "q75": np.nanquantile(head_means, 0.75, axis=1),
                         "min": np.nanmin(head_means, axis=1), "max": np.nanmax(head_means, axis=1)}
        head_rows = [{"layer": layer, "head": head, "metric": metric, "value": _cell(head_means[layer, head, s]),
                      "ci_low": _cell(head_low[layer, head, s]), "ci_high": _cell(head_high[layer, head, s]),
                      "n": int(n_queries[layer, head, s])}
                     for s, metric in enumerate(STATISTICS) for layer in range(self.n_layers)
                     for head in range(self.n_heads)]
        layer_rows = []
        for s, metric in enumerate(STATISTICS):
            for name, (value, replicates) in summaries.items():
                low, high = percentile_interval(np.moveaxis(replicates, 0, -1), confidence, ignore_nan=True)
                layer_rows.extend({"layer": layer, "metric": metric, "summary": name, "value": _cell(value[layer, s]),
                                   "low": _cell(low[layer, s]), "high": _cell(high[layer, s]),
                                   "interval": interval if settings["n_bootstrap"] else "",
                                   "n": int(n_queries[layer].max(axis=0)[s])} for layer in range(self.n_layers))
            for name, value in quantiles.items():
                layer_rows.extend({"layer": layer, "metric": metric, "summary": name, "value": _cell(value[layer, s]),
                                   "n": int(n_queries[layer].max(axis=0)[s])} for layer in range(self.n_layers))
        return head_rows, layer_rows

    def _norm_rows(self) -> list[dict[str, Any]]:
        first = self.index["position"] == 0
        if not first.any() or first.all():
            log.warning("attention: no first token or no other token: the first-token norm ratio is not computed")
            return []
        first_norms = self.norms[:, first]                               # (n_layers, n_windows)
        other_median = np.nanmedian(self.norms[:, ~first], axis=1)        # (n_layers,)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = first_norms / other_median[:, None]                  # (n_layers, n_windows)
        n_windows = int(first.sum())
        rows = []
        for layer in range(self.n_layers):
            rows.append({"layer": layer, "metric": "first_token_norm_ratio", "summary": "median",
                         "value": _cell(np.nanmedian(ratio[layer])), "low": _cell(np.nanmin(ratio[layer])),
                         "high": _cell(np.nanmax(ratio[layer])), "interval": "range over windows", "n": n_windows})
            rows.append({"layer": layer, "metric": "first_token_norm", "summary": "median",
                         "value": _cell(np.nanmedian(first_norms[layer])), "low": _cell(np.nanmin(first_norms[layer])),
                         "high": _cell(np.nanmax(first_norms[layer])), "interval": "range over windows", "n": n_windows})
            rows.append({"layer": layer, "metric": "token_norm", "summary": "median", "value": _cell(other_median[layer]),
                         "n": int((~first).sum())})
        return rows


def _cell(value: float) -> float | None:
    """A table cell: NaN (undefined) becomes an empty cell."""
    value = float(value)
    return None if np.isnan(value) else value


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of `attention_blocks.h5` (whether the patterns were causal, provenance);
    {} when the file is missing or unreadable."""
    try:
        with h5py.File(Path(path), "r") as handle:
            return {k: v.decode() if isinstance(v, bytes) else v for k, v in handle.attrs.items()}
    except OSError:
        return {}


def read_blocks(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`attention_blocks.h5` -> ({name: array}, attrs): `sums`, `counts` (n_blocks, n_layers,
    n_heads, n_stats), `resid_norm` (n_layers, n_rows), `block` and INDEX_COLUMNS (n_rows,), and
    on stimuli `category` (n_rows,) str."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "not found; run the attention_analysis rule first")
    try:
        with h5py.File(path, "r") as handle:
            arrays = {name: handle[name][()] for name in handle if isinstance(handle[name], h5py.Dataset)}
            if "category" in arrays:
                arrays["category"] = handle["category"].asstr()[()]
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in handle.attrs.items()}
    except OSError:
        raise InputFileError(path, "is not a readable HDF5 file (truncated or corrupt); rerun attention_analysis") from None
    return arrays, attrs
