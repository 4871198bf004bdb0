"""Experiment 2 (seed 003): how the attention and MLP sublayers adjust the residual stream.

Per layer and token: the cosine similarity between the attention output (`attn_out`, GPT-2's
`attn.c_proj`) and the MLP output (`mlp_out`, `mlp.c_proj`), i.e. between the two vectors each
block adds to the residual stream; and the L2 norms of those adjustments and of the residual
stream around the block (`resid_pre`, `resid_post`). Per layer, over tokens: mean, SD (ddof=1),
SEM = SD / sqrt(n) and n.

The stage streams the store in row chunks, so memory stays flat however long the corpus:

    >>> run_adjustment_metrics(stage, Path(".../activations"), Path(".../metrics"))
    # -> metrics/adjustments.tsv, metrics/adjustment_cosine.h5, metrics/config.yaml

and is built on the in-memory accumulator, which an extraction can feed directly (chunks of
any size, each (n_layers, rows, width), from any source):

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
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from laminae.errors import InputFileError
from laminae.provenance import atomic_file, atomic_write_text, provenance_attrs, stage_config_record
from laminae.store import ROWS_FILE, ActivationStore, read_tsv, write_tsv

log = logging.getLogger(__name__)

TABLE_FILENAME = "adjustments.tsv"
COSINE_FILENAME = "adjustment_cosine.h5"
CONFIG_FILENAME = "config.yaml"
TABLE_COLUMNS = ("layer", "metric", "value", "sem", "sd", "n")
ADJUSTMENT_SITES = ("attn_out", "mlp_out")          # required: the cosine is between these two
RESIDUAL_SITES = ("resid_pre", "resid_post")        # optional: their norms when stored
COSINE = "cosine"
COSINE_MEDIAN = "cosine_median"
COSINE_DEFINITION = ("cos(attn_out, mlp_out) in float64, clipped to [-1, 1]; NaN (undefined, excluded from "
                     "statistics) when either vector is zero or not finite")
# Working-set target of one streamed chunk (every site as read, float32 for float16/32 stores).
CHUNK_BYTES = 256 * 2**20
# Store attributes copied onto adjustment_cosine.h5 (prefixed `activations_`).
_STORE_ATTRS = ("model_id", "model_revision", "family", "random_weights", "n_layers", "d_model", "storage_dtype")


def norm_metric(site: str) -> str:
    """The table's name for the norm of `site`: `norm_attn_out`, `norm_resid_post`, ..."""
    return f"norm_{site}"


# ------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class LayerStats:
    """Per-layer summary over tokens; each field (n_layers,)."""

    mean: np.ndarray
    sd: np.ndarray       # ddof = 1; NaN for n < 2
    sem: np.ndarray      # sd / sqrt(n)
    n: np.ndarray        # int64


class RunningMoments:
    """Per-layer count, mean and sum of squared deviations (M2), merged chunk by chunk.

    Each chunk's mean and M2 are computed two-pass, then merged with Chan, Golub & LeVeque's
    update: delta = mean_b - mean_a, mean = mean_a + delta n_b / n, M2 = M2_a + M2_b +
    delta^2 n_a n_b / n. Result equals the two-pass statistics of all rows to round-off."""

    def __init__(self, n_layers: int):
        self.n = np.zeros(n_layers, dtype=np.int64)
        self.mean = np.zeros(n_layers, dtype=np.float64)
        self.m2 = np.zeros(n_layers, dtype=np.float64)

    def update(self, values: np.ndarray, valid: np.ndarray) -> None:
        """values, valid: (n_layers, rows); only `valid` entries count."""
        n_b = valid.sum(axis=1, dtype=np.int64)
        mean_b = np.where(valid, values, 0.0).sum(axis=1) / np.maximum(n_b, 1)
        deviation = np.where(valid, values - mean_b[:, None], 0.0)
        m2_b = np.einsum("lr,lr->l", deviation, deviation)
        n = self.n + n_b
        weight = n_b / np.maximum(n, 1)
        delta = mean_b - self.mean
        self.m2 = self.m2 + m2_b + delta * delta * self.n * weight
        self.mean = self.mean + delta * weight
        self.n = n

    def stats(self) -> LayerStats:
        n = self.n.copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, self.mean, np.nan)
            sd = np.where(n > 1, np.sqrt(self.m2 / (n - 1)), np.nan)
            sem = sd / np.sqrt(n)
        return LayerStats(mean=mean, sd=sd, sem=sem, n=n)


