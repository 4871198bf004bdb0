"""Experiment 2 (seed 003): how the attention and MLP sublayers adjust the residual stream.

Per layer and token: the cosine similarity between the attention output (`attn_out`, GPT-2's
`attn.c_proj`) and the MLP output (`mlp_out`, `mlp.c_proj`), i.e. between the two vectors each
block adds to the residual stream; and the L2 norms of those adjustments and of the residual
stream around the block (`resid_pre`, `resid_post`). Per layer, over tokens: mean, SD (ddof=1),
SEM = SD / sqrt(n) and n.

The experiment's `reducer` (`AdjustmentReducer`) takes the activations in row chunks, from the
store or from the model during extraction, so memory stays flat however long the corpus:

    >>> reducer = AdjustmentReducer(job)               # job: laminae.experiment.ReducerJob
    >>> for start, chunk in chunks:                    # chunk[site]: (n_layers, rows, width)
    ...     reducer.update(start, chunk)
    >>> reducer.finish()       # -> job.out_dir / "adjustments.tsv", job.out_dir / "adjustment_cosine.h5"

It is built on the in-memory accumulator (chunks of any size, from any source):

    >>> acc = AdjustmentAccumulator(n_layers=36)
    >>> for attn, mlp, pre, post, keep in batches:      # keep: (rows,) bool, True = counts
    ...     chunk = acc.update(attn, mlp, pre, post, keep)
    ...     chunk.cosine.shape                         # (36, rows): every token, NaN if undefined
    >>> result = acc.finish()
    >>> result.stats["cosine"].mean.shape, result.stats["norm_resid_post"].sem.shape
    ((36,), (36,))
    >>> result.table_rows()[0]
    {'layer': 0, 'metric': 'cosine', 'value': 0.17, 'sem': 0.01, 'sd': 0.19, 'n': 346}

Definitions (all arithmetic in float64, whatever the storage dtype; float16/32 chunks are cast
inside the dot products, never copied whole):

- `cosine` = <a, m> / (|a| |m|), clipped to [-1, 1] against round-off. It is undefined when
  either vector is zero (or not finite): such a cosine is stored as NaN and left out of every
  statistic (n counts only defined values; `n_undefined` in the .h5 says how many were dropped).
- `exclude_first_token` drops the rows at position 0 (the first token of every window, an
  outlier in GPT-2) from the statistics; n falls by exactly the number of windows. Their
  cosines are still stored, with `included` False.
- Mean and SD are merged chunk by chunk with Chan et al.'s pairwise update (each chunk's own
  mean and sum of squared deviations computed two-pass), which is as stable as a two-pass
  computation over all rows. SD and SEM are NaN for n < 2, the mean for n = 0.
- `cosine_median`: the per-layer median of the included cosines (value and n only).

Tidy table `adjustments.tsv`, columns `TABLE_COLUMNS`, rows per metric then layer; an empty
cell means not applicable or undefined (NaN when read back):

    metric            value                     sem, sd        n
    cosine            mean cosine(attn, mlp)    yes            defined, included tokens
    cosine_median     median cosine             -              same n
    norm_attn_out     mean |attn_out|           yes            included tokens
    norm_mlp_out      mean |mlp_out|            yes            included tokens
    norm_resid_pre    mean |residual stream| at the block input  (when stored)
    norm_resid_post   mean |residual stream| at the block output (when stored)

`adjustment_cosine.h5`: `cosine` (n_layers, n_tokens) float64, `included` (n_layers, n_tokens)
bool (exactly the values that entered the cosine statistics), `window`, `position`, `token_id`
(n_tokens,), `n_undefined` (n_layers,); attributes: provenance, `exclude_first_token`, and the
store's model attributes prefixed `activations_`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from laminae.errors import InputFileError
from laminae.experiment import ReducerJob
from laminae.metrics.moments import LayerStats, RunningMoments, layer_medians
from laminae.metrics.vectors import cosine_rows, row_norms
from laminae.partials import PARTIAL, copy_token_rows
from laminae.store import read_tsv, write_tsv

log = logging.getLogger(__name__)

TABLE_FILENAME = "adjustments.tsv"
COSINE_FILENAME = "adjustment_cosine.h5"
TABLE_COLUMNS = ("layer", "metric", "value", "sem", "sd", "n")
ADJUSTMENT_SITES = ("attn_out", "mlp_out")          # the cosine is between these two
RESIDUAL_SITES = ("resid_pre", "resid_post")        # their norms too (optional for the accumulator)
COSINE = "cosine"
COSINE_MEDIAN = "cosine_median"
COSINE_DEFINITION = ("cos(attn_out, mlp_out) in float64, clipped to [-1, 1]; NaN (undefined, excluded from "
                     "statistics) when either vector is zero or not finite")
INDEX_COLUMNS = ("window", "position", "token_id")   # rows.tsv columns copied into adjustment_cosine.h5


def norm_metric(site: str) -> str:
    """The table's name for the norm of `site`: `norm_attn_out`, `norm_resid_post`, ..."""
    return f"norm_{site}"


