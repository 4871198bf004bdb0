"""Experiment 2 (seed 003): attention vs MLP adjustments to the residual stream.

Per layer and token, the cosine between what the attention sublayer and the MLP add to the
residual stream, and the norms of both and of the residual stream around the block
(definitions: docs/EXPERIMENTS.md). The analysis streams (`analysis.AdjustmentReducer`), so it
may run during extraction (`adjustments.during_extraction=true`) and never store activations.
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Experiment, Figure, JobShape, Measure


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Analysis: two streamed chunks (256 MB) and the per-token cosines (layers x tokens,
    float64 + a bool mask), three copies at the end; runtime: every stored activation read once
    at 100 MB/s. Figures: every per-token cosine (the histogram), three copies."""
    kept_mb = shape.n_layers * shape.n_rows * 9 / 2**20
    if stage == "plot":
        return {"mem_mb": 1024 + 3 * kept_mb, "runtime": 5 + 3 * kept_mb / 100 / 60}
    return {"mem_mb": 1024 + 2 * 256 + 3 * kept_mb, "runtime": 5 + shape.stored_mb / 100 / 60}


#: What `measures.measure` returns (claims name these; docs/EXPERIMENTS.md, "Claims").
MEASURES = (
    Measure("cosine", "mean cos(attn_out, mlp_out) per layer, with mean +- 1.96 SEM",
            headline="cos(attn_out, mlp_out)"),
    Measure("cosine_median", "median cos(attn_out, mlp_out) per layer"),
    Measure("norm_attn_out", "mean |attn_out| per layer, with mean +- 1.96 SEM"),
    Measure("norm_mlp_out", "mean |mlp_out| per layer, with mean +- 1.96 SEM"),
    Measure("cosine_tokens", "every included token x layer cosine (the histogram), tokens as resampling units",
            kind="sample"),
)

EXPERIMENT = Experiment(
    name="adjustments",
    title="Experiment 2: adjustments",
    inputs="corpus",
    sites=("attn_out", "mlp_out", "resid_pre", "resid_post"),
    metrics=("adjustments.tsv", "adjustment_cosine.h5"),
    figures=(Figure("adjustments_laminar", caption="captions/laminar.rst", label="laminar profile"),
             Figure("adjustments_hist", caption="captions/hist.rst", label="histogram"),
             Figure("adjustments_norms", caption="captions/norms.rst", label="norms")),
    reducer=".analysis:AdjustmentReducer",
    plot=".figures:plot",
    compare=".compare:compare",
    compare_caption="captions/compare.rst",
    resources=resources,
    measure=".measures:measure",
    measures=MEASURES,
    schema="schema.yaml",
)
