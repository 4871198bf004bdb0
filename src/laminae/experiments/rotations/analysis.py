"""The `rotations` reducer: per-token angles streamed into `rotation_angles.h5`, per-layer
statistics into `rotations.tsv` (definitions: `outputs` and docs/EXPERIMENTS.md).

    >>> reducer = RotationReducer(job)                # job: laminae.experiment.ReducerJob
    >>> for start, chunk in chunks:                   # chunk[site]: (n_layers, rows, width), rows in order
    ...     reducer.update(start, chunk)
    >>> reducer.finish()                              # -> job.out_dir / rotations.tsv, rotation_angles.h5

The same code runs on a store's chunks (the analysis stage) and on the model's batches
(`rotations.during_extraction`). Memory stays flat in corpus length: each chunk's angles go
straight to the HDF5 file; the only state carried between chunks is the running moments and
the last row of `resid_post` (n_layers, width), so a pair (t, t + 1) that straddles two chunks
is completed when the second arrives. Medians are read back one layer at a time at `finish`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from laminae.experiment import ReducerJob
from laminae.experiments.rotations.angles import BLOCK_ANGLES, block_angles, consecutive_pairs, sequential_angles
from laminae.experiments.rotations.outputs import (ANGLES_FILENAME, DEFINITIONS, INDEX_COLUMNS, METRICS,
                                                   SEQUENTIAL_FIRST, SEQUENTIAL_REST, TABLE_FILENAME, AngleStats,
                                                   write_rotation_table)
from laminae.metrics.moments import RunningMoments, layer_medians
from laminae.metrics.vectors import angle_rows, row_norms
from laminae.partials import PARTIAL, copy_token_rows

log = logging.getLogger(__name__)
SITES = ("attn_out", "mlp_out", "resid_pre", "resid_post")
H5_CHUNK_TOKENS = 32768


class RotationReducer:
    """The `reducer` hook (see module docstring)."""

    def __init__(self, job: ReducerJob):
        self.out_dir = Path(job.out_dir)
        self.n_layers = job.n_layers
        index = {column: job.rows.integers(column) for column in INDEX_COLUMNS}
        self.n_rows = len(job.rows)
        self.has_next, self.first_pair = consecutive_pairs(index["window"], index["position"])   # (n_tokens,)
        # which tokens t count towards each metric (the sequential ones: those that start a pair)
        self.tokens = {**{name: np.ones(self.n_rows, dtype=bool) for name in BLOCK_ANGLES},
                       SEQUENTIAL_FIRST: self.first_pair, SEQUENTIAL_REST: self.has_next & ~self.first_pair}
        self.moments = {metric: RunningMoments(self.n_layers) for metric in METRICS}
        self.n_undefined = {metric: np.zeros(self.n_layers, dtype=np.int64) for metric in METRICS}
        self.rows_seen = 0
        self._last: tuple[np.ndarray, np.ndarray] | None = None   # previous chunk's last resid_post row and norm

        n_windows = int(np.unique(index["window"]).size)
        log.info("rotations over %d layers, %d tokens in %d windows: %d consecutive pairs, %d of them first-token",
                 self.n_layers, self.n_rows, n_windows, int(self.has_next.sum()), int(self.first_pair.sum()))
        shape = (self.n_layers, self.n_rows)
        chunks = (1, min(self.n_rows, H5_CHUNK_TOKENS)) if self.n_rows else None
        self.handle = h5py.File(self.out_dir / ANGLES_FILENAME, "w", track_order=True)
        self.handle.attrs.update({**job.attrs, "unit": "radians", "n_windows": n_windows,
                                  **{f"definition_{key}": text for key, text in DEFINITIONS.items()}})
        self.angles = {name: self.handle.create_dataset(name, shape=shape, dtype=np.float64, chunks=chunks,
                                                        fillvalue=np.nan, track_times=False)
                       for name in (*BLOCK_ANGLES, "sequential")}
        for name, values in (*index.items(), ("has_next", self.has_next), ("first_pair", self.first_pair)):
            self.handle.create_dataset(name, data=values, track_times=False)

    def update(self, start: int, chunk: Mapping[str, np.ndarray]) -> None:
        """Rows `start : start + rows`, each site (n_layers, rows, width); chunks in row order."""
        if start != self.rows_seen:
            raise RuntimeError(f"rotations: chunk starts at row {start}, expected {self.rows_seen} (rows in order)")
        rows = chunk["resid_post"].shape[1]
        if rows == 0:
            return
        stop = start + rows
        norms = {site: row_norms(chunk[site]) for site in SITES}        # (n_layers, rows) each
        for name, values in block_angles(chunk, norms).items():
            self.angles[name][:, start:stop] = values
            self._count(name, values, start)

        post, norms = chunk["resid_post"], norms["resid_post"]
        inside = sequential_angles(post, norms)                          # (n_layers, rows - 1): pairs t = start..stop-2
        if self._last is None:
            first, values = start, inside
        else:                                                            # the pair (start - 1, start) straddles chunks
            last, last_norm = self._last
            across = angle_rows(last, post[:, 0], last_norm, norms[:, 0])   # (n_layers,)
            first, values = start - 1, np.concatenate([across[:, None], inside], axis=1)
        if values.shape[1]:                                              # none for a first chunk of one row
            values = np.where(self.has_next[first : stop - 1], values, np.nan)
            self.angles["sequential"][:, first : stop - 1] = values
            self._count(SEQUENTIAL_FIRST, values, first)
            self._count(SEQUENTIAL_REST, values, first)
        # a copy: during extraction the chunk is a view of a buffer the next batch overwrites
        self._last = (np.array(post[:, -1], dtype=np.float64), norms[:, -1].copy())
        self.rows_seen = stop

    def _count(self, metric: str, values: np.ndarray, first: int) -> None:
        """Add `values` (n_layers, k), the angles of tokens first..first+k-1, to `metric`."""
        counts = self.tokens[metric][first : first + values.shape[1]][None, :]
        defined = ~np.isnan(values)
        self.moments[metric].update(values, counts & defined)
        self.n_undefined[metric] += (counts & ~defined).sum(axis=1)

    def partial(self) -> None:
        """A shard's state, for `absorb` (laminae.shards): the per-token angles already in the
        .h5, plus the running moments and undefined counts in its `partial` group. Shards end at
        window boundaries, so no consecutive pair straddles two shards."""
        if self.rows_seen != self.n_rows:
            raise RuntimeError(f"rotations: {self.rows_seen} rows streamed, {self.n_rows} expected")
        group = self.handle.create_group(PARTIAL)
        for metric in METRICS:
            self.moments[metric].save(group, metric)
            group.create_dataset(f"n_undefined_{metric}", data=self.n_undefined[metric], track_times=False)
        self.handle.close()

    def absorb(self, start: int, part: Path) -> None:
        """Rows `start:` from a shard's partial (its folder `part`), instead of their chunks."""
        if start != self.rows_seen:
            raise RuntimeError(f"rotations: shard starts at row {start}, expected {self.rows_seen}")
        with h5py.File(Path(part) / ANGLES_FILENAME, "r") as handle:
            rows = copy_token_rows(handle, self.angles, start)
            group = handle[PARTIAL]
            for metric in METRICS:
                self.moments[metric].merge(RunningMoments.load(group, metric))
                self.n_undefined[metric] += group[f"n_undefined_{metric}"][()]
        self.rows_seen += rows

    def finish(self) -> None:
        """Medians (one layer at a time), then `rotations.tsv`; closes the HDF5 file."""
        if self.rows_seen != self.n_rows:
            raise RuntimeError(f"rotations: {self.rows_seen} rows streamed, {self.n_rows} expected")
        stats = {}
        for metric in METRICS:
            dataset = self.angles["sequential" if metric.startswith("sequential") else metric]
            moments = self.moments[metric].stats()
            median = layer_medians(dataset, _DefinedAmong(dataset, self.tokens[metric]), self.n_layers)
            stats[metric] = AngleStats(mean=moments.mean, sd=moments.sd, sem=moments.sem, median=median, n=moments.n,
                                       n_undefined=self.n_undefined[metric].copy())
        group = self.handle.create_group("n_undefined", track_order=True)
        for metric in METRICS:
            group.create_dataset(metric, data=self.n_undefined[metric], track_times=False)
        self.handle.close()
        undefined = {metric: int(count.sum()) for metric, count in self.n_undefined.items() if count.any()}
        if undefined:
            log.warning("undefined angles (zero or non-finite vector), left out of the statistics: %s",
                        ", ".join(f"{metric} {count}" for metric, count in undefined.items()))
        write_rotation_table(self.out_dir / TABLE_FILENAME, stats)
        block = stats["block_rotation"]
        if block.n.any():
            log.info("mean block rotation per layer from %.3f to %.3f rad", np.nanmin(block.mean),
                     np.nanmax(block.mean))


class _DefinedAmong:
    """`mask[layer]`: which of `values[layer]` count, i.e. are defined and belong to `tokens`
    (n_tokens,) bool; reads one layer at a time, for `layer_medians` on an open dataset."""

    def __init__(self, values: Any, tokens: np.ndarray):
        self.values, self.tokens = values, tokens

    def __getitem__(self, layer: int) -> np.ndarray:
        return ~np.isnan(np.asarray(self.values[layer])) & self.tokens