# ----------------------------------------------------------------------------- accumulator
class ChunkCosines(NamedTuple):
    """What `AdjustmentAccumulator.update` returns for one chunk, both (n_layers, rows)."""

    cosine: np.ndarray     # float64; NaN where undefined
    included: np.ndarray   # bool; the values that entered the cosine statistics


@dataclass(frozen=True)
class AdjustmentResult:
    """The finished statistics. `stats` maps a metric (`cosine`, `norm_<site>`) to its
    LayerStats; `cosine` / `included` hold every token's value when the accumulator kept them
    in memory (None when they went to `cosine_out` / `included_out`)."""

    n_layers: int
    n_rows: int
    stats: dict[str, LayerStats]
    cosine_median: np.ndarray
    n_undefined: np.ndarray          # (n_layers,): include-mask rows whose cosine is undefined
    cosine: np.ndarray | None = None
    included: np.ndarray | None = None

    def table_rows(self) -> list[dict[str, Any]]:
        """Rows of the tidy table (columns TABLE_COLUMNS), per metric then layer."""
        rows = []
        cos = self.stats[COSINE]
        metrics: list[tuple[str, LayerStats]] = [
            (COSINE, cos),
            (COSINE_MEDIAN, LayerStats(self.cosine_median, np.full(self.n_layers, np.nan),
                                       np.full(self.n_layers, np.nan), cos.n)),
            *((name, stats) for name, stats in self.stats.items() if name != COSINE),
        ]
        for name, stats in metrics:
            for layer in range(self.n_layers):
                rows.append({"layer": layer, "metric": name, "value": _cell(stats.mean[layer]),
                             "sem": _cell(stats.sem[layer]), "sd": _cell(stats.sd[layer]), "n": int(stats.n[layer])})
        return rows


def _cell(value: float) -> float | None:
    """A table cell: NaN (not applicable, or n too small) becomes an empty cell."""
    return None if math.isnan(value) else float(value)


