"""Row-wise vector arithmetic in float64 over activations of any float dtype.

    >>> norms = row_norms(attn_out)                  # (n_layers, rows, width) -> (n_layers, rows)
    >>> cos = cosine_rows(attn_out, mlp_out)         # (n_layers, rows), NaN where undefined
    >>> angle = angle_rows(resid_pre, resid_post)    # radians in [0, pi], NaN where undefined

float16/32 input is cast to float64 inside einsum's buffers, never copied whole: these are the
hot loops of the streaming analyses.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _floats(x: Any) -> np.ndarray:
    """An array of floats without copying float16/32/64 input (ints become float64)."""
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def row_dot(a: Any, b: Any) -> np.ndarray:
    """Row-wise dot product (..., width) -> (...), accumulated in float64. float16/32 input is
    cast to float64 inside einsum's buffers (exact), never copied whole: this is the hot loop."""
    return np.einsum("...i,...i->...", _floats(a), _floats(b), dtype=np.float64)


def row_norms(x: Any) -> np.ndarray:
    """L2 norm of every row: (..., width) -> (...), float64."""
    return np.sqrt(row_dot(x, x))


def cosine_rows(a: Any, b: Any, norm_a: np.ndarray | None = None, norm_b: np.ndarray | None = None) -> np.ndarray:
    """Row-wise cosine of a and b: (..., width) -> (...), float64, in [-1, 1]; NaN where either
    row is zero or not finite (such a cosine is undefined). Pass the norms if already computed."""
    norm_a = row_norms(a) if norm_a is None else norm_a
    norm_b = row_norms(b) if norm_b is None else norm_b
    denominator = norm_a * norm_b
    defined = (denominator > 0) & np.isfinite(denominator)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cosine = row_dot(a, b) / denominator
    return np.where(defined, np.clip(cosine, -1.0, 1.0), np.nan)


def angle_rows(a: Any, b: Any, norm_a: np.ndarray | None = None, norm_b: np.ndarray | None = None) -> np.ndarray:
    """Row-wise angle between a and b in radians, arccos of `cosine_rows` (in [0, pi]; NaN where
    either row is zero or not finite)."""
    return np.arccos(cosine_rows(a, b, norm_a, norm_b))
