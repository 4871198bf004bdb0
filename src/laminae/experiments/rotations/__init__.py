"""Rotations of the residual stream: how far each block turns a token's vector, in which
direction its attention and MLP adjustments point, and the angle between consecutive tokens.

Per layer and token, in radians: the block rotation angle(resid_pre, resid_post); the angles of
attn_out and of mlp_out to resid_pre; and the sequential angle(resid_post[t], resid_post[t+1])
within each window, with the pairs that start at a window's first token reported apart
(definitions: docs/EXPERIMENTS.md and `outputs`). The analysis streams (`analysis.RotationReducer`),
so it may run during extraction (`rotations.during_extraction=true`). It reads the same sites as
`adjustments`, so the two share one extraction.
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Experiment, Figure, JobShape, Measure

ANGLE_ARRAYS = 4            # per-token angle arrays in rotation_angles.h5 (float64 each)


def validate(cfg: dict[str, Any]) -> None:
    """The depth bands split the model's layers (at most one band per layer: a model with fewer
    layers than `depth_bands` gets one per layer), when the config declares the model's depth."""
    from laminae.experiments.rotations.bands import band_count, depth_bands

    n_layers = cfg["model"]["n_layers"]
    if n_layers is not None:
        depth_bands(n_layers, band_count(n_layers, cfg["rotations"]["plot"]["depth_bands"]))


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Analysis: two streamed chunks (256 MB) plus one chunk's angles, and one layer of angles at
    a time for the medians; runtime: every stored activation read once at 100 MB/s and the angles
    written and read back twice. Figures: one layer of angles at a time (histograms per band)."""
    layer_mb = shape.n_rows * 8 * 3 / 2**20                      # one layer of angles, mask, copy
    angles_mb = ANGLE_ARRAYS * shape.n_layers * shape.n_rows * 8 / 2**20
    if stage == "plot":
        return {"mem_mb": 1024 + 4 * layer_mb, "runtime": 5 + angles_mb / 100 / 60}
    return {"mem_mb": 1024 + 2 * 256 + 4 * layer_mb, "runtime": 5 + (shape.stored_mb + 3 * angles_mb) / 100 / 60}


#: What `measures.measure` returns (claims name these; docs/EXPERIMENTS.md, "Claims").
MEASURES = (
    *(Measure(metric, f"mean {metric.replace('_', ' ')} angle per layer (radians), with mean +- 1.96 SEM",
              headline={"block_rotation": "block rotation (rad)", "sequential_rest": "sequential angle (rad)"}.get(metric, ""))
      for metric in ("block_rotation", "attn_angle", "mlp_angle", "sequential_first", "sequential_rest")),
    Measure("sequential_angles", "every sequential angle per pair and layer (the histograms), first-token pairs as "
                                 "a group, pairs as resampling units", kind="sample"),
)

EXPERIMENT = Experiment(
    name="rotations",
    title="Rotations of the residual stream",
    inputs="corpus",
    sites=("attn_out", "mlp_out", "resid_pre", "resid_post"),
    metrics=("rotations.tsv", "rotation_angles.h5"),
    figures=(Figure("rotations_laminar", caption="captions/laminar.rst", label="laminar profile"),
             Figure("rotations_hist", caption="captions/hist.rst", label="sequential angles by depth")),
    reducer=".analysis:RotationReducer",
    plot=".figures:plot",
    compare=".compare:compare",
    compare_caption="captions/compare.rst",
    validate=validate,
    resources=resources,
    measure=".measures:measure",
    measures=MEASURES,
    schema="schema.yaml",
)