class AdjustmentAccumulator:
    """Streaming per-layer statistics of experiment 2; feed chunks, then `finish()`.

    Every token's cosine is kept: in memory by default (n_layers x rows float64, 1/width of the
    activations), or written to `cosine_out` / `included_out`, any arrays of shape
    (n_layers, n_rows) that take slice assignment, such as open h5py datasets (then memory
    stays flat: only the current chunk is held)."""

    def __init__(self, n_layers: int, cosine_out: Any = None, included_out: Any = None):
        if (cosine_out is None) != (included_out is None):
            raise ValueError("pass both cosine_out and included_out, or neither")
        self.n_layers = n_layers
        self.rows_seen = 0
        self.cosine_moments = RunningMoments(n_layers)
        self.norm_moments: dict[str, RunningMoments] = {}
        self.n_undefined = np.zeros(n_layers, dtype=np.int64)
        self._out = (cosine_out, included_out) if cosine_out is not None else None
        self._kept: list[ChunkCosines] = []
        self._residual_sites: tuple[str, ...] | None = None

    def update(self, attn_out: np.ndarray, mlp_out: np.ndarray, resid_pre: np.ndarray | None = None,
               resid_post: np.ndarray | None = None, include_mask: np.ndarray | None = None) -> ChunkCosines:
        """Add one chunk: each site (n_layers, rows, width), `include_mask` (rows,) bool (None:
        every row counts). The residual sites are optional but must be given for every chunk
        or none. Returns the chunk's cosines and inclusion mask, each (n_layers, rows)."""
        shape = np.shape(attn_out)
        if len(shape) != 3 or shape[0] != self.n_layers or np.shape(mlp_out) != shape:
            raise ValueError(f"attn_out and mlp_out must both be (n_layers={self.n_layers}, rows, width); "
                             f"got {shape} and {np.shape(mlp_out)}")
        residual = {site: x for site, x in zip(RESIDUAL_SITES, (resid_pre, resid_post)) if x is not None}
        if self._residual_sites is None:
            self._residual_sites = tuple(residual)
        elif tuple(residual) != self._residual_sites:
            raise ValueError(f"residual sites changed between chunks: {self._residual_sites} then {tuple(residual)}")
        for site, x in residual.items():
            if np.ndim(x) != 3 or np.shape(x)[:2] != shape[:2]:
                raise ValueError(f"{site} must be (n_layers, rows={shape[1]}, width); got {np.shape(x)}")
        rows = shape[1]
        keep = np.ones(rows, dtype=bool) if include_mask is None else np.asarray(include_mask, dtype=bool)
        if keep.shape != (rows,):
            raise ValueError(f"include_mask must be ({rows},); got {keep.shape}")

        norms = {"attn_out": row_norms(attn_out), "mlp_out": row_norms(mlp_out)}
        cosine = cosine_rows(attn_out, mlp_out, norms["attn_out"], norms["mlp_out"])
        undefined = np.isnan(cosine)
        included = keep[None, :] & ~undefined
        self.cosine_moments.update(cosine, included)
        self.n_undefined += (keep[None, :] & undefined).sum(axis=1)
        norms.update({site: row_norms(x) for site, x in residual.items()})
        for site, norm in norms.items():
            moments = self.norm_moments.setdefault(site, RunningMoments(self.n_layers))
            moments.update(norm, keep[None, :] & np.isfinite(norm))

        chunk = ChunkCosines(cosine, included)
        start, self.rows_seen = self.rows_seen, self.rows_seen + rows
        if self._out is None:
            self._kept.append(chunk)
        else:
            self._out[0][:, start : self.rows_seen] = cosine
            self._out[1][:, start : self.rows_seen] = included
        return chunk

    def finish(self) -> AdjustmentResult:
        """The statistics so far (the accumulator may keep going afterwards)."""
        if self._out is None:
            cosine = np.concatenate([c.cosine for c in self._kept], axis=1) if self._kept else np.empty((self.n_layers, 0))
            included = (np.concatenate([c.included for c in self._kept], axis=1) if self._kept
                        else np.empty((self.n_layers, 0), dtype=bool))
            self._kept = [ChunkCosines(cosine, included)]
            source = (cosine, included)
        else:
            cosine = included = None
            source = self._out
        stats = {COSINE: self.cosine_moments.stats()}
        order = (*ADJUSTMENT_SITES, *RESIDUAL_SITES)
        stats.update({norm_metric(site): self.norm_moments[site].stats() for site in order if site in self.norm_moments})
        return AdjustmentResult(
            n_layers=self.n_layers, n_rows=self.rows_seen, stats=stats,
            cosine_median=layer_medians(source[0], source[1], self.n_layers),
            n_undefined=self.n_undefined.copy(), cosine=cosine, included=included,
        )


