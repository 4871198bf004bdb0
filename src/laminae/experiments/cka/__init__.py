"""Centered kernel alignment (CKA) between layers: within a run, every layer of one site against
every layer (rows: the stimuli's words), with a bootstrap over words and a permutation null; and
between the runs of a sweep (models, training checkpoints), every layer of run A against every
layer of run B over the same words (`across`). Definitions: docs/EXPERIMENTS.md; the metric:
laminae.metrics.cka. `analysis` computes, `figures` draws, `compare` overlays a sweep's
adjacent-layer CKA, `measures` reads the series back for claims, `across` and `across_figures`
compare runs.
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Across, Experiment, Figure, JobShape, Measure

#: The stored sites `cka.site` may name (only the one named is stored for it).
SITES = ("resid_post", "resid_pre", "attn_out", "mlp_out", "q", "k", "v")
CPU_FLOP_PER_S = 1e9   # pessimistic NumPy throughput on one busy core
CHUNK_ROWS = 4096      # a generous streamed chunk, for the memory estimate
MEASURES = (
    Measure("cka_adjacent", "CKA between layer l and l + 1 (NaN at the last layer), bootstrap CI, permutation p/q",
            headline="CKA(l, l+1)"),
    Measure("cka_to_last", "CKA between layer l and the last layer, bootstrap CI"),
    Measure("cka_to_first", "CKA between layer l and layer 0, bootstrap CI"),
)


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Memory: the rows resampled in float64, their Gram matrices (layers x rows^2) and centred
    copies in each bootstrap/permutation replicate (3 more), the replicates (layers^2 x draws);
    above `gram_rows` rows, the feature-space sums (L(L+1)/2 width^2) and a chunk's rows. Runtime:
    per replicate the Gram submatrices and the layers^2 x rows^2 inner products; every row's
    cross products (L^2 width^2 per row / 2)."""
    group = cfg["cka"]
    layers, width = shape.n_layers, shape.d_model
    words = min(shape.n_rows, group["gram_rows"])
    draws = group["n_bootstrap"] + group["n_permutations"]
    if stage == "plot":
        return {"mem_mb": 1024 + 4 * layers * layers * 8 / 2**20, "runtime": 3}
    floats = layers * words * width + 5 * layers * words * words + 2 * layers * layers * draws
    flop = draws * (layers * layers * words * words * 2 + 10 * layers * words * words) + layers * words**2 * width
    if shape.n_rows > group["gram_rows"]:
        floats += layers * (layers + 1) / 2 * width**2 + layers * layers * width + 2 * layers * CHUNK_ROWS * width
        flop += shape.n_rows * layers * (layers + 1) * width**2
    return {"mem_mb": 1024 + floats * 8 / 2**20, "runtime": 3 + flop / CPU_FLOP_PER_S / 60}


EXPERIMENT = Experiment(
    name="cka",
    title="CKA between layers",
    inputs=("stimuli", "corpus"),
    sites=SITES,
    site_key="site",
    metrics=("cka_layers.tsv",),
    figures=(Figure("cka_layers", caption="captions/layers.rst", label="layer x layer"),),
    reducer=".analysis:CkaReducer",
    plot=".figures:plot",
    compare=".compare:compare",
    compare_caption="captions/compare.rst",
    resources=resources,
    measure=".measures:measure",
    measures=MEASURES,
    across=Across(analyse=".across:analyse", plot=".across_figures:plot",
                  metrics=("cka_across.tsv", "cka_across_runs.tsv"),
                  figures=(Figure("cka_across", caption="captions/across.rst", label="between runs: A x B"),
                           Figure("cka_best_match", caption="captions/best_match.rst", label="between runs: best match"),
                           Figure("cka_reference", caption="captions/reference.rst",
                                  label="between runs: same layer of the reference"))),
    schema="schema.yaml",
)
