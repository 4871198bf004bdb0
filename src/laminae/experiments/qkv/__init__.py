"""Experiment 1 (seed 000): laminar profile of RSA and category selectivity in Q, K, V.

Per layer, the cosine-similarity matrices of Q, K and V over category words in a template;
their category selectivity with a label-permutation null, and the RSA between them with
bootstrap CIs (definitions: docs/EXPERIMENTS.md). `analysis` computes, `figures` draws,
`compare` overlays the runs of a sweep.
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Experiment, Figure, JobShape

CPU_FLOP_PER_S = 1e9   # pessimistic NumPy throughput on one busy core


def validate(cfg: dict[str, Any]) -> None:
    """Similarity-matrix layers inside the model, when the config declares its depth."""
    from laminae.config.validate import resolve_layer

    n_layers = cfg["model"]["n_layers"]
    if n_layers is not None:
        for index in cfg["qkv"]["plot"]["similarity_layers"]:
            resolve_layer(index, n_layers, key="qkv.plot.similarity_layers")


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Memory: Q/K/V as read and in float64, the similarity matrices (components x layers x
    words^2), the permutation null (components x layers x permutations x categories), the
    bootstrap pair weights (bootstraps x word pairs); runtime from the matrix products of the
    permutation test and the bootstrap at CPU_FLOP_PER_S. Figures hold the matrices, 3 copies."""
    qkv = cfg["qkv"]
    components, words, layers = len(qkv["components"]), shape.n_rows, shape.n_layers
    if stage == "plot":
        held_mb = components * layers * words * words * 8 / 2**20
        return {"mem_mb": 1024 + 3 * held_mb, "runtime": 5 + 3 * held_mb / 100 / 60}
    categories, pairs = len(cfg["stimuli"]["categories"]), words * (words - 1) // 2
    permutations, bootstraps = qkv["n_permutations"] + 1, qkv["n_bootstrap"]
    floats = (components * layers * words * shape.d_model * 2              # activations, float64 copy
              + 3 * components * layers * words * words                    # similarities, upper triangles
              + 3 * components * layers * permutations * (categories + 2)  # permutation null
              + 3 * bootstraps * pairs                                     # bootstrap pair weights
              + 3 * components * layers * bootstraps)                      # replicates
    flop = 2 * components * layers * pairs * (permutations * categories + 3 * bootstraps)
    return {"mem_mb": 1024 + floats * 8 / 2**20, "runtime": 5 + flop / CPU_FLOP_PER_S / 60}


EXPERIMENT = Experiment(
    name="qkv",
    title="Experiment 1: Q, K, V",
    inputs="stimuli",
    sites=("q", "k", "v"),
    metrics=("qkv_laminar.tsv", "similarity.h5"),
    figures=(Figure("qkv_laminar", caption="captions/laminar.rst", label="laminar profile"),
             Figure("qkv_similarity", caption="captions/similarity.rst", label="similarity matrices")),
    analyse=".analysis:analyse",
    plot=".figures:plot",
    compare=".compare:compare",
    compare_caption="captions/compare.rst",
    validate=validate,
    resources=resources,
    schema="schema.yaml",
)
