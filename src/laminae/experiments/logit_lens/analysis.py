"""The logit lens (nostalgebraist 2020; Belrose et al. 2023): the model's own final norm and
unembedding applied to the residual stream after every layer. The streaming reducer behind
`logit_lens.tsv`, `logit_lens_pathlength.tsv`, `logit_lens_grid.tsv` and `logit_lens_tokens.h5`.

    >>> reducer = LogitLensReducer(job)                 # job: laminae.experiment.ReducerJob
    >>> for start, chunk in chunks:                     # chunk[site]: (n_layers, rows, width)
    ...     reducer.update(start, chunk)                # per-token statistics -> the .h5
    >>> reducer.finish()                                # medians, bootstrap intervals, grid, correlations

Tokens: every row whose next row is the same window's next position (its next token is that
row's token_id); the last token of a window has none and is left out. With `max_tokens` only
the first `max_tokens` such tokens in corpus order are analysed (the rest are skipped before
any readout).

Per analysed token t and layer l (resid_post[l] through the readout; `laminae.metrics.lens`):
rank, log-probability of the next token, KL(final || layer) in nats, the layer's top-1 id and
whether it equals the final layer's. Direct logit attribution (the final norm frozen at the
last layer's resid_post): the next token's logit as the sum of each part's contribution,

    dla[part, t] = readout.direct_logits(part[t], resid_post[L-1, t], y_t)

for the embedding (resid_pre[0]) and every attn_out[l], mlp_out[l]; `dla_rest` = final logit -
the sum of the parts (the norm's bias through the unembedding, plus anything not in the parts).
Path length: `cumulative[L-1, t]` of `laminae.metrics.paths.token_paths` (the pathlength
experiment's total path length), correlated with the final log-probability of the next token.

Per-token values go into `logit_lens_tokens.h5` while streaming (memory: one block of rows x
vocab, `laminae.metrics.lens.block_rows`); `finish` reads them back one layer at a time for the
bootstrap (`bootstrap_location`: median for rank, log-prob, KL and DLA, mean for agreement and
DLA means; resamples of `np.random.default_rng([seed, k])`, k the summary's index in `SUMMARIES`).
During a sharded extraction each shard's reducer writes its per-token values (`partial`) and the
whole run's reducer copies them into place (`absorb`) before `finish`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
import torch

from laminae.errors import ConfigError
from laminae.experiment import ReducerJob
from laminae.metrics.correlation import METHODS, bootstrap_correlations
from laminae.metrics.lens import FinalReference, block_rows, bootstrap_location, lens_stats, next_token_targets
from laminae.metrics.paths import token_paths

from .table import CORRELATION_COLUMNS, GRID_COLUMNS, TABLE_COLUMNS, write_rows

log = logging.getLogger(__name__)

TABLE_FILENAME = "logit_lens.tsv"
CORRELATION_FILENAME = "logit_lens_pathlength.tsv"
GRID_FILENAME = "logit_lens_grid.tsv"
TOKENS_FILENAME = "logit_lens_tokens.h5"
SITES = ("attn_out", "mlp_out", "resid_pre", "resid_post")
#: (metric, statistic, dataset): the per-layer summaries of `logit_lens.tsv`, in order; the
#: index of each is its bootstrap seed's second entry.
SUMMARIES = (("rank", "median", "rank"), ("logprob", "median", "logprob"), ("kl", "median", "kl"),
             ("top1_agreement", "mean", "agree"), ("dla_attn", "median", "dla_attn"), ("dla_attn", "mean", "dla_attn"),
             ("dla_mlp", "median", "dla_mlp"), ("dla_mlp", "mean", "dla_mlp"), ("logprob", "mean", "logprob"),
             ("kl", "mean", "kl"))
#: One value per token (not per layer): (metric, statistic, dataset), written with layer -1.
TOKEN_SUMMARIES = (("dla_embed", "median", "dla_embed"), ("dla_embed", "mean", "dla_embed"),
                   ("dla_rest", "median", "dla_rest"), ("dla_rest", "mean", "dla_rest"))
PER_LAYER = ("rank", "logprob", "kl", "top1", "agree", "dla_attn", "dla_mlp")
PER_TOKEN = ("row", "window", "position", "token_id", "target", "dla_embed", "dla_rest", "final_logit",
             "path_length")
TOKEN_SETS = ("all", "without_first")


class LensReadout(Protocol):
    """What the reducer needs of `laminae.models.readout.Readout` (final norm + unembedding)."""

    vocab_size: int

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """(rows, d_model) -> (rows, vocab) float32."""

    def direct_logits(self, part: torch.Tensor, final_resid: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """(rows, d_model), (rows, d_model), (rows,) -> (rows,): part's contribution to the
        token's logit with the final norm frozen at final_resid."""

    def decode(self, token_ids: Sequence[int]) -> list[str]:
        """Token ids -> their text, one string per id."""


