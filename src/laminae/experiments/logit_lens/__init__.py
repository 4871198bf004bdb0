"""The logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"; Belrose et al.
2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens"): the model's own
final norm and unembedding (`laminae.models.readout`) applied to the residual stream after every
layer of a decoder, on the corpus.

Per layer and token with a next token: rank and log-probability of the real next token,
KL(final || layer) and top-1 agreement with the last layer (their laminar profiles: medians,
or the mean for agreement, with bootstrap CIs); the classic grid of decoded top-1 tokens over a
stretch of the passage; the direct logit attribution of the embedding and of each attn_out and
mlp_out (final norm frozen); and (course seed 003, "path length and logit token prediction")
the correlation of each token's path length with the final log-prob of its next token.
Definitions: docs/EXPERIMENTS.md, `analysis.py`, `laminae.metrics.lens`. It reads the same sites
as `pathlength`, so the two share one extraction; it streams (`analysis.LogitLensReducer`), so it
may run during extraction (`logit_lens.during_extraction=true`).
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Experiment, Figure, JobShape, Measure

# Seconds per token, layer and (d_model x vocab) multiply-add of the readout on one core,
# plus the float64 softmax and KL over the vocabulary: measured about 2e-11 s per MAC for
# SmolLM2-135M (d_model 576, vocab 49152); generous.
READOUT_S_PER_MAC = 4e-11
VOCAB_GUESS = 256_000          # the JobShape does not know the vocabulary: the largest we support


def resources(stage: str, shape: JobShape, cfg: dict[str, Any]) -> dict[str, float]:
    """Analysis: every stored activation read once (100 MB/s), n_layers readouts per analysed
    token, then one bootstrap per summary and layer; memory: two streamed chunks plus a few
    blocks of rows x vocab float64 (32 MiB each) and one layer of per-token values."""
    if stage == "plot":
        return {"mem_mb": 1024, "runtime": 5}
    settings = cfg["logit_lens"]
    tokens = shape.n_rows if settings["max_tokens"] is None else min(shape.n_rows, settings["max_tokens"])
    readout_s = tokens * shape.n_layers * shape.d_model * VOCAB_GUESS * READOUT_S_PER_MAC
    bootstrap_s = 12 * shape.n_layers * settings["n_bootstrap"] * tokens * 2e-8
    return {"mem_mb": 2048 + 2 * 256 + tokens * 200 / 2**20,
            "runtime": 5 + shape.stored_mb / 100 / 60 + (readout_s + bootstrap_s) / 60}


#: Per-layer series `measures.measure` returns (claims name these; docs/EXPERIMENTS.md).
MEASURES = (
    Measure("rank_median", "median rank of the next token per layer (1 = top-1), bootstrap CI",
            headline="median rank of next token"),
    Measure("logprob_median", "median log p(next token) per layer, nats, bootstrap CI",
            headline="median log p(next token)"),
    Measure("kl_median", "median KL(final || layer) per layer, nats, bootstrap CI", headline="median KL(final||layer)"),
    Measure("top1_agreement", "fraction of tokens whose top-1 equals the final top-1 per layer, bootstrap CI",
            headline="top-1 agreement with final"),
    Measure("dla_attn_mean", "mean direct logit attribution of attn_out to the next token per layer, bootstrap CI"),
    Measure("dla_mlp_mean", "mean direct logit attribution of mlp_out to the next token per layer, bootstrap CI"),
)

EXPERIMENT = Experiment(
    name="logit_lens",
    title="Logit lens",
    inputs="corpus",
    needs=("readout",),
    sites=("attn_out", "mlp_out", "resid_pre", "resid_post"),
    metrics=("logit_lens.tsv", "logit_lens_pathlength.tsv", "logit_lens_grid.tsv", "logit_lens_tokens.h5"),
    figures=(Figure("logit_lens_profile", caption="captions/profile.rst", label="laminar profile"),
             Figure("logit_lens_grid", caption="captions/grid.rst", label="top-1 grid"),
             Figure("logit_lens_dla", caption="captions/dla.rst", label="direct logit attribution"),
             Figure("logit_lens_pathlength", caption="captions/pathlength.rst", label="path length vs log-prob")),
    reducer=".analysis:LogitLensReducer",
    plot=".figures:plot",
    compare=".compare:compare",
    compare_caption="captions/compare.rst",
    resources=resources,
    measure=".measures:measure",
    measures=MEASURES,
    schema="schema.yaml",
)
