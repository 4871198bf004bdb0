"""The tables of experiment `probes` (and `pos_probes`): written and read back.

`probes_laminar.tsv`, one row per (site, score, layer):

    layer  site  score  value  ci_low  ci_high  chance  null_mean  null_low  null_high  p_value  q_value

value: the mean over folds of the score (`accuracy` or `balanced_accuracy`); ci_low/ci_high:
the t interval over folds (clipped to [0, 1]); chance: the majority-class baseline on the same folds; null_*: the
mean and central band of the permutation null (mean score over folds under permuted labels);
p_value: one-sided permutation p; q_value: Benjamini-Hochberg over the layers (one family per
site and score). `probes_folds.tsv`, one row per (site, score, layer, fold): the fold's score.

    >>> table = LaminarTable.read(metrics_dir / TABLE_FILENAME)
    >>> table.get("resid_post", "accuracy", "value")    # (n_layers,)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from laminae.errors import InputFileError
from laminae.store import read_tsv, write_tsv

TABLE_FILENAME = "probes_laminar.tsv"
FOLDS_FILENAME = "probes_folds.tsv"
TABLE_COLUMNS = ("layer", "site", "score", "value", "ci_low", "ci_high", "chance", "null_mean", "null_low",
                 "null_high", "p_value", "q_value")
NUMBER_COLUMNS = TABLE_COLUMNS[3:]
FOLDS_COLUMNS = ("layer", "site", "score", "fold", "n_test", "value")


def write_rows(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    """A table with floats as repr (round-trip exact) and NaN as an empty cell."""
    def cell(value):
        if isinstance(value, float):
            return "" if math.isnan(value) else repr(value)
        return value
    write_tsv(path, ({key: cell(value) for key, value in row.items()} for row in rows), columns)


@dataclass(frozen=True)
class LaminarTable:
    """`probes_laminar.tsv` as arrays: `get(site, score, column)` -> (n_layers,)."""

    n_layers: int
    columns: dict[tuple[str, str], dict[str, np.ndarray]]   # (site, score) -> column -> (n_layers,)

    @classmethod
    def read(cls, path: str | Path) -> "LaminarTable":
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "not found; run the probes analysis first")
        rows = read_tsv(path)
        if not rows or set(TABLE_COLUMNS) - set(rows[0]):
            raise InputFileError(path, f"is not a probes table (columns {', '.join(TABLE_COLUMNS)})")
        n_layers = max(int(row["layer"]) for row in rows) + 1
        columns: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        for row in rows:
            entry = columns.setdefault((row["site"], row["score"]),
                                       {name: np.full(n_layers, np.nan) for name in NUMBER_COLUMNS})
            for name in NUMBER_COLUMNS:
                entry[name][int(row["layer"])] = float(row[name]) if row[name] != "" else np.nan
        return cls(n_layers=n_layers, columns=columns)

    @property
    def sites(self) -> list[str]:
        return list(dict.fromkeys(site for site, _ in self.columns))

    def has(self, site: str, score: str) -> bool:
        return (site, score) in self.columns

    def get(self, site: str, score: str, column: str = "value") -> np.ndarray:
        return self.columns[(site, score)][column]
