"""Reading experiment `neurons`' metrics back (figures, measures, compare).

    >>> table = LaminarTable.read(metrics_dir / "neurons_laminar.tsv")
    >>> table.sites, table.categories, table.n_layers      # ("mlp_post", "q", ...), ("fruit", ...), 30
    >>> table.get("mlp_post", "all", "fraction")           # (n_layers,) float64, NaN where empty
    >>> top = read_top_words(metrics_dir / "neurons_top_words.tsv")   # rows as dicts
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from laminae.store import read_tsv

NUMERIC = ("n_units", "n_selective", "fraction", "ci_low", "ci_high", "n_uncorrected", "n_constant", "min_detectable",
           "null_mean", "null_high")


@dataclass(frozen=True)
class LaminarTable:
    """neurons_laminar.tsv as arrays: columns[(site, category)][name] is (n_layers,)."""

    columns: dict[tuple[str, str], dict[str, np.ndarray]]
    sites: tuple[str, ...]
    categories: tuple[str, ...]      # without "all"
    n_layers: int

    @classmethod
    def read(cls, path: Path) -> "LaminarTable":
        rows = read_tsv(path)
        n_layers = 1 + max(int(r["layer"]) for r in rows)
        sites = tuple(dict.fromkeys(r["site"] for r in rows))
        categories = tuple(dict.fromkeys(r["category"] for r in rows if r["category"] != "all"))
        columns: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        for row in rows:
            entry = columns.setdefault((row["site"], row["category"]),
                                       {name: np.full(n_layers, np.nan) for name in NUMERIC})
            for name in NUMERIC:
                entry[name][int(row["layer"])] = float(row[name]) if row[name] != "" else np.nan
        return cls(columns, sites, categories, n_layers)

    def get(self, site: str, category: str, column: str = "fraction") -> np.ndarray:
        """One column across layers: (n_layers,)."""
        return self.columns[(site, category)][column]

    def has(self, site: str, category: str = "all") -> bool:
        return (site, category) in self.columns


def read_top_words(path: Path) -> list[dict[str, str]]:
    """neurons_top_words.tsv: one row per (top unit, word)."""
    return read_tsv(path)
