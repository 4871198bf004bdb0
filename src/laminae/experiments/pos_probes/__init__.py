"""Experiment `pos_probes` (corpus): how linearly decodable a token's part of speech is at every
layer: the corpus counterpart of `probes`, sharing its modules (`laminae.experiments.probes`:
tables, figures, compare, measures; the computation `laminae.metrics.decoding`).

Each row (a token of the corpus) is tagged with the universal POS (UPOS) of its word by spaCy
(`laminae.inputs.pos_tags.tag_rows`); per layer, the multinomial logistic-regression probe is
cross-validated over contiguous stretches of windows (no token's neighbours in another fold),
and refitted on tags shuffled within each window for the permutation null (definitions:
docs/EXPERIMENTS.md). Needs spaCy and its English pipeline (the `pos` extra).
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Experiment, Figure, JobShape, Measure
from laminae.experiments.probes import fit_seconds

SITES = ("resid_post",)
N_TAGS = 15     # UPOS tags seen in English prose, for job sizes
MEASURES = (
    *(Measure(f"{score}:resid_post", f"cross-validated {score.replace('_', ' ')} of the POS probe per layer, "
                                     "t interval over folds, permutation p and BH q",
              headline=f"POS probe {score.replace('_', ' ')}" if score == "accuracy" else "")
      for score in ("accuracy", "balanced_accuracy")),
    Measure("null_accuracy:resid_post", "mean accuracy under tags shuffled within windows, with its central band"),
)


def validate(cfg: dict[str, Any]) -> None:
    """spaCy and its English pipeline installed: one line before any job."""
    from laminae.errors import ConfigError
    from laminae.inputs.pos_tags import missing

    problem = missing()
    if problem:
        raise ConfigError("experiments", "pos_probes only with spaCy installed", problem)


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Memory: resid_post (at most max_rows rows) in float64 plus a layer's fits; runtime: layers x
    folds x (1 + permutations) fits on (folds - 1) / folds of the rows (`probes.fit_seconds`, x
    N_TAGS / 3 for the classes), plus spaCy's tagging (~10k tokens/s)."""
    if stage == "plot":
        return {"mem_mb": 1024, "runtime": 3}
    group = cfg["pos_probes"]
    rows = min(shape.n_rows, group["max_rows"] or shape.n_rows)
    folds = group["n_folds"]
    fits = shape.n_layers * folds * (1 + group["n_permutations"])
    seconds = fits * fit_seconds(rows * (folds - 1) // folds, shape.d_model) * N_TAGS / 3 + shape.n_rows / 1e4
    floats = shape.n_layers * rows * shape.d_model + 4 * rows * shape.d_model
    return {"mem_mb": 1536 + floats * 8 / 2**20, "runtime": 5 + seconds / 60}


EXPERIMENT = Experiment(
    name="pos_probes",
    title="Linear probes",
    inputs="corpus",
    sites=SITES,
    metrics=("probes_laminar.tsv", "probes_folds.tsv", "pos_tags.tsv"),
    figures=(Figure("pos_probes_laminar", caption="captions/laminar.rst", label="laminar POS decoding profile"),),
    analyse=".analysis:analyse",
    plot=".analysis:plot",
    compare="laminae.experiments.probes.compare:compare_pos",
    compare_caption="captions/compare.rst",
    validate=validate,
    resources=resources,
    measure="laminae.experiments.probes.measures:measure",
    measures=MEASURES,
    schema="schema.yaml",
)