def _floats(x: Any) -> np.ndarray:
    """An array of floats without copying float16/32/64 input (ints become float64)."""
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def row_dot(a: Any, b: Any) -> np.ndarray:
    """Row-wise dot product (..., width) -> (...), accumulated in float64. float16/32 input is
    cast to float64 inside einsum's buffers (exact), never copied whole: this is the hot loop."""
    return np.einsum("...i,...i->...", _floats(a), _floats(b), dtype=np.float64)


def row_norms(x: Any) -> np.ndarray:
    """L2 norm of every row: (..., width) -> (...), float64."""
    return np.sqrt(row_dot(x, x))


def cosine_rows(a: Any, b: Any, norm_a: np.ndarray | None = None, norm_b: np.ndarray | None = None) -> np.ndarray:
    """Row-wise cosine of a and b: (..., width) -> (...), float64, in [-1, 1]; NaN where either
    row is zero or not finite (see module docstring). Pass the norms if already computed."""
    norm_a = row_norms(a) if norm_a is None else norm_a
    norm_b = row_norms(b) if norm_b is None else norm_b
    denominator = norm_a * norm_b
    defined = (denominator > 0) & np.isfinite(denominator)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cosine = row_dot(a, b) / denominator
    return np.where(defined, np.clip(cosine, -1.0, 1.0), np.nan)


def layer_medians(cosine: Any, included: Any, n_layers: int) -> np.ndarray:
    """Median of the included values per layer, reading one layer at a time (so `cosine` and
    `included` may be open h5py datasets). NaN where a layer has none."""
    out = np.full(n_layers, np.nan)
    for layer in range(n_layers):
        values = np.asarray(cosine[layer], dtype=np.float64)[np.asarray(included[layer], dtype=bool)]
        if values.size:
            out[layer] = np.median(values)
    return out


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


def read_dtype(store: ActivationStore) -> np.dtype:
    """float32 for float16/float32 stores (exact; the arithmetic is float64 anyway), else float64."""
    storage = str(store.attrs.get("storage_dtype", "float32"))
    return np.dtype(np.float32) if storage in ("float16", "float32") else np.dtype(np.float64)


