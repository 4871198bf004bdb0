"""Tidy TSV tables of experiment 1: a header of column names, then one row per number.

Integer and text columns lead, float columns follow; floats are written as `repr` (an exact
round trip) and NaN as an empty cell.

    >>> text = format_table(("layer", "metric", "value"), [(0, "rsa", 0.5), (1, "rsa", math.nan)])
    >>> text
    'layer\\tmetric\\tvalue\\n0\\trsa\\t0.5\\n1\\trsa\\t\\n'
    >>> read_table(path, ("layer", "metric", "value"), n_int=1, n_text=1)
    [(0, 'rsa', 0.5), (1, 'rsa', nan)]
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], n_int: int = 1, n_text: int = 2) -> str:
    """The TSV text: `columns` as the header; per row, `n_int` integer fields, `n_text` text
    fields, then floats (`repr`, NaN empty)."""
    lines = ["\t".join(columns)]
    for row in rows:
        ints = [str(int(v)) for v in row[:n_int]]
        texts = [str(v) for v in row[n_int:n_int + n_text]]
        lines.append("\t".join(ints + texts + [format_float(v) for v in row[n_int + n_text:]]))
    return "\n".join(lines) + "\n"


def read_table(path: str | os.PathLike, columns: Sequence[str], n_int: int = 1, n_text: int = 2) -> list[tuple]:
    """Rows of a table written by `format_table`, as tuples (ints, texts, floats; empty -> NaN).

    Raises ValueError naming the file (and line) for a wrong header, a wrong field count or a
    field that is not a number."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    columns = tuple(columns)
    if not lines or tuple(lines[0].split("\t")) != columns:
        raise ValueError(f"{path}: header is not {columns}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise ValueError(f"{path}: line {number} has {len(fields)} fields, expected {len(columns)}")
        try:
            ints = [int(x) for x in fields[:n_int]]
            floats = [float(x) if x else math.nan for x in fields[n_int + n_text:]]
        except ValueError as error:
            raise ValueError(f"{path}: line {number}: {error}") from None
        rows.append((*ints, *fields[n_int:n_int + n_text], *floats))
    return rows


def format_float(value: float) -> str:
    """`repr` of the float, or "" for NaN."""
    value = float(value)
    return "" if math.isnan(value) else repr(value)
