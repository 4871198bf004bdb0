"""Experiment 1 (seed 000): laminar profile of RSA and category selectivity in Q, K, V.

Per layer, the cosine-similarity matrices of Q, K and V over category words in a template;
their category selectivity with a label-permutation null, and the RSA between them with
bootstrap CIs (definitions: docs/EXPERIMENTS.md). `analysis` computes, `figures` draws,
`compare` overlays the runs of a sweep, `measures` reads the headline series back for the claims
of seed 000 (`qkv.claims`). With `qkv.resolution: heads` the same per attention head
(`heads` computes, `heads_figure` draws), written as the variant `heads` (folder `qkv+heads/`).
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Across, Experiment, Figure, JobShape, Measure, Variant

CPU_FLOP_PER_S = 1e9   # pessimistic NumPy throughput on one busy core
RANK_S = 5e-8          # Spearman bootstrap, per matrix x replicate x word pair (17 ns measured, x3)
MIN_HEAD_DIM = 32      # the narrowest heads of the supported pretrained models (all-MiniLM-L6-v2)
#: What `measures.measure` returns (claims name these; docs/EXPERIMENTS.md, "Claims").
MEASURES = (
    *(Measure(f"rsa:{pair}", f"RSA between {pair.upper().replace('-', ' and ')} per layer, with its bootstrap CI",
              headline="RSA Q-K" if pair == "q-k" else "")
      for pair in ("q-k", "q-v", "k-v")),
    *(Measure(f"selectivity:{c}", f"category selectivity of {c.upper()} per layer, with permutation p and q",
              headline=f"selectivity of {c.upper()}")
      for c in "qkv"),
    *(Measure(f"selectivity_null:{c}", f"mean of {c.upper()}'s permutation null per layer, with its central band")
      for c in "qkv"),
)


def heads_enabled(settings: dict[str, Any]) -> bool:
    """The `heads` variant's condition: `qkv.resolution: heads` (settings without the key: layers)."""
    return settings.get("resolution", "layers") == "heads"


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
    permutation test and the bootstrap at CPU_FLOP_PER_S (the Spearman bootstrap's ranking at
    RANK_S per element). Figures hold the matrices, 3 copies.

    With `resolution: heads` the same again with every (layer, head) as a layer (K and V counted
    with as many heads as Q, an upper bound under grouped-query attention): the null's
    intermediate arrays (4 per category, 6 more per test) dominate the memory. Measured on random
    data of GPT-2 Large's shape (36 layers x 20 heads x 64 dimensions, 34 words, 1000 permutations
    and bootstraps, one thread on a busy machine): the per-head analysis peaks at about 375 MiB
    and takes 2-3 s (Pearson) or 35-41 s (Spearman); this estimate, with 40 heads assumed
    (`n_heads`), says 2.0 GB and 0.5 min (Pearson) or 4 min (Spearman) beyond the fixed 5."""
    qkv = cfg["qkv"]
    components, words, layers = len(qkv["components"]), shape.n_rows, shape.n_layers
    heads = n_heads(cfg) if heads_enabled(qkv) else 0
    if stage == "plot":
        held_mb = components * layers * words * words * 8 / 2**20
        table_mb = components * layers * heads * 2000 / 2**20   # qkv_heads.tsv rows as Python objects
        # the per-head figure: 2-3 s measured for 36 layers x 20 heads; 1 s per head asked
        return {"mem_mb": 1024 + 3 * held_mb + table_mb, "runtime": 5 + 3 * held_mb / 100 / 60 + heads / 60}
    categories, pairs = len(cfg["stimuli"]["categories"]), words * (words - 1) // 2
    permutations, bootstraps = qkv["n_permutations"] + 1, qkv["n_bootstrap"]
    floats = (components * layers * words * shape.d_model * 2              # activations, float64 copy
              + 3 * components * layers * words * words                    # similarities, upper triangles
              + 3 * components * layers * permutations * (categories + 2)  # permutation null
              + 3 * bootstraps * pairs                                     # bootstrap pair weights
              + 3 * components * layers * bootstraps)                      # replicates
    flop = 2 * components * layers * pairs * (permutations * categories + 3 * bootstraps)
    if heads:
        tests = components * layers * heads
        floats += (2 * components * layers * words * shape.d_model         # heads split off, float64
                   + 3 * tests * words * words                             # per-head similarities
                   + tests * permutations * (4 * categories + 6)           # per-head permutation null
                   + 3 * tests * bootstraps)                               # per-head replicates
    seconds = flop * (1 + heads) / CPU_FLOP_PER_S
    if qkv["rsa_method"] == "spearman":   # weighted ranks per replicate: not matrix products
        seconds += RANK_S * (components + 2) * layers * (1 + heads) * bootstraps * pairs
    return {"mem_mb": 1024 + floats * 8 / 2**20, "runtime": 5 + seconds / 60}


def n_heads(cfg: dict[str, Any]) -> int:
    """Attention heads per layer, for job sizes: a random model's architecture config says;
    otherwise d_model / MIN_HEAD_DIM, an upper bound (GPT-2 Large: 40 for its 20 heads)."""
    random_init = cfg["model"].get("random_init") or {}
    architecture = random_init.get("config") or {}
    declared = architecture.get("num_attention_heads") or architecture.get("n_head")
    if declared:
        return int(declared)
    d_model = cfg["model"].get("d_model") or 1600
    return max(1, int(d_model) // MIN_HEAD_DIM)


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
    measure=".measures:measure",
    measures=MEASURES,
    variants=(Variant("heads", when=heads_enabled, metrics=("qkv_heads.tsv",),
                      figures=(Figure("qkv_heads", caption="captions/heads.rst", label="per head"),)),),
    across=Across(analyse=".across:analyse", plot=".across:plot", metrics=("rsa_across.tsv",),
                  figures=(Figure("qkv_rsa_across", caption="captions/across.rst", label="RSA across runs"),)),
    schema="schema.yaml",
    version=2,   # 2: q_value column (Benjamini-Hochberg) in qkv_laminar.tsv
)
