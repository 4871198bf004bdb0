"""Per-token path lengths of one chunk of rows: the definitions live in `laminae.metrics.paths`
(shared with the `logit_lens` experiment); this module re-exports them and names the per-token
arrays `pathlength_tokens.h5` stores.

    >>> paths = token_paths(attn_out, mlp_out, resid_pre, resid_post)   # each (n_layers, rows, width)
    >>> paths.pl_hs.shape, paths.cumulative.shape                       # (n_layers, rows) each
    ((6, 322), (6, 322))
"""

from __future__ import annotations

from laminae.metrics.paths import TokenPaths, straightness, token_paths

__all__ = ["TOKEN_ARRAYS", "TokenPaths", "straightness", "token_paths"]

#: The per-token arrays stored in pathlength_tokens.h5, each (n_layers, n_tokens) float64.
TOKEN_ARRAYS = ("pl_attn", "pl_mlp", "pl_hs", "cumulative", "displacement")
