"""Cluster resource requests that scale with the model and the input, from config alone (no
model is loaded while the DAG is built).

    >>> extraction_resources(cfg, kind="stimuli", n_sites=3)
    {'mem_mb': 6700, 'runtime': 15}
    >>> stage_resources("analysis", registry["adjustments"], cfg, input_bytes=4_000_000)   # ~1M tokens
    {'mem_mb': 2600, 'runtime': 123}

Estimates (deliberately generous; a job that runs out of memory or time costs more than one
that asks for too much):
- extraction memory: Python + torch (2 GB) + the weights twice (loading copies them) + two
  copies of the activations captured per forward (batch x tokens x width x sites x layers x 4
  bytes); runtime (minutes): 10 + 2 FLOP per parameter per token at a pessimistic 1 TFLOP/s (a
  CPU node or a busy GPU), x3 for the first load of the weights from a shared filesystem.
- analysis and figure jobs run on CPUs only (one core), sized by the experiment's `resources`
  hook from a `JobShape` (layers, width, stored rows); without one, an analysis reads every
  stored value of its sites once (a streaming reducer: two 256 MB chunks in memory; a whole-store
  analysis: its sites in float64) at a pessimistic 100 MB/s from a shared filesystem. Requests
  never go below fixed floors (ANALYSIS_FLOOR, PLOT_FLOOR: 2 GB, and 30 or 10 minutes).
"""

from __future__ import annotations

from typing import Any

from laminae.experiment import Experiment, JobShape

BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2}
DEFAULT_PARAMS = 1_500_000_000   # GPT-2 XL size when the config does not say
DEFAULT_WIDTH, DEFAULT_LAYERS = 1600, 48
BASE_MB = 1024                   # Python + NumPy + h5py + matplotlib, no torch
ANALYSIS_FLOOR = {"mem_mb": 2000, "runtime": 30}
PLOT_FLOOR = {"mem_mb": 2000, "runtime": 10}
STREAM_CHUNK_MB = 256            # laminae.store.CHUNK_BYTES (not imported: no numpy here)
READ_MB_PER_S = 100              # pessimistic shared-filesystem read rate
MB = 2**20


def _inputs(cfg: dict[str, Any], kind: str, input_bytes: int) -> tuple[int, int, int]:
    """(stored rows, input tokens, tokens per forward pass) of inputs `kind`."""
    from laminae.inputs import input_kind

    return input_kind(kind).estimate(cfg, input_bytes)


def extraction_resources(cfg: dict[str, Any], kind: str, n_sites: int, input_bytes: int = 0) -> dict[str, int]:
    """mem_mb and runtime (minutes) of the extraction of inputs `kind` capturing `n_sites` sites."""
    model = cfg["model"]
    n_params = model["n_params"] or DEFAULT_PARAMS
    width, layers = shape(cfg)
    _, total, per_forward = _inputs(cfg, kind, input_bytes)
    weights_mb = n_params * BYTES_PER_PARAM[model["dtype"]] / MB
    activations_mb = per_forward * width * max(n_sites, 1) * layers * 4 / MB
    mem_mb = 2048 + 2 * weights_mb + 2 * activations_mb
    runtime = 10 + 3 * (2 * n_params * total / 1e12) / 60
    return {"mem_mb": int(round(mem_mb, -2)) + 100, "runtime": int(runtime) + 1}


def shape(cfg: dict[str, Any]) -> tuple[int, int]:
    """(d_model, n_layers) as the config declares them, or generous defaults."""
    model = cfg["model"]
    return model["d_model"] or DEFAULT_WIDTH, model["n_layers"] or DEFAULT_LAYERS


def job_shape(experiment: Experiment, cfg: dict[str, Any], input_bytes: int = 0) -> JobShape:
    width, layers = shape(cfg)
    rows, _, _ = _inputs(cfg, experiment.inputs, input_bytes)
    return JobShape(n_layers=layers, d_model=width, n_rows=rows,
                    bytes_per_value=BYTES_PER_PARAM[cfg["extract"]["storage_dtype"]], n_sites=len(experiment.sites))


def stage_resources(stage: str, experiment: Experiment, cfg: dict[str, Any], input_bytes: int = 0) -> dict[str, int]:
    """mem_mb and runtime (minutes) of the "analysis" or "plot" job of `experiment`."""
    size = job_shape(experiment, cfg, input_bytes)
    if experiment.resources is not None:
        estimate = experiment.hook("resources")(stage, size, cfg)
    elif stage == "analysis":
        held_mb = 2 * STREAM_CHUNK_MB if experiment.streams else size.stored_mb * 8 / size.bytes_per_value
        estimate = {"mem_mb": BASE_MB + held_mb, "runtime": 5 + size.stored_mb / READ_MB_PER_S / 60}
    else:
        estimate = {"mem_mb": BASE_MB, "runtime": 5}
    return request(estimate["mem_mb"], estimate["runtime"], ANALYSIS_FLOOR if stage == "analysis" else PLOT_FLOOR)


def request(mem_mb: float, runtime: float, floor: dict[str, int]) -> dict[str, int]:
    """Round up and apply the floor."""
    return {"mem_mb": max(floor["mem_mb"], int(round(mem_mb, -2)) + 100),
            "runtime": max(floor["runtime"], int(runtime) + 1)}