def compute_adjustments(attn_out: np.ndarray, mlp_out: np.ndarray, resid_pre: np.ndarray | None = None,
                        resid_post: np.ndarray | None = None, include_mask: np.ndarray | None = None
                        ) -> AdjustmentResult:
    """One-shot version for arrays already in memory (one chunk through the accumulator)."""
    accumulator = AdjustmentAccumulator(np.shape(attn_out)[0])
    accumulator.update(attn_out, mlp_out, resid_pre, resid_post, include_mask)
    return accumulator.finish()


# ----------------------------------------------------------------------------------- stage
def first_token_mask(position: np.ndarray, exclude_first_token: bool) -> np.ndarray:
    """Rows that count: all, or all but position 0 of each window."""
    return position != 0 if exclude_first_token else np.ones(position.shape, dtype=bool)


class AdjustmentReducer:
    """The `reducer` hook's accumulator: feeds every chunk to an AdjustmentAccumulator that
    writes each token's cosine straight into adjustment_cosine.h5 (memory stays flat), then
    writes the per-layer table. The same code runs on a store's chunks (the analysis stage) and
    on an extraction's batches (`adjustments.during_extraction`); a sharded extraction calls
    `partial` in each shard and `absorb`s them in a reducer over every row."""

    def __init__(self, job: ReducerJob):
        self.out_dir = Path(job.out_dir)
        exclude_first = bool(job.settings["exclude_first_token"])
        self.index = {column: job.rows.integers(column) for column in INDEX_COLUMNS}
        self.include = first_token_mask(self.index["position"], exclude_first)
        self.n_rows = len(job.rows)
        n_windows = int(np.unique(self.index["window"]).size)
        log.info("adjustments over %d layers, %d tokens in %d windows (%s)", job.n_layers, self.n_rows, n_windows,
                 "first token of each window excluded" if exclude_first else "all tokens")
        shape = (job.n_layers, self.n_rows)
        h5_chunks = (1, min(self.n_rows, 32768)) if self.n_rows else None
        self.handle = h5py.File(self.out_dir / COSINE_FILENAME, "w", track_order=True)
        self.handle.attrs.update({**job.attrs, "exclude_first_token": exclude_first, "n_windows": n_windows,
                                  "cosine_definition": COSINE_DEFINITION})
        cosine_out = self.handle.create_dataset("cosine", shape=shape, dtype=np.float64, chunks=h5_chunks,
                                                fillvalue=np.nan, track_times=False)
        included_out = self.handle.create_dataset("included", shape=shape, dtype=bool, chunks=h5_chunks,
                                                  track_times=False)
        for name, values in self.index.items():
            self.handle.create_dataset(name, data=values, track_times=False)
        self.accumulator = AdjustmentAccumulator(job.n_layers, cosine_out=cosine_out, included_out=included_out)

    def update(self, start: int, chunk: Mapping[str, np.ndarray]) -> None:
        rows = chunk["attn_out"].shape[1]
        self.accumulator.update(chunk["attn_out"], chunk["mlp_out"], chunk["resid_pre"], chunk["resid_post"],
                                self.include[start : start + rows])

    def partial(self) -> None:
        """A shard's state, for `absorb` (laminae.shards): the per-token cosines already in the
        .h5, plus the running moments and undefined counts in its `partial` group."""
        accumulator = self.accumulator
        if accumulator.rows_seen != self.n_rows:
            raise RuntimeError(f"adjustments: {accumulator.rows_seen} rows streamed, {self.n_rows} expected")
        group = self.handle.create_group(PARTIAL)
        accumulator.cosine_moments.save(group, COSINE)
        for site, moments in accumulator.norm_moments.items():
            moments.save(group, norm_metric(site))
        group.create_dataset("n_undefined", data=accumulator.n_undefined, track_times=False)
        self.handle.close()

    def absorb(self, start: int, part: Path) -> None:
        """Rows `start:` from a shard's partial (its folder `part`), instead of their chunks."""
        accumulator = self.accumulator
        if start != accumulator.rows_seen:
            raise RuntimeError(f"adjustments: shard starts at row {start}, expected {accumulator.rows_seen}")
        with h5py.File(Path(part) / COSINE_FILENAME, "r") as handle:
            cosine_out, included_out = accumulator._out
            rows = copy_token_rows(handle, {"cosine": cosine_out, "included": included_out}, start)
            group = handle[PARTIAL]
            accumulator.cosine_moments.merge(RunningMoments.load(group, COSINE))
            for site in (*ADJUSTMENT_SITES, *RESIDUAL_SITES):
                if norm_metric(site) in group:
                    moments = accumulator.norm_moments.setdefault(site, RunningMoments(accumulator.n_layers))
                    moments.merge(RunningMoments.load(group, norm_metric(site)))
            accumulator.n_undefined += group["n_undefined"][()]
        accumulator.rows_seen += rows

    def finish(self) -> None:
        if self.accumulator.rows_seen != self.n_rows:
            raise RuntimeError(f"adjustments: {self.accumulator.rows_seen} rows streamed, {self.n_rows} expected")
        result = self.accumulator.finish()
        self.handle.create_dataset("n_undefined", data=result.n_undefined, track_times=False)
        self.handle.close()
        if result.n_undefined.any():
            log.warning("cosine undefined (zero or non-finite vector) for %d token x layer values, left out of the "
                        "statistics (layers %s)", int(result.n_undefined.sum()),
                        ",".join(map(str, np.flatnonzero(result.n_undefined))))
        write_tsv(self.out_dir / TABLE_FILENAME, result.table_rows(), TABLE_COLUMNS)
        cos = result.stats[COSINE]
        if cos.n.any():
            log.info("mean cosine per layer from %.3f to %.3f (n = %d to %d tokens per layer)", np.nanmin(cos.mean),
                     np.nanmax(cos.mean), cos.n.min(), cos.n.max())
        else:
            log.warning("no defined, included cosine at any layer: the statistics are empty")


