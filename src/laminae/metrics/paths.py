"""Per-token path lengths of one chunk of rows, in float64 whatever the storage dtype (the
`pathlength` experiment's definitions, shared with `logit_lens`).

    >>> paths = token_paths(attn_out, mlp_out, resid_pre, resid_post)   # each (n_layers, rows, width)
    >>> paths.pl_hs.shape, paths.cumulative.shape                       # (n_layers, rows) each
    ((6, 322), (6, 322))

Per layer l and token t (||.|| the L2 norm):

    pl_attn[l, t]      = ||attn_out[l, t]||
    pl_mlp[l, t]       = ||mlp_out[l, t]||
    pl_hs[l, t]        = ||resid_post[l, t] - resid_pre[l, t]||          the block's step
    cumulative[l, t]   = sum over k = 0..l of pl_hs[k, t]                  path length so far
    displacement[l, t] = ||resid_post[l, t] - resid_pre[0, t]||           straight line from the embedding
    straightness[l, t] = displacement[l, t] / cumulative[l, t]            NaN where cumulative is 0

Every block reads the previous block's output (resid_pre[l] = resid_post[l - 1]), so the
displacement is the norm of the sum of the steps and, by the triangle inequality,
0 <= straightness <= 1 (exactly 1 at layer 0). `chain_gap` measures that premise: per layer,
the largest ||resid_pre[l] - resid_post[l - 1]|| / ||resid_post[l - 1]|| over the chunk's
tokens (0 at layer 0); it is 0 for every supported family, whose blocks are hooked in sequence.

For pre-LayerNorm models (GPT-2, Llama) the step equals attn_out + mlp_out, so pl_hs is the
norm of their sum; for post-LayerNorm BERT it is not (the block ends in a LayerNorm), and
pl_hs is the norm of whatever the block changed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from laminae.metrics.vectors import row_norms


class TokenPaths(NamedTuple):
    """One chunk's per-token values, each (n_layers, rows) float64; `chain_gap` (n_layers,)."""

    pl_attn: np.ndarray
    pl_mlp: np.ndarray
    pl_hs: np.ndarray
    cumulative: np.ndarray
    displacement: np.ndarray
    chain_gap: np.ndarray

    @property
    def straightness(self) -> np.ndarray:
        """displacement / cumulative, (n_layers, rows); NaN where the path length is 0."""
        return straightness(self.displacement, self.cumulative)


def straightness(displacement: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """displacement / cumulative elementwise; NaN where cumulative is 0 or either is not finite."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(displacement, dtype=np.float64) / cumulative
    return np.where((cumulative > 0) & np.isfinite(ratio), ratio, np.nan)


def token_paths(attn_out: np.ndarray, mlp_out: np.ndarray, resid_pre: np.ndarray, resid_post: np.ndarray
                ) -> TokenPaths:
    """The per-token values of one chunk (module docstring); each site (n_layers, rows, width),
    any float dtype. Differences are taken in float64 one layer at a time, so the extra memory
    is two (rows, width) float64 arrays."""
    shape = np.shape(attn_out)
    if len(shape) != 3:
        raise ValueError(f"attn_out must be (n_layers, rows, width); got {shape}")
    for name, x in (("mlp_out", mlp_out), ("resid_pre", resid_pre), ("resid_post", resid_post)):
        if np.ndim(x) != 3 or np.shape(x)[:2] != shape[:2]:
            raise ValueError(f"{name} must be (n_layers={shape[0]}, rows={shape[1]}, width); got {np.shape(x)}")
    n_layers, rows = shape[:2]
    pl_hs = np.empty((n_layers, rows))
    displacement = np.empty((n_layers, rows))
    chain_gap = np.zeros(n_layers)
    for layer in range(n_layers):
        pl_hs[layer] = row_norms(np.subtract(resid_post[layer], resid_pre[layer], dtype=np.float64))
        displacement[layer] = row_norms(np.subtract(resid_post[layer], resid_pre[0], dtype=np.float64))
        if layer and rows:
            gap = row_norms(np.subtract(resid_pre[layer], resid_post[layer - 1], dtype=np.float64))
            scale = row_norms(resid_post[layer - 1])
            relative = np.divide(gap, scale, out=np.where(gap > 0, np.inf, 0.0), where=scale > 0)
            chain_gap[layer] = relative.max()        # NaN when an activation is not finite
    return TokenPaths(pl_attn=row_norms(attn_out), pl_mlp=row_norms(mlp_out), pl_hs=pl_hs,
                      cumulative=np.cumsum(pl_hs, axis=0), displacement=displacement, chain_gap=chain_gap)
