"""Experiment 3 (course: residual stream path length decomposition, part 2): how far each block
moves the residual stream, and how the attention and MLP adjustments relate to that step.

Per layer and token: PL_attn = ||attn_out||, PL_mlp = ||mlp_out||, PL_hs = ||resid_post -
resid_pre||; per layer over tokens, Pearson and Spearman correlation of PL_attn and PL_mlp with
PL_hs (all tokens, and without the first token of every window) with bootstrap CIs; and the
cumulative path length against the straight-line displacement from the embedding
(definitions: docs/EXPERIMENTS.md, `tokens.py`). It reads the same sites as `adjustments`, so
the two share one extraction; the analysis streams (`analysis.PathLengthReducer`), so it may
run during extraction (`pathlength.during_extraction=true`).
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Experiment, Figure, JobShape, Measure

# Cost of the bootstrap (laminae.metrics.correlation, Pearson and Spearman of two pairs of three
# variables), seconds per token and resample on one core: measured 0.2e-6 at 1e5 tokens and
# 0.7e-6 at 1e6 (cache misses); generous for a busy node.
BOOTSTRAP_S_PER_TOKEN_RESAMPLE = 1e-6
BYTES_PER_TOKEN_FINISH = 200        # one layer's values, sort orders and alignment maps at finish
BLOCKS_MB = 6 * 16                  # live bootstrap blocks (BLOCK_ELEMENTS float64 each)


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Analysis: two streamed chunks (256 MB each, with their per-layer float64 differences),
    then at `finish` one layer of per-token values and the bootstrap blocks; runtime: every
    stored activation read once at 100 MB/s plus the bootstrap (2 token sets x layers x
    n_bootstrap x tokens). Figures read only the table."""
    if stage == "plot":
        return {"mem_mb": 1024, "runtime": 5}
    finish_mb = shape.n_rows * BYTES_PER_TOKEN_FINISH / 2**20 + BLOCKS_MB
    bootstrap_s = 2 * shape.n_layers * cfg["pathlength"]["n_bootstrap"] * shape.n_rows * BOOTSTRAP_S_PER_TOKEN_RESAMPLE
    return {"mem_mb": 1024 + max(2 * 256, finish_mb), "runtime": 5 + shape.stored_mb / 100 / 60 + bootstrap_s / 60}


#: The measures a sweep across training checkpoints draws.
HEADLINES = {"pearson_attn_hs:all": "Pearson PL_attn-PL_hs", "pearson_attn_hs:without_first": "Pearson PL_attn-PL_hs, first token left out",
             "pearson_mlp_hs:all": "Pearson PL_mlp-PL_hs"}
#: What `measures.measure` returns, `<metric>:<tokens>` (claims name these; docs/EXPERIMENTS.md, "Claims").
MEASURES = tuple(
    Measure(f"{metric}:{tokens}", f"{what} per layer over {'all tokens' if tokens == 'all' else 'tokens but the first'}"
                                  f", with {interval}", headline=HEADLINES.get(f"{metric}:{tokens}", ""))
    for tokens in ("all", "without_first")
    for metrics, what, interval in (
        (("pearson_attn_hs", "spearman_attn_hs", "pearson_mlp_hs", "spearman_mlp_hs"), "correlation",
         "its bootstrap CI"),
        (("pl_attn", "pl_mlp", "pl_hs", "cumulative", "displacement", "straightness"), "mean", "mean +- 1.96 SEM"))
    for metric in metrics)

EXPERIMENT = Experiment(
    name="pathlength",
    title="Experiment 3: path length",
    inputs="corpus",
    sites=("attn_out", "mlp_out", "resid_pre", "resid_post"),
    metrics=("pathlength.tsv", "pathlength_tokens.h5"),
    figures=(Figure("pathlength_correlations", caption="captions/correlations.rst", label="correlations"),
             Figure("pathlength_cumulative", caption="captions/cumulative.rst", label="cumulative path length")),
    reducer=".analysis:PathLengthReducer",
    plot=".figures:plot",
    compare=".compare:compare",
    compare_caption="captions/compare.rst",
    resources=resources,
    measure=".measures:measure",
    measures=MEASURES,
    schema="schema.yaml",
)