def chunk_rows_for(store: ActivationStore, sites: Sequence[str], budget_bytes: int = CHUNK_BYTES) -> int:
    """Rows per streamed chunk: a chunk of every site (plus the per-layer pieces of the one
    being stacked) within `budget_bytes`, aligned with the store's HDF5 chunks (a multiple or a
    divisor of their row count): a read that straddles HDF5 chunks costs about 3x the time."""
    widths = [store.widths[site] for site in sites]
    bytes_per_row = store.n_layers * (sum(widths) + max(widths)) * read_dtype(store).itemsize
    rows = max(1, budget_bytes // max(bytes_per_row, 1))
    stored = _hdf5_chunk_rows(store, sites[0])
    if stored:
        rows = rows // stored * stored if rows >= stored else max(d for d in range(1, rows + 1) if stored % d == 0)
    return int(min(max(store.n_rows, 1), rows))


def _hdf5_chunk_rows(store: ActivationStore, site: str) -> int | None:
    with h5py.File(store.paths[0], "r") as handle:
        chunks = handle[site].chunks
    return int(chunks[0]) if chunks else None


def _row_index(store: ActivationStore) -> dict[str, np.ndarray]:
    header = store.rows[0] if store.rows else {}
    missing = [column for column in ("window", "position") if column not in header]
    if missing and store.rows:
        raise InputFileError(store.dir / ROWS_FILE, f"has no {missing[0]!r} column; the adjustments analysis needs "
                                                    "a corpus extraction (document, window, position per row)")
    out = {}
    for column in ("window", "position", "token_id"):
        try:
            out[column] = np.asarray(store.column(column) if store.rows else [], dtype=np.int64)
        except (KeyError, ValueError):
            if column != "token_id":
                raise InputFileError(store.dir / ROWS_FILE, f"column {column!r} must hold integers") from None
    return out


def run_adjustment_metrics(stage: dict[str, Any], activations_dir: str | Path, metrics_dir: str | Path,
                           runtime: dict[str, Any] | None = None, chunk_rows: int | None = None) -> list[Path]:
    """The `adjustments.analysis` stage: stream the store, write the table, the cosines and
    `config.yaml` into `metrics_dir` (each atomically). Returns the written paths.

    `stage["config"]["upstream"]` must be the store's stage hash (else InputFileError, one
    line); `chunk_rows` defaults to what fits `CHUNK_BYTES`."""
    settings = stage["config"]["adjustments"]
    exclude_first = bool(settings["exclude_first_token"])
    if settings.get("during_extraction"):
        return publish_during_extraction(stage, activations_dir, metrics_dir, runtime)
    store = ActivationStore(activations_dir, expected_hash=stage["config"]["upstream"])
    for site in ADJUSTMENT_SITES:
        if site not in store.widths:
            raise InputFileError(store.dir, f"has no {site!r} activations (stored: {', '.join(store.widths)}); "
                                            "the adjustments analysis needs attn_out and mlp_out")
    residual = [site for site in RESIDUAL_SITES if site in store.widths]
    if len(residual) < len(RESIDUAL_SITES):
        log.warning("store lacks %s: no residual-stream norms for it", ", ".join(set(RESIDUAL_SITES) - set(residual)))
    sites = [*ADJUSTMENT_SITES, *residual]
    index = _row_index(store)
    include = first_token_mask(index["position"], exclude_first)
    n_windows = int(np.unique(index["window"]).size)
    chunk_rows = chunk_rows or chunk_rows_for(store, sites)
    log.info("adjustments over %d layers, %d tokens in %d windows (%s), chunks of %d rows; sites %s",
             store.n_layers, store.n_rows, n_windows,
             "first token of each window excluded" if exclude_first else "all tokens", chunk_rows, ",".join(sites))

    attrs = provenance_attrs(stage, runtime)
    attrs.update({f"activations_{key}": store.attrs[key] for key in _STORE_ATTRS if key in store.attrs})
    attrs.update(activations_stage_hash=store.attrs["stage_hash"], exclude_first_token=exclude_first,
                 n_windows=n_windows, cosine_definition=COSINE_DEFINITION)
    chunks = store.iter_chunks(sites, chunk_rows=chunk_rows, dtype=read_dtype(store))
    return write_adjustment_metrics(chunks, store.n_layers, index, include, attrs, metrics_dir, stage, runtime)


def write_adjustment_metrics(chunks: Iterable[tuple[int, Mapping[str, np.ndarray]]], n_layers: int,
                             index: Mapping[str, np.ndarray], include: np.ndarray, attrs: Mapping[str, Any],
                             out_dir: str | Path, stage: dict[str, Any], runtime: dict[str, Any] | None = None
                             ) -> list[Path]:
    """Stream `chunks` through an AdjustmentAccumulator and write adjustment_cosine.h5 (with
    `attrs`), adjustments.tsv and config.yaml into `out_dir`, each atomically; returns their paths.

    `chunks` yields `(first row, {site: (n_layers, rows, width)})` in row order, with
    attn_out, mlp_out and optionally resid_pre / resid_post: `ActivationStore.iter_chunks` here,
    or an extraction's batches (`adjustments.during_extraction`, see laminae.extract). `index`
    holds the per-row `window`, `position` (and `token_id`) columns, `include` the rows that count."""
    out_dir = Path(out_dir)
    cosine_path, table_path, config_path = (out_dir / name for name in (COSINE_FILENAME, TABLE_FILENAME, CONFIG_FILENAME))
    n_rows = len(index["position"])
    shape = (n_layers, n_rows)
    h5_chunks = (1, min(n_rows, 32768)) if n_rows else None
    with atomic_file(cosine_path) as tmp, h5py.File(tmp, "w", track_order=True) as handle:
        handle.attrs.update(attrs)
        cosine_out = handle.create_dataset("cosine", shape=shape, dtype=np.float64, chunks=h5_chunks,
                                           fillvalue=np.nan, track_times=False)
        included_out = handle.create_dataset("included", shape=shape, dtype=bool, chunks=h5_chunks, track_times=False)
        for name, values in index.items():
            handle.create_dataset(name, data=values, track_times=False)
        accumulator = AdjustmentAccumulator(n_layers, cosine_out=cosine_out, included_out=included_out)
        for start, chunk in chunks:
            rows = chunk["attn_out"].shape[1]
            accumulator.update(chunk["attn_out"], chunk["mlp_out"], chunk.get("resid_pre"), chunk.get("resid_post"),
                               include[start : start + rows])
            del chunk
        if accumulator.rows_seen != n_rows:
            raise RuntimeError(f"adjustments: {accumulator.rows_seen} rows streamed, {n_rows} expected")
        result = accumulator.finish()
        handle.create_dataset("n_undefined", data=result.n_undefined, track_times=False)
    if result.n_undefined.any():
        log.warning("cosine undefined (zero or non-finite vector) for %d token x layer values, left out of the "
                    "statistics (layers %s)", int(result.n_undefined.sum()),
                    ",".join(map(str, np.flatnonzero(result.n_undefined))))
    with atomic_file(table_path) as tmp:
        write_tsv(tmp, result.table_rows(), TABLE_COLUMNS)
    atomic_write_text(config_path, stage_config_record(stage, runtime))
    cos = result.stats[COSINE]
    if cos.n.any():
        log.info("mean cosine per layer from %.3f to %.3f (n = %d to %d tokens per layer)", np.nanmin(cos.mean),
                 np.nanmax(cos.mean), cos.n.min(), cos.n.max())
    else:
        log.warning("no defined, included cosine at any layer: the statistics are empty")
    log.info("wrote %s, %s, %s", table_path, cosine_path, config_path)
    return [table_path, cosine_path, config_path]


def publish_during_extraction(stage: dict[str, Any], activations_dir: str | Path, metrics_dir: str | Path,
                              runtime: dict[str, Any] | None = None) -> list[Path]:
    """The analysis stage under `adjustments.during_extraction`: the extraction already computed
    adjustment_cosine.h5 and adjustments.tsv (with the same code, from the same activations);
    check they come from the upstream extraction and publish them into `metrics_dir` with this
    stage's provenance (the extraction's attributes become `activations_*`)."""
    source = Path(activations_dir)
    cosine_source, table_source = source / COSINE_FILENAME, source / TABLE_FILENAME
    for path in (cosine_source, table_source):
        if not path.is_file():
            raise InputFileError(path, "missing: with adjustments.during_extraction the extraction stage writes it; "
                                       "delete the activations folder and rerun")
    try:
        with h5py.File(cosine_source, "r") as handle:
            extraction = {k: v.decode() if isinstance(v, bytes) else v for k, v in handle.attrs.items()}
    except OSError:
        raise InputFileError(cosine_source, "is not a readable HDF5 file (truncated or corrupt); delete the "
                                            "activations folder and rerun") from None
    if extraction.get("stage_hash") != stage["config"]["upstream"]:
        raise InputFileError(cosine_source, f"stage hash {extraction.get('stage_hash')!r} does not match the config's "
                                            f"{stage['config']['upstream']!r}; these results come from another config")
    attrs = provenance_attrs(stage, runtime)
    attrs.update({f"activations_{key}": extraction[key] for key in _STORE_ATTRS if key in extraction})
    attrs.update(activations_stage_hash=extraction["stage_hash"], computed_during_extraction=True,
                 **{key: extraction[key] for key in ("exclude_first_token", "n_windows", "cosine_definition")})
    metrics_dir = Path(metrics_dir)
    cosine_path, table_path, config_path = (metrics_dir / name for name in (COSINE_FILENAME, TABLE_FILENAME, CONFIG_FILENAME))
    with atomic_file(cosine_path) as tmp:
        shutil.copyfile(cosine_source, tmp)
        with h5py.File(tmp, "r+") as handle:
            for key in list(handle.attrs):
                del handle.attrs[key]
            handle.attrs.update(attrs)
    with atomic_file(table_path) as tmp:
        shutil.copyfile(table_source, tmp)
    atomic_write_text(config_path, stage_config_record(stage, runtime))
    log.info("computed during extraction (%s); published %s, %s, %s", source, table_path, cosine_path, config_path)
    return [table_path, cosine_path, config_path]


# ---------------------------------------------------------------------------------- reading
def read_adjustment_table(path: str | Path) -> dict[str, LayerStats]:
    """`adjustments.tsv` back as {metric: LayerStats}, layers 0..n-1 (NaN where missing)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "not found; run the adjustment_metrics rule first")
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
        raise InputFileError(path, "not found; run the adjustment_metrics rule first")
    try:
        with h5py.File(path, "r") as handle:
            for name in ("cosine", "included"):
                if name not in handle:
                    raise InputFileError(path, f"has no {name!r} dataset; not written by laminae's adjustments stage")
            attrs: Mapping[str, Any] = {k: v.decode() if isinstance(v, bytes) else v for k, v in handle.attrs.items()}
            return handle["cosine"][()], handle["included"][()].astype(bool), dict(attrs)
    except OSError:
        raise InputFileError(path, "is not a readable HDF5 file (truncated or corrupt); rerun adjustment_metrics") from None
