"""Where each head looks (the `attention` experiment, on the corpus or on the stimuli).

Per layer and head, over the corpus's queries: the entropy of the attention pattern (nats, and
divided by ln of the number of keys the query can see), the attention mass on the window's first
token (the "attention sink", Xiao et al. 2023) and the mean attention distance; and per layer
the first token's resid_post norm against the median token's, the outlier that `adjustments`
and `pathlength` leave out (definitions: docs/EXPERIMENTS.md, laminae.metrics.attention). It
reads the `pattern` site; the analysis streams (`analysis.AttentionReducer`), and by default
runs during extraction (`attention.during_extraction=true`), so the n x n patterns of the corpus
are never written to disk. With `attention.inputs=stimuli` it reads experiment 1's prompts
instead: one query per word (the token `extract.position` keeps), each word its own resampling
unit; the first-token norm needs the first token's row, which stimuli do not keep.
"""

from __future__ import annotations

from typing import Any

from laminae.errors import ConfigError
from laminae.experiment import Experiment, Figure, JobShape, Measure

#: laminae.metrics.attention.STATISTICS, spelled out: the declaration is imported whenever the
#: workflow builds its DAG, which must not import numpy (tests/test_attention.py checks they agree)
STATISTICS = ("entropy", "entropy_normalised", "sink", "distance", "sink_uniform")
N_STATISTICS = len(STATISTICS)
BOOTSTRAP_S_PER_VALUE = 2e-9      # one replicate's weighted sum, per block x layer x head x statistic
HEADS_GUESS = 64                  # heads are not in JobShape: a generous bound for the memory estimate


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Analysis: two streamed chunks (the patterns, up to 256 MB each), the block sums (2 x
    blocks x layers x heads x 5 float64) and every token's norm (layers x tokens float64);
    runtime: every stored value read once at 100 MB/s plus the bootstrap. Figures read the tables."""
    if stage == "plot":
        return {"mem_mb": 1024, "runtime": 5}
    settings = cfg["attention"]
    per_block = 1 if settings.get("inputs") == "stimuli" else max(int(settings["block_tokens"]), 1)
    n_blocks = shape.n_rows / per_block + 1
    block_mb = 2 * n_blocks * shape.n_layers * HEADS_GUESS * N_STATISTICS * 8 / 2**20
    norms_mb = shape.n_layers * shape.n_rows * 8 / 2**20
    bootstrap_s = settings["n_bootstrap"] * n_blocks * shape.n_layers * HEADS_GUESS * N_STATISTICS * BOOTSTRAP_S_PER_VALUE
    return {"mem_mb": 1024 + 2 * 256 + block_mb + norms_mb,
            "runtime": 5 + shape.stored_mb / 100 / 60 + bootstrap_s / 60}


def validate(cfg: dict[str, Any]) -> None:
    """On stimuli a row is one query's pattern: the word's tokens cannot be averaged into one."""
    if cfg["attention"].get("inputs") == "stimuli" and cfg["extract"]["position"] == "target_mean":
        raise ConfigError("extract.position", "target_last or last while attention.inputs=stimuli (a pattern is "
                                              "one query's attention; target_mean would average several queries)",
                          "target_mean")


#: What `measures.measure` returns (claims name these; docs/EXPERIMENTS.md, "Claims").
MEASURES = (
    *(Measure(metric, f"{metric} per layer: mean over heads of the per-head means over queries, with its block "
                      f"bootstrap CI", headline={"sink": "sink mass", "entropy_normalised": "normalised entropy"}
              .get(metric, "")) for metric in STATISTICS),
    *(Measure(f"{metric}:median_heads", f"{metric} per layer: median over heads, with its block bootstrap CI")
      for metric in STATISTICS),
    Measure("first_token_norm_ratio", "per layer, the first token's |resid_post| over the median token's (median over "
                                      "windows, range over windows)", headline="first-token norm ratio"),
)

EXPERIMENT = Experiment(
    name="attention",
    title="Attention: where each head looks",
    inputs=("corpus", "stimuli"),
    sites=("pattern", "resid_post"),
    metrics=("attention.tsv", "attention_heads.tsv", "attention_blocks.h5"),
    figures=(Figure("attention_laminar", caption="captions/laminar.rst", label="laminar profiles"),
             Figure("attention_heads", caption="captions/heads.rst", label="per head"),
             Figure("attention_sink_norm", caption="captions/sink_norm.rst", label="sink and first-token norm")),
    reducer=".analysis:AttentionReducer",
    plot=".figures:plot",
    compare=".compare:compare",
    compare_caption="captions/compare.rst",
    resources=resources,
    validate=validate,
    measure=".measures:measure",
    measures=MEASURES,
    schema="schema.yaml",
    version=2,     # 2: attention_blocks.h5 keeps the stimuli's categories
)