# ---------------------------------------------------------------------------------- reading
def read_adjustment_table(path: str | Path) -> dict[str, LayerStats]:
    """`adjustments.tsv` back as {metric: LayerStats}, layers 0..n-1 (NaN where missing)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "not found; run the adjustments_analysis rule first")
    rows = read_tsv(path)
    if not rows or tuple(rows[0]) != TABLE_COLUMNS:
        raise InputFileError(path, f"is not an adjustments table (expected columns {', '.join(TABLE_COLUMNS)})")
    try:
        n_layers = max(int(row["layer"]) for row in rows) + 1
        out: dict[str, dict[str, np.ndarray]] = {}
        for row in rows:
            columns = out.setdefault(row["metric"], {"mean": np.full(n_layers, np.nan), "sd": np.full(n_layers, np.nan),
                                                     "sem": np.full(n_layers, np.nan),
                                                     "n": np.zeros(n_layers, dtype=np.int64)})
            layer = int(row["layer"])
            columns["mean"][layer] = _float(row["value"])
            columns["sd"][layer] = _float(row["sd"])
            columns["sem"][layer] = _float(row["sem"])
            columns["n"][layer] = int(row["n"]) if row["n"] else 0
    except ValueError as error:
        raise InputFileError(path, f"has a malformed row ({error})") from None
    return {metric: LayerStats(**columns) for metric, columns in out.items()}


def _float(text: str) -> float:
    return float(text) if text else math.nan


def read_cosines(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """`adjustment_cosine.h5` -> (cosine (n_layers, n_tokens), included (same, bool), attrs)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "not found; run the adjustments_analysis rule first")
    try:
        with h5py.File(path, "r") as handle:
            for name in ("cosine", "included"):
                if name not in handle:
                    raise InputFileError(path, f"has no {name!r} dataset; not written by laminae's adjustments stage")
            attrs: Mapping[str, Any] = {k: v.decode() if isinstance(v, bytes) else v for k, v in handle.attrs.items()}
            return handle["cosine"][()], handle["included"][()].astype(bool), dict(attrs)
    except OSError:
        raise InputFileError(path, "is not a readable HDF5 file (truncated or corrupt); rerun adjustments_analysis") from None
