"""The tidy table `pathlength.tsv`: one row per number, and its reader.

    >>> table = PathLengthTable.read(metrics_dir / TABLE_FILENAME)
    >>> table.get("pearson_attn_hs", "without_first")            # (n_layers,) values
    >>> table.get("pearson_attn_hs", "all", "ci_low")            # (n_layers,) lower CI bounds
    >>> table.get("cumulative", "all", "sem"), table.get("pl_hs", "all", "n")

Columns `TABLE_COLUMNS`; rows per metric, then token set, then layer. An empty cell means not
applicable (or undefined: too few tokens, a constant vector, no bootstrap):

    metric                                  value            ci_low, ci_high     sem    n
    pearson_attn_hs, spearman_attn_hs       r(PL_attn, PL_hs)  bootstrap CI        -      tokens
    pearson_mlp_hs, spearman_mlp_hs         r(PL_mlp, PL_hs)   bootstrap CI        -      tokens
    pl_attn, pl_mlp, pl_hs                  mean over tokens   -                   SEM    tokens
    cumulative, displacement, straightness  mean over tokens   -                   SEM    tokens

`tokens` is `all` or `without_first` (every row at position 0 of its window left out).
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

TABLE_FILENAME = "pathlength.tsv"
TABLE_COLUMNS = ("layer", "metric", "tokens", "value", "ci_low", "ci_high", "sem", "n")
TOKEN_SETS = ("all", "without_first")
#: correlation metric -> (method, the sublayer correlated with PL_hs)
CORRELATIONS = {"pearson_attn_hs": ("pearson", "attn"), "spearman_attn_hs": ("spearman", "attn"),
                "pearson_mlp_hs": ("pearson", "mlp"), "spearman_mlp_hs": ("spearman", "mlp")}
#: per-token quantities summarised by mean and SEM over tokens
MEANS = ("pl_attn", "pl_mlp", "pl_hs", "cumulative", "displacement", "straightness")
VALUE_COLUMNS = ("value", "ci_low", "ci_high", "sem")


def table_row(layer: int, metric: str, tokens: str, value: float, n: int, *, ci_low: float = math.nan,
              ci_high: float = math.nan, sem: float = math.nan) -> dict[str, Any]:
    """One row; NaN becomes an empty cell."""
    cells = {"value": value, "ci_low": ci_low, "ci_high": ci_high, "sem": sem}
    return {"layer": int(layer), "metric": metric, "tokens": tokens, "n": int(n),
            **{key: None if math.isnan(v) else float(v) for key, v in cells.items()}}


def write_table(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows sorted by metric (CORRELATIONS then MEANS order), token set, layer."""
    rank = {name: i for i, name in enumerate((*CORRELATIONS, *MEANS))}
    ordered = sorted(rows, key=lambda r: (rank[r["metric"]], TOKEN_SETS.index(r["tokens"]), r["layer"]))
    write_tsv(path, ordered, TABLE_COLUMNS)


@dataclass(frozen=True)
class PathLengthTable:
    """`pathlength.tsv` as arrays: `get(metric, tokens, column)` -> (n_layers,) float (NaN for
    empty cells; `n` as int64)."""

    n_layers: int
    columns: dict[tuple[str, str], dict[str, np.ndarray]]   # (metric, tokens) -> column -> (n_layers,)

    @classmethod
    def read(cls, path: str | Path) -> "PathLengthTable":
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "not found; run the pathlength_analysis rule first")
        rows = read_tsv(path)
        if not rows or tuple(rows[0]) != TABLE_COLUMNS:
            raise InputFileError(path, f"is not a pathlength table (expected columns {', '.join(TABLE_COLUMNS)})")
        try:
            n_layers = max(int(row["layer"]) for row in rows) + 1
            columns: dict[tuple[str, str], dict[str, np.ndarray]] = {}
            for row in rows:
                entry = columns.setdefault((row["metric"], row["tokens"]), {
                    **{name: np.full(n_layers, np.nan) for name in VALUE_COLUMNS},
                    "n": np.zeros(n_layers, dtype=np.int64)})
                layer = int(row["layer"])
                for name in VALUE_COLUMNS:
                    entry[name][layer] = float(row[name]) if row[name] else math.nan
                entry["n"][layer] = int(row["n"])
        except ValueError as error:
            raise InputFileError(path, f"has a malformed row ({error})") from None
        return cls(n_layers=n_layers, columns=columns)

    def has(self, metric: str, tokens: str) -> bool:
        return (metric, tokens) in self.columns

    def get(self, metric: str, tokens: str, column: str = "value") -> np.ndarray:
        if (metric, tokens) not in self.columns:
            raise KeyError(f"pathlength table has no rows for metric {metric!r}, tokens {tokens!r}")
        return self.columns[metric, tokens][column]
