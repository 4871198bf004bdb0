"""Experiment `neurons` (stimuli): which MLP neurons, and which Q, K, V dimensions, respond to a
stimulus category.

Per site and layer, every unit is tested on its own: one-way ANOVA F across the categories and
a one-vs-rest t per category, p-values from label permutations (the same shuffles for every
unit), Benjamini-Hochberg within the layer. The fraction of selective units per layer gets a
Clopper-Pearson interval and a permutation-null reference; each category's top MLP neurons are
listed with the words that drive them (definitions: docs/EXPERIMENTS.md). `analysis` computes
(on `laminae.metrics.unit_selectivity`), `figures` draws, `compare` overlays a sweep's runs,
`measures` reads the fractions back for claims.
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Experiment, Figure, JobShape, Measure

SITES = ("mlp_post", "q", "k", "v")
CPU_FLOP_PER_S = 1e9     # pessimistic NumPy throughput on one busy core
COMPARE_S = 2e-9         # one comparison of the null fractions' pseudo-observed p-values
MLP_RATIO = 4            # d_mlp / d_model for job sizes when the config does not say (GPT-2's; gated MLPs: ~2.7-3.5)
MEASURES = (
    *(Measure(f"fraction:{site}", f"fraction of {site}'s units selective per layer (ANOVA, BH), Clopper-Pearson CI",
              headline="selective MLP neurons" if site == "mlp_post" else "")
      for site in SITES),
    *(Measure(f"null_fraction:{site}", f"{site}'s fraction selective under shuffled labels: mean, band to its upper percentile")
      for site in SITES),
)


def validate(cfg: dict[str, Any]) -> None:
    """The top units come from a site the analysis tests; the null draws fit in the permutations."""
    from laminae.errors import ConfigError

    group = cfg["neurons"]
    if group["top_site"] not in group["sites"]:
        raise ConfigError("neurons.top_site", f"one of neurons.sites {list(group['sites'])}", group["top_site"])
    if group["n_null_draws"] > group["n_permutations"]:
        raise ConfigError("neurons.n_null_draws", f"at most neurons.n_permutations ({group['n_permutations']})",
                          group["n_null_draws"])


def widths(shape: JobShape, cfg: dict[str, Any]) -> dict[str, int]:
    """Each tested site's width for job sizes: q, k, v at most d_model; mlp_post d_mlp when the
    model config or its random architecture says, else MLP_RATIO x d_model."""
    architecture = (cfg["model"].get("random_init") or {}).get("config") or {}
    d_mlp = (cfg["model"].get("d_mlp") or architecture.get("intermediate_size") or architecture.get("n_inner")
             or MLP_RATIO * shape.d_model)
    return {site: int(d_mlp) if site == "mlp_post" else shape.d_model for site in cfg["neurons"]["sites"]}


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Memory: the widest site read in float64 (all layers), one chunk's arrays (6 x 32 MiB),
    the top site's per-unit statistics (about 8 arrays of layers x categories x units).
    Runtime: per layer and unit, the one-hot product ((1 + P) x C x N multiply-adds), and the
    null draws' comparisons (n_null_draws x (1 + P)). Figures read small tables."""
    if stage == "plot":
        return {"mem_mb": 1024, "runtime": 3}
    group = cfg["neurons"]
    width = widths(shape, cfg)
    categories = len(cfg["stimuli"]["categories"])
    labellings = group["n_permutations"] + 1
    units = sum(width.values()) * shape.n_layers
    floats = max(width.values()) * shape.n_layers * shape.n_rows * 2 + 8 * categories * width[group["top_site"]] * shape.n_layers
    seconds = (2 * labellings * categories * shape.n_rows * units / CPU_FLOP_PER_S
               + group["n_null_draws"] * labellings * units * COMPARE_S)
    return {"mem_mb": 1024 + 6 * 32 + floats * 8 / 2**20, "runtime": 3 + seconds / 60}


EXPERIMENT = Experiment(
    name="neurons",
    title="Category-selective neurons",
    inputs="stimuli",
    sites=SITES,
    site_key="sites",
    metrics=("neurons_laminar.tsv", "neurons_top.tsv", "neurons_top_words.tsv"),
    figures=(Figure("neurons_laminar", caption="captions/laminar.rst", label="laminar profile"),
             Figure("neurons_top", caption="captions/top.rst", label="top neurons")),
    analyse=".analysis:analyse",
    plot=".figures:plot",
    compare=".compare:compare",
    compare_caption="captions/compare.rst",
    validate=validate,
    resources=resources,
    measure=".measures:measure",
    measures=MEASURES,
    schema="schema.yaml",
    config="default.yaml",
)
