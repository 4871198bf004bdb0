"""The angles of the `rotations` experiment for one chunk of rows, in radians, float64.

    >>> has_next, first_pair = consecutive_pairs(window, position)   # (n_tokens,) bool each
    >>> angles = block_angles({"attn_out": attn, "mlp_out": mlp, "resid_pre": pre, "resid_post": post})
    >>> angles["block_rotation"].shape                                 # (n_layers, rows)
    (6, 8192)
    >>> seq = sequential_angles(resid_post, row_norms(resid_post))     # (n_layers, rows - 1)

Every angle is `arccos` of a cosine computed in float64 (`laminae.metrics.vectors.angle_rows`),
in [0, pi]; it is NaN (undefined) when either vector is zero or not finite.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from laminae.metrics.vectors import angle_rows, row_norms

#: Per-token angles of one block: name -> (first vector, second vector) as sites.
BLOCK_ANGLES = {
    "block_rotation": ("resid_pre", "resid_post"),   # how far the block turns the residual stream
    "attn_angle": ("attn_out", "resid_pre"),         # direction of the attention adjustment vs its input
    "mlp_angle": ("mlp_out", "resid_pre"),           # direction of the MLP adjustment vs the block input
}


def consecutive_pairs(window: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows start a pair of consecutive tokens, from rows.tsv's `window` and `position`
    (each (n_tokens,), rows in corpus order).

    `has_next[t]`: row t + 1 is the next token of the same window (same window, position + 1);
    `first_pair[t]`: `has_next[t]` and row t is its window's first token (position 0), so there
    is exactly one first-token pair per window of two or more tokens.

        >>> consecutive_pairs(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 0, 1]))
        (array([ True,  True, False,  True, False]), array([ True, False, False,  True, False]))
    """
    window, position = np.asarray(window), np.asarray(position)
    if window.shape != position.shape or window.ndim != 1:
        raise ValueError(f"window and position must be (n_tokens,) each; got {window.shape} and {position.shape}")
    has_next = np.zeros(window.shape, dtype=bool)
    has_next[:-1] = (window[1:] == window[:-1]) & (position[1:] == position[:-1] + 1)
    return has_next, has_next & (position == 0)


def block_angles(sites: Mapping[str, np.ndarray], norms: Mapping[str, np.ndarray] | None = None
                 ) -> dict[str, np.ndarray]:
    """The BLOCK_ANGLES of every row: `sites` maps attn_out, mlp_out, resid_pre and resid_post
    to (n_layers, rows, width) arrays of any float dtype; `norms` (optional) their row norms,
    (n_layers, rows) each. Returns {name: (n_layers, rows) float64 radians, NaN where undefined}."""
    norms = {site: row_norms(x) for site, x in sites.items()} if norms is None else norms
    return {name: angle_rows(sites[a], sites[b], norms[a], norms[b]) for name, (a, b) in BLOCK_ANGLES.items()}


def sequential_angles(resid_post: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Angle between each row and the next one of the same chunk, whatever their windows (the
    caller masks pairs that cross windows): (n_layers, rows, width), norms (n_layers, rows) ->
    (n_layers, rows - 1), column t = angle(row t, row t + 1)."""
    return angle_rows(resid_post[:, :-1], resid_post[:, 1:], norms[:, :-1], norms[:, 1:])
