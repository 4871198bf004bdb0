"""What the `rotations` analysis writes, and reading it back (for the figures and comparisons).

    >>> table = read_rotation_table(metrics / "rotations.tsv")     # {metric: AngleStats}
    >>> table["block_rotation"].mean.shape                          # (n_layers,), radians
    (6,)
    >>> with open_angles(metrics / "rotation_angles.h5") as angles:
    ...     angles["sequential"][3]                                 # layer 3: (n_tokens,) radians
    ...     angles["first_pair"][()]                                # (n_tokens,) bool

`rotations.tsv`, columns TABLE_COLUMNS, one row per metric and layer (metrics in METRICS order,
then layers); angles in radians; an empty cell means undefined (n = 0, or n < 2 for sd/sem):

    value        mean angle over the tokens (or pairs) with a defined angle
    sem, sd      SD with ddof = 1, SEM = SD / sqrt(n)
    median       median of the same values
    n            number of defined values
    n_undefined  tokens (or pairs) whose angle is undefined: a zero or non-finite vector

`rotation_angles.h5`: `block_rotation`, `attn_angle`, `mlp_angle`, `sequential` (each
(n_layers, n_tokens) float64 radians, NaN where undefined; `sequential[:, t]` is the angle of
the pair (t, t + 1), NaN where token t has no next token in its window), `has_next` and
`first_pair` (n_tokens,) bool (which t start a pair; which of those are first-token pairs),
`window`, `position`, `token_id` (n_tokens,), group `n_undefined` with one (n_layers,) int64 per
metric; attributes: provenance, `unit` = "radians", definitions, `n_windows`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from laminae.errors import InputFileError
from laminae.store import read_tsv, write_tsv

TABLE_FILENAME = "rotations.tsv"
ANGLES_FILENAME = "rotation_angles.h5"
TABLE_COLUMNS = ("layer", "metric", "value", "sem", "sd", "median", "n", "n_undefined")
SEQUENTIAL_FIRST, SEQUENTIAL_REST = "sequential_first", "sequential_rest"
#: The table's metrics, in order: the three block angles, then the two kinds of sequential pairs.
METRICS = ("block_rotation", "attn_angle", "mlp_angle", SEQUENTIAL_FIRST, SEQUENTIAL_REST)
ANGLE_DATASETS = ("block_rotation", "attn_angle", "mlp_angle", "sequential")
INDEX_COLUMNS = ("window", "position", "token_id")   # rows.tsv columns copied into the .h5
DEFINITIONS = {
    "block_rotation": "arccos cos(resid_pre[l, t], resid_post[l, t])",
    "attn_angle": "arccos cos(attn_out[l, t], resid_pre[l, t])",
    "mlp_angle": "arccos cos(mlp_out[l, t], resid_pre[l, t])",
    "sequential": "arccos cos(resid_post[l, t], resid_post[l, t + 1]) for t, t + 1 consecutive in one window, "
                  "stored at t; NaN where t has no next token",
    "undefined": "cosines in float64, clipped to [-1, 1]; NaN (undefined, excluded from statistics, counted in "
                 "n_undefined) when either vector is zero or not finite",
}


@dataclass(frozen=True)
class AngleStats:
    """Per-layer summary of one angle; each field (n_layers,). Radians."""

    mean: np.ndarray
    sd: np.ndarray
    sem: np.ndarray
    median: np.ndarray
    n: np.ndarray             # int64: defined values
    n_undefined: np.ndarray   # int64: undefined values left out


# ----------------------------------------------------------------------------------- table
def write_rotation_table(path: Path, stats: Mapping[str, AngleStats]) -> None:
    """`rotations.tsv` from {metric: AngleStats} (metrics in METRICS order)."""
    rows = []
    for metric in METRICS:
        s = stats[metric]
        for layer in range(s.n.size):
            rows.append({"layer": layer, "metric": metric, "value": _cell(s.mean[layer]), "sem": _cell(s.sem[layer]),
                         "sd": _cell(s.sd[layer]), "median": _cell(s.median[layer]), "n": int(s.n[layer]),
                         "n_undefined": int(s.n_undefined[layer])})
    write_tsv(path, rows, TABLE_COLUMNS)


def _cell(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def read_rotation_table(path: str | Path) -> dict[str, AngleStats]:
    """`rotations.tsv` back as {metric: AngleStats}, layers 0..n-1 (NaN for empty cells)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "not found; run the rotations_analysis rule first")
    rows = read_tsv(path)
    if not rows or tuple(rows[0]) != TABLE_COLUMNS:
        raise InputFileError(path, f"is not a rotations table (expected columns {', '.join(TABLE_COLUMNS)})")
    try:
        n_layers = max(int(row["layer"]) for row in rows) + 1
        columns: dict[str, dict[str, np.ndarray]] = {}
        for row in rows:
            metric = columns.setdefault(row["metric"], {
                **{field: np.full(n_layers, np.nan) for field in ("mean", "sd", "sem", "median")},
                "n": np.zeros(n_layers, dtype=np.int64), "n_undefined": np.zeros(n_layers, dtype=np.int64)})
            layer = int(row["layer"])
            for field, column in (("mean", "value"), ("sd", "sd"), ("sem", "sem"), ("median", "median")):
                metric[field][layer] = float(row[column]) if row[column] else math.nan
            metric["n"][layer] = int(row["n"])
            metric["n_undefined"][layer] = int(row["n_undefined"])
    except (ValueError, TypeError) as error:
        raise InputFileError(path, f"has a malformed row ({error})") from None
    missing = [metric for metric in METRICS if metric not in columns]
    if missing:
        raise InputFileError(path, f"has no {missing[0]!r} rows; rerun rotations_analysis")
    return {metric: AngleStats(**columns[metric]) for metric in METRICS}


# --------------------------------------------------------------------------- per-token angles
@contextmanager
def open_angles(path: str | Path) -> Iterator[h5py.File]:
    """`rotation_angles.h5` open for reading, checked to hold every dataset (read layers with
    `handle[name][layer]`, so memory stays flat)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "not found; run the rotations_analysis rule first")
    try:
        handle = h5py.File(path, "r")
    except OSError:
        raise InputFileError(path, "is not a readable HDF5 file (truncated or corrupt); "
                                   "rerun rotations_analysis") from None
    with handle:
        for name in (*ANGLE_DATASETS, "has_next", "first_pair", *INDEX_COLUMNS, "n_undefined"):
            if name not in handle:
                raise InputFileError(path, f"has no {name!r} dataset; not written by laminae's rotations stage")
        yield handle


def read_attrs(handle: h5py.File) -> dict[str, Any]:
    """The file's attributes, bytes decoded."""
    return {key: value.decode() if isinstance(value, bytes) else value for key, value in handle.attrs.items()}
