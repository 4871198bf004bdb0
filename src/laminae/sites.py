"""The sites a capture can store per layer (what each means per family: docs/ARCHITECTURE.md).

    q, k, v      the query/key/value projections' outputs (before rotary embeddings and any q/k
                 norm), head-major; k and v narrower under grouped- or multi-query attention
    attn_out     what the attention sublayer adds to the residual stream
    mlp_out      what the MLP sublayer adds to the residual stream
    resid_pre    the residual stream entering the block
    resid_post   the residual stream leaving the block
    mlp_post     the MLP's hidden activations after its nonlinearity (gated MLPs: act(gate) * up),
                 d_mlp wide: the input of the MLP's down projection
    pattern      the attention probabilities after masking and softmax: per query token its row
                 over keys for every (query) head, n_heads * n_keys wide, head-major; n_keys the
                 longest input of the extraction, keys past the token's own sequence 0

Kept free of torch and numpy: the workflow checks experiment declarations against it while
Snakemake builds the DAG.
"""

SITES = ("q", "k", "v", "attn_out", "mlp_out", "resid_pre", "resid_post", "mlp_post", "pattern")
QKV = ("q", "k", "v")
