"""Experiment `probes` (stimuli): how linearly decodable a word's category is at every layer.

Per site (resid_post by default) and layer, a multinomial logistic regression on standardised
features, cross-validated over folds that never split a word; accuracy and balanced accuracy per
fold, their mean with a t interval over folds, the majority-class chance level, and a
label-permutation null (the whole cross-validation refitted on shuffled labels) with p-values and
Benjamini-Hochberg over the layers (definitions: docs/EXPERIMENTS.md; the computation:
`laminae.metrics.decoding`). `analysis` computes, `figures` draws, `compare` overlays a sweep's
runs, `measures` reads the profile back for claims. The corpus counterpart (part of speech per
token) shares these modules.
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Experiment, Figure, JobShape, Measure

SITES = ("resid_post", "attn_out", "mlp_out")
#: One probe fit (StandardScaler + lbfgs logistic regression, one thread), measured on this
#: machine: 12 ms for 27 rows x 576 features x 3 classes, 0.3 s for 3000 x 384 x 15. Per row and
#: feature about 1 us at 27 rows (fixed costs dominate), so FIT_S + ROW_FEATURE_S * rows * width.
FIT_S = 0.01
ROW_FEATURE_S = 2.5e-7
MEASURES = (
    *(Measure(f"{score}:{site}", f"cross-validated {score.replace('_', ' ')} of the linear probe on {site} per layer, "
                                 "t interval over folds, permutation p and BH q",
              headline=f"probe {score.replace('_', ' ')}" if site == "resid_post" and score == "accuracy" else "")
      for site in SITES for score in ("accuracy", "balanced_accuracy")),
    *(Measure(f"null_accuracy:{site}", "mean accuracy under permuted labels per layer, with its central band")
      for site in SITES),
)


def validate(cfg: dict[str, Any]) -> None:
    """As many words as folds in the smallest category is not required (folds are stratified as
    far as the words allow), but every fold needs a word: n_folds <= the number of words."""
    from laminae.errors import ConfigError

    group = cfg["probes"]
    n_words = len({w for words in cfg["stimuli"]["categories"].values() for w in words})
    if group["n_folds"] > n_words:
        raise ConfigError("probes.n_folds", f"at most the number of stimulus words ({n_words})", group["n_folds"])


def fit_seconds(rows: int, width: int) -> float:
    """One probe fit's time (see FIT_S), rows the training rows."""
    return FIT_S + ROW_FEATURE_S * rows * width


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Memory: one site in float64 (all layers) plus a layer's copy; runtime: sites x layers x
    folds x (1 + permutations) fits of (folds - 1) / folds of the rows. Figures read small tables."""
    if stage == "plot":
        return {"mem_mb": 1024, "runtime": 3}
    group = cfg["probes"]
    sites, folds = len(group["sites"]), group["n_folds"]
    fits = sites * shape.n_layers * folds * (1 + group["n_permutations"])
    seconds = fits * fit_seconds(shape.n_rows * (folds - 1) // folds, shape.d_model)
    floats = shape.n_layers * shape.n_rows * shape.d_model + 4 * shape.n_rows * shape.d_model
    return {"mem_mb": 1024 + floats * 8 / 2**20, "runtime": 3 + seconds / 60}


EXPERIMENT = Experiment(
    name="probes",
    title="Linear probes",
    inputs="stimuli",
    sites=SITES,
    site_key="sites",
    metrics=("probes_laminar.tsv", "probes_folds.tsv"),
    figures=(Figure("probes_laminar", caption="captions/laminar.rst", label="laminar decoding profile"),),
    analyse=".analysis:analyse",
    plot=".figures:plot",
    compare=".compare:compare",
    compare_caption="captions/compare.rst",
    validate=validate,
    resources=resources,
    measure=".measures:measure",
    measures=MEASURES,
    schema="schema.yaml",
)
