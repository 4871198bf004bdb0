"""Cluster resource requests that scale with the model and the input, from config alone (no
model is loaded while the DAG is built).

    >>> extraction_resources(cfg, "qkv")
    {'mem_mb': 6700, 'runtime': 15}

Estimates (deliberately generous; a job that runs out of memory or time costs more than one
that asks for too much):
- memory: Python + torch (2 GB) + the weights twice (loading copies them) + two copies of the
  activations captured per forward (batch x tokens x width x sites x layers x 4 bytes);
- runtime (minutes): 10 + 2 FLOP per parameter per token at a pessimistic 1 TFLOP/s (a CPU
  node or a busy GPU), x3 for the first load of the weights from a shared filesystem.
"""

from __future__ import annotations

from typing import Any

BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2}
DEFAULT_PARAMS = 1_500_000_000   # GPT-2 XL size when the config does not say
DEFAULT_WIDTH, DEFAULT_LAYERS = 1600, 48
PROMPT_TOKENS = 32               # generous length of one stimulus prompt
CHARS_PER_TOKEN = 4


def input_tokens(cfg: dict[str, Any], experiment: str, corpus_bytes: int = 0) -> tuple[int, int]:
    """(tokens per forward pass, total tokens) for one extraction."""
    if experiment == "qkv":
        n_words = sum(len(words) for words in cfg["stimuli"]["categories"].values())
        per_forward = min(n_words, cfg["batch_size"]) * PROMPT_TOKENS
        return per_forward, n_words * PROMPT_TOKENS
    window = cfg["corpus"]["window_tokens"] or 1024
    total = max(1, corpus_bytes // CHARS_PER_TOKEN)
    return min(total, cfg["batch_size"] * window), total


def extraction_resources(cfg: dict[str, Any], experiment: str, corpus_bytes: int = 0) -> dict[str, int]:
    model = cfg["model"]
    n_params = model["n_params"] or DEFAULT_PARAMS
    width, layers = model["d_model"] or DEFAULT_WIDTH, model["n_layers"] or DEFAULT_LAYERS
    per_forward, total = input_tokens(cfg, experiment, corpus_bytes)
    n_sites = len(cfg["extract"]["sites"][experiment])
    weights_mb = n_params * BYTES_PER_PARAM[model["dtype"]] / 2**20
    activations_mb = per_forward * width * n_sites * layers * 4 / 2**20
    mem_mb = 2048 + 2 * weights_mb + 2 * activations_mb
    runtime = 10 + 3 * (2 * n_params * total / 1e12) / 60
    return {"mem_mb": int(round(mem_mb, -2)) + 100, "runtime": int(runtime) + 1}
