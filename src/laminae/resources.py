"""Cluster resource requests that scale with the model and the input, from config alone (no
model is loaded while the DAG is built).

    >>> extraction_resources(cfg, "qkv")
    {'mem_mb': 6700, 'runtime': 15}
    >>> analysis_resources(cfg, "adjustments", corpus_bytes=4_000_000)   # GPT-2 Large, ~1M tokens
    {'mem_mb': 2600, 'runtime': 123}

Estimates (deliberately generous; a job that runs out of memory or time costs more than one
that asks for too much):
- memory: Python + torch (2 GB) + the weights twice (loading copies them) + two copies of the
  activations captured per forward (batch x tokens x width x sites x layers x 4 bytes);
- runtime (minutes): 10 + 2 FLOP per parameter per token at a pessimistic 1 TFLOP/s (a CPU
  node or a busy GPU), x3 for the first load of the weights from a shared filesystem.

Analysis and figure jobs run on CPUs only (one core). Their requests never go below fixed floors
(ANALYSIS_FLOOR, PLOT_FLOOR: 2 GB, and 30 or 10 minutes), which cover the seed experiments on any
GPT-2 size, and grow with what each stage holds in memory (float64 unless said otherwise):
- qkv analysis: Q/K/V as read and in float64, the similarity matrices (components x layers x
  words^2), the permutation null (components x layers x permutations x categories), and the
  bootstrap pair weights (bootstraps x word pairs); runtime from the matrix products of the
  permutation test and the bootstrap at a pessimistic 1 GFLOP/s;
- adjustments analysis: the streamed chunk (256 MB, `analysis.adjustments.CHUNK_BYTES`) and
  the per-token cosines it keeps (layers x tokens, float64 + a bool mask), three copies at the
  end (concatenation, medians, writing); runtime from reading every stored activation once at a
  pessimistic 100 MB/s from a shared filesystem;
- figures: the metrics they plot (the similarity matrices, or every per-token cosine for the
  histogram), three copies.
"""

from __future__ import annotations

from typing import Any

BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2}
DEFAULT_PARAMS = 1_500_000_000   # GPT-2 XL size when the config does not say
DEFAULT_WIDTH, DEFAULT_LAYERS = 1600, 48
PROMPT_TOKENS = 32               # generous length of one stimulus prompt
CHARS_PER_TOKEN = 4
BASE_MB = 1024                   # Python + NumPy + h5py + matplotlib, no torch
ANALYSIS_FLOOR = {"mem_mb": 2000, "runtime": 30}
PLOT_FLOOR = {"mem_mb": 2000, "runtime": 10}
STREAM_CHUNK_MB = 256            # laminae.analysis.adjustments.CHUNK_BYTES (not imported: no numpy here)
READ_MB_PER_S = 100              # pessimistic shared-filesystem read rate
CPU_FLOP_PER_S = 1e9             # pessimistic NumPy throughput on one busy core
MB = 2**20


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


def _shape(cfg: dict[str, Any]) -> tuple[int, int]:
    model = cfg["model"]
    return model["d_model"] or DEFAULT_WIDTH, model["n_layers"] or DEFAULT_LAYERS


def _rows(cfg: dict[str, Any], experiment: str, corpus_bytes: int) -> int:
    """Rows of the activation store: one per word (qkv) or per corpus token (adjustments)."""
    if experiment == "qkv":
        return sum(len(words) for words in cfg["stimuli"]["categories"].values())
    return max(1, corpus_bytes // CHARS_PER_TOKEN)


def _request(mem_mb: float, runtime: float, floor: dict[str, int]) -> dict[str, int]:
    return {"mem_mb": max(floor["mem_mb"], int(round(mem_mb, -2)) + 100),
            "runtime": max(floor["runtime"], int(runtime) + 1)}


def analysis_resources(cfg: dict[str, Any], experiment: str, corpus_bytes: int = 0) -> dict[str, int]:
    """mem_mb and runtime (minutes) of the analysis (metrics) job of `experiment`."""
    width, layers = _shape(cfg)
    rows = _rows(cfg, experiment, corpus_bytes)
    if experiment == "qkv":
        qkv = cfg["qkv"]
        components, categories = len(qkv["components"]), len(cfg["stimuli"]["categories"])
        pairs = rows * (rows - 1) // 2
        permutations, bootstraps = qkv["n_permutations"] + 1, qkv["n_bootstrap"]
        floats = (components * layers * rows * width * 2            # activations, float64 copy
                  + 3 * components * layers * rows * rows           # similarities, upper triangles
                  + 3 * components * layers * permutations * (categories + 2)   # permutation null
                  + 3 * bootstraps * pairs                          # bootstrap pair weights
                  + 3 * components * layers * bootstraps)           # replicates
        mem_mb = BASE_MB + floats * 8 / MB
        flop = 2 * components * layers * pairs * (permutations * categories + 3 * bootstraps)
        runtime = 5 + flop / CPU_FLOP_PER_S / 60
    else:
        kept_mb = layers * rows * 9 / MB                         # float64 cosine + bool mask
        mem_mb = BASE_MB + 2 * STREAM_CHUNK_MB + 3 * kept_mb
        sites = len(cfg["extract"]["sites"]["adjustments"])
        stored_mb = layers * rows * width * sites * BYTES_PER_PARAM[cfg["extract"]["storage_dtype"]] / MB
        runtime = 5 + stored_mb / READ_MB_PER_S / 60
    return _request(mem_mb, runtime, ANALYSIS_FLOOR)


def plot_resources(cfg: dict[str, Any], experiment: str, corpus_bytes: int = 0) -> dict[str, int]:
    """mem_mb and runtime (minutes) of the figure job of `experiment`."""
    _, layers = _shape(cfg)
    rows = _rows(cfg, experiment, corpus_bytes)
    if experiment == "qkv":
        held_mb = len(cfg["qkv"]["components"]) * layers * rows * rows * 8 / MB   # similarity matrices
    else:
        held_mb = layers * rows * 9 / MB                                           # every cosine
    return _request(BASE_MB + 3 * held_mb, 5 + 3 * held_mb / READ_MB_PER_S / 60, PLOT_FLOOR)