def check_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The validated analysis settings, or ConfigError naming the `logit_lens.*` key."""

    def integer(key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"logit_lens.{key}", f"an integer >= {minimum}", value)
        return int(value)

    confidence = settings["confidence"]
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ConfigError("logit_lens.confidence", "a number strictly between 0 and 1", confidence)
    max_tokens = settings["max_tokens"]
    grid = settings["grid"]
    if not isinstance(grid, Mapping):
        raise ConfigError("logit_lens.grid", "a mapping with window, start and span", grid)
    return {"n_bootstrap": integer("n_bootstrap", settings["n_bootstrap"], 0), "confidence": float(confidence),
            "seed": integer("seed", settings["seed"], 0),
            "max_tokens": None if max_tokens is None else integer("max_tokens", max_tokens, 1),
            "grid": {key: integer(f"grid.{key}", grid[key], minimum)
                     for key, minimum in (("window", 0), ("start", 0), ("span", 1))}}


def open_readout(job: ReducerJob) -> LensReadout:
    """The run's readout (`job.readout()`: laminae.models.readout.Readout on the CPU)."""
    return job.readout()


class LogitLensReducer:
    """The `reducer` hook's accumulator (module docstring). `readout` defaults to the job's."""

    def __init__(self, job: ReducerJob, readout: LensReadout | None = None):
        self.settings = check_settings(job.settings)
        self.out_dir = Path(job.out_dir)
        self.n_layers = job.n_layers
        self.n_rows = len(job.rows)
        self.rows_seen = 0
        window, position, token_id = (job.rows.integers(c) for c in ("window", "position", "token_id"))
        targets = next_token_targets(window, position, token_id)
        selected = targets >= 0
        if self.settings["max_tokens"] is not None:
            selected &= np.cumsum(selected) <= self.settings["max_tokens"]
        self.selected = selected
        self.slot = np.cumsum(selected) - 1                  # row -> its index among analysed tokens
        self.n_tokens = int(selected.sum())
        self.targets = targets
        self.windows = np.unique(window)       # a shard's own; the grid's window is checked in finish
        self.readout = readout if readout is not None else open_readout(job)
        self.block = block_rows(self.readout.vocab_size)
        log.info("logit lens over %d layers: %d of %d rows have a next token%s", self.n_layers, int((targets >= 0).sum()),
                 self.n_rows, "" if self.settings["max_tokens"] is None else f", the first {self.n_tokens} analysed")
        self.handle = h5py.File(self.out_dir / TOKENS_FILENAME, "w", track_order=True)
        self.handle.attrs.update({**job.attrs, **{k: v for k, v in self.settings.items() if k != "grid"},
                                  "max_tokens": -1 if self.settings["max_tokens"] is None else self.settings["max_tokens"],
                                  "vocab_size": int(self.readout.vocab_size), "n_rows": self.n_rows})
        chunks = (1, min(self.n_tokens, 32768)) if self.n_tokens else None
        dtypes = {"rank": np.int64, "top1": np.int64, "agree": np.int8}
        self.out = {name: self.handle.create_dataset(name, shape=(self.n_layers, self.n_tokens),
                                                     dtype=dtypes.get(name, np.float64), chunks=chunks, track_times=False)
                    for name in PER_LAYER}
        index = np.flatnonzero(selected)
        for name, values in (("row", index), ("window", window[index]), ("position", position[index]),
                             ("token_id", token_id[index]), ("target", targets[index])):
            self.out[name] = self.handle.create_dataset(name, data=values.astype(np.int64), track_times=False)
        for name in ("dla_embed", "dla_rest", "final_logit", "path_length"):
            self.out[name] = self.handle.create_dataset(name, shape=(self.n_tokens,), dtype=np.float64,
                                                        track_times=False)
        self.seconds = 0.0

    def update(self, start: int, chunk: Mapping[str, np.ndarray]) -> None:
        if start != self.rows_seen:
            raise RuntimeError(f"logit_lens: chunk starts at row {start}, expected {self.rows_seen} (chunks in order)")
        stop = start + chunk["resid_post"].shape[1]
        self.rows_seen = stop
        chosen = np.flatnonzero(self.selected[start:stop])
        if not chosen.size:
            return
        began = time.perf_counter()
        sites = {site: np.asarray(chunk[site])[:, chosen] for site in SITES}   # (n_layers, k, width) each
        slots = self.slot[start + chosen]
        first, last = int(slots[0]), int(slots[-1]) + 1                       # contiguous: rows in order
        self.out["path_length"][first:last] = token_paths(*(sites[s] for s in SITES)).cumulative[-1]
        targets = torch.from_numpy(self.targets[start + chosen])
        for lo in range(0, chosen.size, self.block):
            hi = min(chosen.size, lo + self.block)
            self._block(sites, lo, hi, targets[lo:hi], first + lo)
        self.seconds += time.perf_counter() - began

    def _block(self, sites: Mapping[str, np.ndarray], lo: int, hi: int, targets: torch.Tensor, slot: int) -> None:
        """Rows lo:hi of the chunk's analysed tokens, written at slots slot:slot + hi - lo."""
        def tensor(site: str, layer: int) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(sites[site][layer, lo:hi], dtype=np.float32))

        last = self.n_layers - 1
        final_resid = tensor("resid_post", last)
        final_logits = self.readout.logits(final_resid)
        final = FinalReference.of(final_logits)
        stop = slot + hi - lo
        for layer in range(self.n_layers):
            logits = final_logits if layer == last else self.readout.logits(tensor("resid_post", layer))
            stats = lens_stats(logits, targets, final)
            for name in ("rank", "logprob", "kl", "top1", "agree"):
                self.out[name][layer, slot:stop] = getattr(stats, name)
        dla_sum = torch.zeros(hi - lo, dtype=torch.float64)
        embed = self.readout.direct_logits(tensor("resid_pre", 0), final_resid, targets).cpu().to(torch.float64)
        self.out["dla_embed"][slot:stop] = embed.numpy()
        dla_sum += embed
        for site, name in (("attn_out", "dla_attn"), ("mlp_out", "dla_mlp")):
            values = np.empty((self.n_layers, hi - lo))
            for layer in range(self.n_layers):
                part = self.readout.direct_logits(tensor(site, layer), final_resid, targets).cpu().to(torch.float64)
                values[layer] = part.numpy()
                dla_sum += part
            self.out[name][:, slot:stop] = values
        final_logit = final_logits.gather(1, targets[:, None].to(final_logits.device))[:, 0].cpu().to(torch.float64)
        self.out["final_logit"][slot:stop] = final_logit.numpy()
        self.out["dla_rest"][slot:stop] = (final_logit - dla_sum).numpy()

    def partial(self) -> None:
        """A shard's state, for `absorb` (laminae.shards): the per-token values already in the .h5."""
        if self.rows_seen != self.n_rows:
            raise RuntimeError(f"logit_lens: {self.rows_seen} rows streamed, {self.n_rows} expected")
        self.handle.attrs["readout_seconds"] = self.seconds
        self.handle.close()

    def absorb(self, start: int, part: Path) -> None:
        """Rows `start:` from a shard's partial (its folder `part`), instead of their chunks. A
        shard analysed its own first `max_tokens` tokens, which include every token of the
        shard among the whole run's first `max_tokens`; only those are taken."""
        if start != self.rows_seen:
            raise RuntimeError(f"logit_lens: shard starts at row {start}, expected {self.rows_seen}")
        with h5py.File(Path(part) / TOKENS_FILENAME, "r") as handle:
            rows = start + handle["row"][()]                              # the shard's tokens, as whole-run rows
            keep = self.selected[rows]
            slots = self.slot[rows[keep]]
            if not np.array_equal(handle["target"][()][keep], self.targets[rows[keep]]):
                raise RuntimeError(f"logit_lens: shard {part} holds other next tokens than the run's rows")
            if slots.size:
                first, last = int(slots[0]), int(slots[-1]) + 1                # contiguous: rows in order
                for name in PER_LAYER:
                    self.out[name][:, first:last] = handle[name][()][:, keep]
                for name in ("dla_embed", "dla_rest", "final_logit", "path_length"):
                    self.out[name][first:last] = handle[name][()][keep]
            self.seconds += float(handle.attrs.get("readout_seconds", 0.0))
            self.rows_seen += int(handle.attrs["n_rows"])

    def finish(self) -> None:
        if self.rows_seen != self.n_rows:
            raise RuntimeError(f"logit_lens: {self.rows_seen} rows streamed, {self.n_rows} expected")
        log.info("logit lens: readout and statistics of %d tokens x %d layers took %.1f s", self.n_tokens,
                 self.n_layers, self.seconds)
        grid_window = self.settings["grid"]["window"]
        if grid_window not in set(self.windows.tolist()):
            self.handle.close()
            raise ConfigError("logit_lens.grid.window",
                              f"a window of the corpus (0..{int(self.windows.max(initial=-1))})", grid_window)
        began = time.perf_counter()
        rows = self._summary_rows()
        write_rows(self.out_dir / TABLE_FILENAME, rows, TABLE_COLUMNS)
        write_rows(self.out_dir / CORRELATION_FILENAME, self._correlation_rows(), CORRELATION_COLUMNS)
        write_rows(self.out_dir / GRID_FILENAME, self._grid_rows(), GRID_COLUMNS)
        self.handle.attrs["readout_seconds"] = self.seconds
        self.handle.close()
        log.info("logit lens: summaries and %d bootstrap resamples took %.1f s", self.settings["n_bootstrap"],
                 time.perf_counter() - began)

    def _location(self, values: np.ndarray, statistic: str, index: int) -> dict[str, Any]:
        s = self.settings
        loc = bootstrap_location(np.asarray(values, dtype=np.float64), statistic, n_bootstrap=s["n_bootstrap"],
                                 confidence=s["confidence"], seed=[s["seed"], index])
        return {"statistic": statistic, "value": loc.value, "ci_low": loc.ci_low, "ci_high": loc.ci_high, "n": loc.n}

    def _summary_rows(self) -> list[dict[str, Any]]:
        rows = []
        for index, (metric, statistic, name) in enumerate(SUMMARIES):
            for layer in range(self.n_layers):
                rows.append({"metric": metric, "layer": layer,
                             **self._location(self.out[name][layer], statistic, index)})
        for index, (metric, statistic, name) in enumerate(TOKEN_SUMMARIES, start=len(SUMMARIES)):
            rows.append({"metric": metric, "layer": -1, **self._location(self.out[name][()], statistic, index)})
        return rows

    def _correlation_rows(self) -> list[dict[str, Any]]:
        """Pearson and Spearman of the path length with the final log-prob of the next token."""
        s = self.settings
        values = np.stack([self.out["path_length"][()], self.out["logprob"][self.n_layers - 1]])   # (2, n_tokens)
        finite = np.isfinite(values).all(axis=0)
        keep = {"all": finite, "without_first": finite & (self.out["position"][()] > 0)}
        rows = []
        for set_index, tokens in enumerate(TOKEN_SETS):
            boot = bootstrap_correlations(values[:, keep[tokens]], [(0, 1)], n_bootstrap=s["n_bootstrap"],
                                          confidence=s["confidence"], seed=[s["seed"], 100 + set_index])
            for m, method in enumerate(METHODS):
                rows.append({"method": method, "tokens": tokens, "value": boot.value[m, 0],
                             "ci_low": boot.ci_low[m, 0], "ci_high": boot.ci_high[m, 0], "n": boot.n_items})
        return rows

    def _grid_rows(self) -> list[dict[str, Any]]:
        """Each layer's decoded top-1 over the configured stretch of the passage."""
        grid = self.settings["grid"]
        window, position = self.out["window"][()], self.out["position"][()]
        cells = np.flatnonzero((window == grid["window"]) & (position >= grid["start"])
                               & (position < grid["start"] + grid["span"]))
        if not cells.size:
            log.warning("logit lens grid: no analysed token in window %d at positions %d..%d (max_tokens?); the grid "
                        "is empty", grid["window"], grid["start"], grid["start"] + grid["span"] - 1)
            return []
        token_text = self.readout.decode(self.out["token_id"][cells].tolist())
        target_text = self.readout.decode(self.out["target"][cells].tolist())
        rows = []
        for layer in range(self.n_layers):
            top1 = self.out["top1"][layer, cells]
            top1_text = self.readout.decode(top1.tolist())
            rank, logprob = self.out["rank"][layer, cells], self.out["logprob"][layer, cells]
            for i, cell in enumerate(cells):
                rows.append({"layer": layer, "position": int(position[cell]), "token": token_text[i],
                             "next_token": target_text[i], "top1_id": int(top1[i]), "top1": top1_text[i],
                             "rank": int(rank[i]), "logprob": float(logprob[i])})
        return rows
