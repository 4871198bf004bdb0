"""State-space trajectories (the course module of the path-length challenge, completed): every
token's path through the layers, from its embedding through each block's output, in one shared
low-dimensional space (a PCA fit on every token x depth of the run, its covariance accumulated
chunk by chunk); its step lengths in the full space and in the PCA space, and its curvature
(the angle between consecutive steps) per layer. Definitions: `laminae.metrics.trajectories`,
`analysis` and docs/EXPERIMENTS.md.

It reads `resid_pre` (layer 0's, the embedding) and `resid_post` of the corpus, which the
`adjustments` and `pathlength` experiments store too, so the three share one extraction. The
analysis makes two streamed passes over the store (fit, then project), so it cannot run during
extraction: the PCA basis is known only after the last token.
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Experiment, Figure, JobShape, Measure

#: seconds per stored value read, per pass (two passes), on a busy core: generous
READ_S_PER_MB = 1 / 100
PER_TOKEN_BYTES = 6 * 8         # one layer of the four per-token arrays at the table's quantiles


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Analysis: two chunks of the store in float64 (256 MB each) with their float64 points and
    steps, the (d, d) covariance, and one layer of per-token values at the end; runtime: the
    store read twice at 100 MB/s plus the (d, d) outer products (tokens x depths x d^2 flops at
    1 GFLOP/s). Figures read the table and the selection only."""
    if stage == "plot":
        return {"mem_mb": 1024, "runtime": 5}
    covariance_mb = 3 * shape.d_model ** 2 * 8 / 2**20
    outer_s = shape.n_rows * (shape.n_layers + 1) * shape.d_model ** 2 / 1e9
    return {"mem_mb": 1024 + 4 * 256 + covariance_mb + shape.n_rows * PER_TOKEN_BYTES / 2**20,
            "runtime": 5 + 2 * shape.stored_mb * READ_S_PER_MB / 60 + outer_s / 60}


MEASURES = (
    Measure("step_full", "mean over tokens of block l's step length ||x_(l+1) - x_l||, with mean +- 1.96 SEM",
            headline="trajectory step length"),
    Measure("step_pca", "the same step in the space of the first n_components PCs, mean +- 1.96 SEM"),
    Measure("turn_full", "mean turning angle (degrees) between the steps of blocks l-1 and l, mean +- 1.96 SEM",
            headline="trajectory turning angle"),
    Measure("turn_pca", "the same angle in the PCA space, mean +- 1.96 SEM"),
    Measure("length_full", "mean path length up to block l (sum of its steps; last layer: the whole trajectory), "
                           "mean +- 1.96 SEM", headline="trajectory length"),
    Measure("length_pca", "the same path length in the PCA space, mean +- 1.96 SEM"),
)

EXPERIMENT = Experiment(
    name="trajectories",
    title="Trajectories through embedding space",
    inputs="corpus",
    sites=("resid_pre", "resid_post"),
    metrics=("trajectories.tsv", "trajectories_pca.tsv", "trajectories_tokens.h5"),
    figures=(Figure("trajectories_pca", caption="captions/pca.rst", label="trajectories in the first two PCs"),
             Figure("trajectories_steps", caption="captions/steps.rst", label="step lengths and turning angles")),
    analyse=".analysis:analyse",
    plot=".figures:plot",
    compare=".compare:compare",
    compare_caption="captions/compare.rst",
    resources=resources,
    measure=".measures:measure",
    measures=MEASURES,
    schema="schema.yaml",
)
