"""The attention experiment's tables, written by `analysis.AttentionReducer` and read back by
the figures, the sweep comparison and the measures.

    >>> table = AttentionTable.read(metrics_dir / TABLE_FILENAME)
    >>> table.get("sink", "mean")                 # (n_layers,) mean over heads of the per-head means
    >>> table.get("sink", "mean", "low")          # its bootstrap CI's lower bound
    >>> heads = read_heads(metrics_dir / HEADS_FILENAME)
    >>> heads["sink"]["value"].shape              # (n_layers, n_heads)

`attention.tsv`, columns TABLE_COLUMNS: per layer, `metric` (a statistic of
laminae.metrics.attention.STATISTICS, or `first_token_norm_ratio`, `first_token_norm`,
`token_norm`) and `summary` (over heads: `mean`, `median` with a bootstrap CI in low/high,
`q25`, `q75`, `min`, `max`; for the norms: `median` over windows with the range over windows
in low/high); `interval` says what low/high are. `attention_heads.tsv`, columns HEADS_COLUMNS:
per statistic, layer and head, the mean over queries with its CI. Empty cells: undefined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from laminae.errors import InputFileError
from laminae.store import read_tsv

TABLE_FILENAME = "attention.tsv"
HEADS_FILENAME = "attention_heads.tsv"
TABLE_COLUMNS = ("layer", "metric", "summary", "value", "low", "high", "interval", "n")
HEADS_COLUMNS = ("layer", "head", "metric", "value", "ci_low", "ci_high", "n")
NORM_METRICS = ("first_token_norm_ratio", "first_token_norm", "token_norm")


def _float(text: str) -> float:
    return float(text) if text else math.nan


@dataclass(frozen=True)
class AttentionTable:
    """`attention.tsv` in memory: {(metric, summary): {column: (n_layers,) array}} and the
    interval description of each (metric, summary)."""

    n_layers: int
    columns: dict[tuple[str, str], dict[str, np.ndarray]]
    intervals: dict[tuple[str, str], str]

    @classmethod
    def read(cls, path: str | Path) -> "AttentionTable":
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "not found; run the attention_analysis rule first")
        rows = read_tsv(path)
        if not rows or tuple(rows[0]) != TABLE_COLUMNS:
            raise InputFileError(path, f"is not an attention table (expected columns {', '.join(TABLE_COLUMNS)})")
        try:
            n_layers = max(int(row["layer"]) for row in rows) + 1
            columns: dict[tuple[str, str], dict[str, np.ndarray]] = {}
            intervals: dict[tuple[str, str], str] = {}
            for row in rows:
                key = (row["metric"], row["summary"])
                entry = columns.setdefault(key, {name: np.full(n_layers, np.nan) for name in ("value", "low", "high", "n")})
                layer = int(row["layer"])
                for name in ("value", "low", "high", "n"):
                    entry[name][layer] = _float(row[name])
                if row["interval"]:
                    intervals[key] = row["interval"]
        except (ValueError, KeyError) as error:
            raise InputFileError(path, f"has a malformed row ({error})") from None
        return cls(n_layers, columns, intervals)

    def has(self, metric: str, summary: str) -> bool:
        return (metric, summary) in self.columns

    def get(self, metric: str, summary: str, column: str = "value") -> np.ndarray:
        """(n_layers,) float64: NaN where undefined."""
        return self.columns[metric, summary][column]

    def interval(self, metric: str, summary: str) -> str:
        return self.intervals.get((metric, summary), "")


def read_heads(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """`attention_heads.tsv` -> {metric: {"value", "ci_low", "ci_high", "n": (n_layers, n_heads)}}."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "not found; run the attention_analysis rule first")
    rows = read_tsv(path)
    if not rows or tuple(rows[0]) != HEADS_COLUMNS:
        raise InputFileError(path, f"is not an attention heads table (expected columns {', '.join(HEADS_COLUMNS)})")
    try:
        n_layers = max(int(row["layer"]) for row in rows) + 1
        n_heads = max(int(row["head"]) for row in rows) + 1
        out: dict[str, dict[str, np.ndarray]] = {}
        for row in rows:
            entry = out.setdefault(row["metric"], {name: np.full((n_layers, n_heads), np.nan)
                                                   for name in ("value", "ci_low", "ci_high", "n")})
            for name in ("value", "ci_low", "ci_high", "n"):
                entry[name][int(row["layer"]), int(row["head"])] = _float(row[name])
    except (ValueError, KeyError) as error:
        raise InputFileError(path, f"has a malformed row ({error})") from None
    return out
