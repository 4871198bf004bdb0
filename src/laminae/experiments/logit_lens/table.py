"""The tidy tables of the logit lens and their readers.

    >>> table = LensTable.read(metrics_dir / "logit_lens.tsv")
    >>> table.get("kl", "median")                 # (n_layers,) values
    >>> table.get("kl", "median", "ci_low")       # (n_layers,) lower bootstrap bounds
    >>> table.embed("dla_embed", "median")        # the embedding's row (layer -1): value
    >>> read_correlations(metrics_dir / "logit_lens_pathlength.tsv")[("spearman", "all")]["value"]

`logit_lens.tsv` (TABLE_COLUMNS), one row per number; an empty cell: undefined or no bootstrap.

    metric           statistic      value over analysed tokens                       CI
    rank             median, -      rank of the next token (1 = top-1)              bootstrap
    logprob          median, mean   log p(next token), nats                          bootstrap
    kl               median, mean   KL(final || layer), nats                         bootstrap
    top1_agreement   mean           fraction whose top-1 equals the final top-1      bootstrap
    dla_attn/_mlp    median, mean   direct logit attribution of the layer's sublayer bootstrap
    dla_embed/_rest  median, mean   of the embedding / the rest (layer -1)           bootstrap

`logit_lens_pathlength.tsv` (CORRELATION_COLUMNS): method (pearson, spearman), tokens (all,
without_first), value, ci_low, ci_high, n. `logit_lens_grid.tsv` (GRID_COLUMNS): per layer and
position of the grid, the input token, the real next token, the layer's top-1 and its text, the
rank and log-prob of the real next token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from laminae.errors import InputFileError
from laminae.store import read_tsv, write_tsv

TABLE_COLUMNS = ("metric", "statistic", "layer", "value", "ci_low", "ci_high", "n")
CORRELATION_COLUMNS = ("method", "tokens", "value", "ci_low", "ci_high", "n")
GRID_COLUMNS = ("layer", "position", "token", "next_token", "top1_id", "top1", "rank", "logprob")


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A TSV; NaN floats become empty cells."""
    clean = [{k: None if isinstance(v, (float, np.floating)) and math.isnan(v) else v for k, v in row.items()}
             for row in rows]
    write_tsv(path, clean, columns)


def cell(text: str) -> float:
    """A numeric cell; empty -> NaN."""
    return float(text) if text else math.nan


def _read(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "not found; run the logit_lens_analysis rule first")
    rows = read_tsv(path)
    if rows and any(c not in rows[0] for c in columns):
        raise InputFileError(path, f"lacks the columns {', '.join(columns)}; not written by laminae's logit_lens stage")
    return rows


@dataclass(frozen=True)
class LensTable:
    """`logit_lens.tsv` read back: {(metric, statistic): {column: (n_layers,) array}}, plus the
    per-token rows (layer -1)."""

    layers: Mapping[tuple[str, str], Mapping[str, np.ndarray]]
    tokens: Mapping[tuple[str, str], Mapping[str, float]]

    @classmethod
    def read(cls, path: Path) -> "LensTable":
        layers: dict[tuple[str, str], dict[int, dict[str, str]]] = {}
        tokens: dict[tuple[str, str], dict[str, float]] = {}
        for row in _read(path, TABLE_COLUMNS):
            key = (row["metric"], row["statistic"])
            if int(row["layer"]) < 0:
                tokens[key] = {c: cell(row[c]) for c in ("value", "ci_low", "ci_high", "n")}
            else:
                layers.setdefault(key, {})[int(row["layer"])] = row
        arrays = {key: {c: np.array([cell(by_layer[layer][c]) for layer in sorted(by_layer)])
                        for c in ("value", "ci_low", "ci_high", "n")} for key, by_layer in layers.items()}
        return cls(arrays, tokens)

    @property
    def n_layers(self) -> int:
        return len(next(iter(self.layers.values()))["value"]) if self.layers else 0

    def get(self, metric: str, statistic: str, column: str = "value") -> np.ndarray:
        """(n_layers,) of one column."""
        return self.layers[metric, statistic][column]

    def embed(self, metric: str, statistic: str, column: str = "value") -> float:
        """The per-token row (layer -1) of `metric` (dla_embed, dla_rest)."""
        return self.tokens[metric, statistic][column]


def read_correlations(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """`logit_lens_pathlength.tsv` -> {(method, tokens): {value, ci_low, ci_high, n}}."""
    return {(r["method"], r["tokens"]): {c: cell(r[c]) for c in ("value", "ci_low", "ci_high", "n")}
            for r in _read(path, CORRELATION_COLUMNS)}


def read_grid(path: Path) -> list[dict[str, Any]]:
    """`logit_lens_grid.tsv` -> rows with ints and floats parsed."""
    return [{**r, "layer": int(r["layer"]), "position": int(r["position"]), "top1_id": int(r["top1_id"]),
             "rank": int(r["rank"]), "logprob": float(r["logprob"])} for r in _read(path, GRID_COLUMNS)]
