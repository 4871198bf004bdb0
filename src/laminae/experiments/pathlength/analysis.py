"""Path-length decomposition (course module "residual stream path length decomposition",
part 2): the streaming reducer behind `pathlength.tsv` and `pathlength_tokens.h5`.

    >>> reducer = PathLengthReducer(job)                 # job: laminae.experiment.ReducerJob
    >>> for start, chunk in chunks:                      # chunk[site]: (n_layers, rows, width)
    ...     reducer.update(start, chunk)                 # per-token values -> the .h5, moments updated
    >>> reducer.finish()                                 # correlations + bootstrap, layer by layer

The same code runs on a store's chunks (the analysis stage) and on an extraction's batches
(`pathlength.during_extraction=true`). Per-token definitions: `tokens.token_paths`.

While streaming, each chunk's per-token values (pl_attn, pl_mlp, pl_hs, cumulative,
displacement; each (n_layers, rows) float64) go straight into `pathlength_tokens.h5`, and the
per-layer mean / SEM of those and of the straightness are merged chunk by chunk
(`RunningMoments`), so memory does not grow with the corpus. `finish` then reads one layer at
a time back from the .h5 and computes, per token set (`all`, `without_first`: the rows at
position 0 of every window left out):

- Pearson and Spearman correlation of pl_attn with pl_hs and of pl_mlp with pl_hs over the
  tokens whose three values are finite (`laminae.metrics.correlation`);
- their percentile bootstrap CIs: `n_bootstrap` resamples of those tokens with replacement,
  drawn from `np.random.default_rng([seed, s])`, s = 0 for `all` and 1 for `without_first`
  (the same draws at every layer with the same number of tokens, and for all four
  correlations); Spearman re-ranks each resample, ties averaged.

Cost of `finish`: per layer and token set, O(n log n) to sort plus O(n_bootstrap x n) for the
replicates. Measured on one core for the four correlations together (Spearman most of it):
about 0.2 us per token and resample at 10^4 to 10^5 tokens, 0.7 us at 10^6 (the random gathers
no longer fit in cache). So 1000 resamples of a million tokens take about 12 minutes per layer
and token set, about 15 hours for GPT-2 Large's 36 layers: for such corpora lower
`n_bootstrap` (the intervals are then very narrow anyway, and too narrow in truth, since
neighbouring tokens are not independent) or set it to 0 (no CIs). Memory of `finish`: about
200 bytes per token (one layer's values, sort orders, alignment maps) plus a few 16 MiB blocks
of replicates, whatever n_bootstrap.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from laminae.errors import ConfigError, InputFileError
from laminae.experiment import ReducerJob
from laminae.metrics.correlation import METHODS, bootstrap_correlations
from laminae.metrics.moments import RunningMoments
from laminae.partials import PARTIAL, copy_token_rows

from .table import CORRELATIONS, MEANS, TABLE_FILENAME, TOKEN_SETS, table_row, write_table
from .tokens import TOKEN_ARRAYS, straightness, token_paths

log = logging.getLogger(__name__)

TOKENS_FILENAME = "pathlength_tokens.h5"
SITES = ("attn_out", "mlp_out", "resid_pre", "resid_post")
INDEX_COLUMNS = ("window", "position", "token_id")      # rows.tsv columns copied into the .h5
#: (x, y) of the correlations: rows of the (3, n) array stacked in `_layer_values`
PAIRS = {"attn": (0, 2), "mlp": (1, 2)}
CHAIN_GAP_WARNING = 1e-6   # relative gap above which blocks do not chain (straightness may exceed 1)
DEFINITIONS = {
    "pl_attn": "||attn_out[l, t]||",
    "pl_mlp": "||mlp_out[l, t]||",
    "pl_hs": "||resid_post[l, t] - resid_pre[l, t]||",
    "cumulative": "sum over k <= l of pl_hs[k, t]",
    "displacement": "||resid_post[l, t] - resid_pre[0, t]||",
    "chain_gap": "per layer, max over tokens of ||resid_pre[l] - resid_post[l-1]|| / ||resid_post[l-1]||",
}


def check_settings(settings: Mapping[str, Any]) -> tuple[int, float, int]:
    """(n_bootstrap, confidence, seed), or ConfigError naming the `pathlength.*` key."""
    n_bootstrap, confidence, seed = settings["n_bootstrap"], settings["confidence"], settings["seed"]
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ConfigError("pathlength.n_bootstrap", "an integer >= 0", n_bootstrap)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ConfigError("pathlength.confidence", "a number strictly between 0 and 1", confidence)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("pathlength.seed", "an integer >= 0", seed)
    return int(n_bootstrap), float(confidence), int(seed)


class PathLengthReducer:
    """The `reducer` hook's accumulator (module docstring)."""

    def __init__(self, job: ReducerJob):
        self.n_bootstrap, self.confidence, self.seed = check_settings(job.settings)
        self.out_dir = Path(job.out_dir)
        self.n_layers = job.n_layers
        self.n_rows = len(job.rows)
        self.rows_seen = 0
        self.index = {column: job.rows.integers(column) for column in INDEX_COLUMNS}
        first = self.index["position"] == 0
        self.keep = {"all": np.ones(self.n_rows, dtype=bool), "without_first": ~first}
        self.n_windows = int(first.sum())
        log.info("path lengths over %d layers, %d tokens in %d windows", self.n_layers, self.n_rows, self.n_windows)
        self.moments = {(metric, tokens): RunningMoments(self.n_layers) for metric in MEANS for tokens in TOKEN_SETS}
        self.chain_gap = np.zeros(self.n_layers)
        self.handle = h5py.File(self.out_dir / TOKENS_FILENAME, "w", track_order=True)
        self.handle.attrs.update({**job.attrs, "n_windows": self.n_windows, "n_bootstrap": self.n_bootstrap,
                                  "confidence": self.confidence, "seed": self.seed,
                                  **{f"definition_{name}": text for name, text in DEFINITIONS.items()}})
        h5_chunks = (1, min(self.n_rows, 32768)) if self.n_rows else None
        self.out = {name: self.handle.create_dataset(name, shape=(self.n_layers, self.n_rows), dtype=np.float64,
                                                     chunks=h5_chunks, fillvalue=np.nan, track_times=False)
                    for name in TOKEN_ARRAYS}
        for name, values in self.index.items():
            self.handle.create_dataset(name, data=values, track_times=False)

    def update(self, start: int, chunk: Mapping[str, np.ndarray]) -> None:
        if start != self.rows_seen:
            raise RuntimeError(f"pathlength: chunk starts at row {start}, expected {self.rows_seen} (chunks in order)")
        paths = token_paths(*(chunk[site] for site in SITES))
        stop = start + paths.pl_hs.shape[1]
        for name in TOKEN_ARRAYS:
            self.out[name][:, start:stop] = getattr(paths, name)
        values = {**{name: getattr(paths, name) for name in TOKEN_ARRAYS}, "straightness": paths.straightness}
        for metric in MEANS:
            finite = np.isfinite(values[metric])
            for tokens in TOKEN_SETS:
                self.moments[metric, tokens].update(values[metric], finite & self.keep[tokens][None, start:stop])
        self.chain_gap = np.maximum(self.chain_gap, paths.chain_gap)     # NaN (non-finite input) sticks
        self.rows_seen = stop

    def partial(self) -> None:
        """A shard's state, for `absorb` (laminae.shards): the per-token values already in the
        .h5, plus the running moments and chain gaps in its `partial` group."""
        if self.rows_seen != self.n_rows:
            raise RuntimeError(f"pathlength: {self.rows_seen} rows streamed, {self.n_rows} expected")
        group = self.handle.create_group(PARTIAL)
        for (metric, tokens), moments in self.moments.items():
            moments.save(group, f"{metric}:{tokens}")
        group.create_dataset("chain_gap", data=self.chain_gap, track_times=False)
        self.handle.close()

    def absorb(self, start: int, part: Path) -> None:
        """Rows `start:` from a shard's partial (its folder `part`), instead of their chunks."""
        if start != self.rows_seen:
            raise RuntimeError(f"pathlength: shard starts at row {start}, expected {self.rows_seen}")
        with h5py.File(Path(part) / TOKENS_FILENAME, "r") as handle:
            rows = copy_token_rows(handle, self.out, start)
            group = handle[PARTIAL]
            for (metric, tokens), moments in self.moments.items():
                moments.merge(RunningMoments.load(group, f"{metric}:{tokens}"))
            self.chain_gap = np.maximum(self.chain_gap, group["chain_gap"][()])   # NaN sticks, as in update
        self.rows_seen += rows

    def finish(self) -> None:
        if self.rows_seen != self.n_rows:
            raise RuntimeError(f"pathlength: {self.rows_seen} rows streamed, {self.n_rows} expected")
        rows = self._correlation_rows()
        for (metric, tokens), moments in self.moments.items():
            stats = moments.stats()
            rows.extend(table_row(layer, metric, tokens, stats.mean[layer], stats.n[layer], sem=stats.sem[layer])
                        for layer in range(self.n_layers))
        self.handle.create_dataset("chain_gap", data=self.chain_gap, track_times=False)
        self._check_chain()
        self.handle.close()
        write_table(self.out_dir / TABLE_FILENAME, rows)

    def _correlation_rows(self) -> list[dict[str, Any]]:
        rows = []
        started = time.perf_counter()
        for layer in range(self.n_layers):
            values = np.stack([self.out[name][layer] for name in ("pl_attn", "pl_mlp", "pl_hs")])   # (3, n_tokens)
            finite = np.isfinite(values).all(axis=0)
            for set_index, tokens in enumerate(TOKEN_SETS):
                used = finite & self.keep[tokens]
                boot = bootstrap_correlations(values[:, used], [PAIRS["attn"], PAIRS["mlp"]],
                                              n_bootstrap=self.n_bootstrap, confidence=self.confidence,
                                              seed=[self.seed, set_index])
                for metric, (method, sublayer) in CORRELATIONS.items():
                    m, p = METHODS.index(method), list(PAIRS).index(sublayer)
                    rows.append(table_row(layer, metric, tokens, boot.value[m, p], boot.n_items,
                                          ci_low=boot.ci_low[m, p], ci_high=boot.ci_high[m, p]))
            if (~finite).any():
                log.warning("layer %d: %d tokens with a non-finite path length left out of the correlations", layer,
                            int((~finite).sum()))
            log.info("layer %d: correlations and %d bootstrap resamples done (%.1f s so far)", layer, self.n_bootstrap,
                     time.perf_counter() - started)
        return rows

    def _check_chain(self) -> None:
        broken = np.flatnonzero(~(self.chain_gap <= CHAIN_GAP_WARNING))
        if broken.size:
            log.warning("resid_pre of layer(s) %s differs from the previous layer's resid_post (max relative gap %s): "
                        "the path is not continuous there, so straightness may exceed 1",
                        ",".join(map(str, broken)), np.nanmax(self.chain_gap) if np.isfinite(self.chain_gap).any()
                        else math.nan)


def read_tokens(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`pathlength_tokens.h5` -> ({name: array}, attrs): TOKEN_ARRAYS (n_layers, n_tokens),
    INDEX_COLUMNS (n_tokens,), `chain_gap` (n_layers,), and `straightness` computed."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "not found; run the pathlength_analysis rule first")
    try:
        with h5py.File(path, "r") as handle:
            missing = [name for name in (*TOKEN_ARRAYS, *INDEX_COLUMNS) if name not in handle]
            if missing:
                raise InputFileError(path, f"has no {missing[0]!r} dataset; not written by laminae's pathlength stage")
            arrays = {name: handle[name][()] for name in handle}
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in handle.attrs.items()}
    except OSError:
        raise InputFileError(path, "is not a readable HDF5 file (truncated or corrupt); rerun pathlength_analysis") from None
    arrays["straightness"] = straightness(arrays["displacement"], arrays["cumulative"])
    return arrays, attrs
