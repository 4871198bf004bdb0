"""The extraction stage: run the model over one set of inputs and stream the hooked sites of
every layer into the activation store; experiments whose reducer runs during extraction get
the same batches and keep only their results.

    >>> extract(stage, runtime, out_dir=Path(".../activations"), project_root=Path("."), registry=discover())

`stage` is a stage record from the Snakefile (`{"stage": "corpus.extract", "hash": ..., "config":
...}`): `config["inputs"]` is the input kind, `config["sites"]` the sites to store (the union of
what the experiments reading stored activations need; none when every experiment on these inputs
runs during extraction) and `config["reductions"]` the experiments to run during extraction with
their settings. `runtime` holds the unhashed settings (device, batch_size, models_dir,
compression, chunk_rows). Inputs are prepared and checked before the model is loaded, so bad
input fails in seconds; rows come out in input order whatever the batch size.

    activations/  layer_NN.h5 (when sites are stored), rows.tsv, config.yaml,
                  reductions/<experiment>/<its metrics files>
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from laminae.capture import SiteCapture, select_rows
from laminae.experiment import Experiment, Reducer, ReducerJob
from laminae.inputs import ExtractionPlan, input_kind
from laminae.models.loading import LoadedModel, load_model, open_model, resolve_device
from laminae.models.placement import placement_summary
from laminae.provenance import provenance_attrs, stage_config_record
from laminae.sites import SITES
from laminae.stages.analysis import REDUCTIONS, upstream_attrs
from laminae.stages.runner import progress_stream
from laminae.store import ActivationWriter, RowTable

log = logging.getLogger(__name__)
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def extract(stage: dict[str, Any], runtime: dict[str, Any], out_dir: Path, project_root: Path,
            registry: Mapping[str, Experiment]) -> None:
    """Run one extraction stage end to end (see module docstring)."""
    config = stage["config"]
    resolve_device(runtime["device"])  # fail on `cuda` without CUDA before loading anything
    # config and tokenizer first (seconds): bad inputs fail before the weights load
    files = open_model(config["model"], runtime["models_dir"], project_root)
    plan = input_kind(config["inputs"]).plan(config, files.tokenizer, files.dims.max_positions, project_root)
    # where the blocks run is a runtime setting, not hashed (model.device_map, model.gpus)
    model_cfg = {**config["model"], "device_map": runtime.get("device_map"), "gpus": runtime.get("gpus") or 1}
    loaded = load_model(model_cfg, runtime["device"], runtime["models_dir"], project_root, files=files)
    write_extraction(loaded, plan, stage, runtime, out_dir, registry)
    log.info("wrote %s", out_dir)


def write_extraction(loaded: LoadedModel, plan: ExtractionPlan, stage: dict[str, Any], runtime: dict[str, Any],
                     out_dir: Path, registry: Mapping[str, Experiment]) -> None:
    """The extraction with the model loaded and the inputs planned: an ActivationWriter (one
    layer file per block, provenance attributes, atomic folder; no layer file when no site is
    stored) fed by `run_plan`, the reducers of the experiments computed during extraction, their
    results, and rows.tsv."""
    config = stage["config"]
    stored = tuple(config["sites"])
    reducing = {name: registry[name] for name in config["reductions"]}
    spread = placement_summary(loaded.model)
    log.info("model %s (%s, %d layers, d_model %d) on %s; %d inputs -> %d rows; stored sites %s%s",
             loaded.info.model_id, loaded.info.family, loaded.info.n_layers, loaded.info.d_model,
             f"{loaded.info.device} (modules: {spread})" if spread else loaded.info.device,
             len(plan.sequences), plan.n_rows, ",".join(stored) or "none",
             f"; computed during extraction: {', '.join(reducing)}" if reducing else "")
    attrs = {**provenance_attrs(stage, runtime), **loaded.info.as_attrs()}
    writer = ActivationWriter(out_dir, loaded.info.n_layers, plan.n_rows, attrs,
                              storage_dtype=config["extract"]["storage_dtype"],
                              compression=runtime["compression"], chunk_rows=runtime["chunk_rows"],
                              config_text=stage_config_record(stage, runtime, model=loaded.info.to_dict()),
                              store_layers=bool(stored))
    with writer:
        reducers = [(experiment.hook("reducer")(ReducerJob(
            settings=config["reductions"][name]["settings"], rows=RowTable(plan.rows), n_layers=loaded.info.n_layers,
            widths=loaded.adapter.site_widths(loaded.model.config), model_attrs=loaded.info.as_attrs(),
            out_dir=_folder(writer.tmp_dir / REDUCTIONS / name), attrs=upstream_attrs(attrs))), experiment.sites)
            for name, experiment in reducing.items()]
        run_plan(loaded, plan, runtime["batch_size"], writer=writer, sites=stored, reducers=reducers,
                 storage_dtype=STORAGE_DTYPES[config["extract"]["storage_dtype"]])
        for reducer, _ in reducers:
            reducer.finish()
        writer.set_rows(plan.rows, plan.columns)


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_plan(loaded: LoadedModel, plan: ExtractionPlan, batch_size: int, *, writer: ActivationWriter | None = None,
             sites: Sequence[str] = (), reducers: Sequence[tuple[Reducer, Sequence[str]]] = (),
             storage_dtype: torch.dtype = torch.float32) -> None:
    """Forward `plan.sequences` in right-padded batches; write every kept row of `sites` with
    `writer`, and feed each `(reducer, its sites)` the batch's rows as (n_layers, rows, width)
    arrays. Reducers see float32 (exact for any storage dtype); the writer alone may store
    float16."""
    reduced = {site for _, wanted in reducers for site in wanted}
    captured = tuple(site for site in SITES if site in sites or site in reduced)
    dtype = torch.float32 if reducers else storage_dtype
    with closing(iter_batches(loaded, plan, captured, batch_size, dtype)) as batches:  # hooks off on error
        for row, batch in batches:
            if writer is not None and sites:
                writer.write(row, {site: batch[site] for site in sites})
            if reducers:
                chunk = {site: np.stack(batch[site]) for site in reduced}   # (n_layers, rows, width)
                for reducer, wanted in reducers:
                    reducer.update(row, {site: chunk[site] for site in wanted})
                del chunk
            del batch  # before the next forward


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@torch.inference_mode()
def iter_batches(loaded: LoadedModel, plan: ExtractionPlan, sites: Sequence[str], batch_size: int,
                 dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, dict[str, list[np.ndarray]]]]:
    """Forward `plan.sequences` in right-padded batches; after each, yield `(first row, {site:
    [(rows, width) array per layer]})` for every site in `sites`, in `dtype`, on the CPU, valid
    until the next batch (consume it before asking for the next). Nothing is kept between
    batches, so memory does not grow with the number of inputs."""
    device = loaded.info.device
    pad_id = loaded.tokenizer.pad_token_id
    row = 0
    # reuse_buffers: kept rows go to one buffer per site, overwritten by every batch (hence the
    # views in each yielded batch are valid until the next one), so memory stays flat
    with SiteCapture(loaded.model, loaded.adapter, sites, reuse_buffers=True) as capture:
        for start in tqdm(range(0, len(plan.sequences), batch_size), desc="extract", unit="batch",
                          total=-(-len(plan.sequences) // batch_size), mininterval=1.0, file=progress_stream()):
            sequences = plan.sequences[start : start + batch_size]
            keep = plan.keep[start : start + batch_size]
            input_ids, attention_mask = pad_right(sequences, pad_id, device)
            capture.select = row_selector(keep, plan.average, device)
            loaded.model(input_ids=input_ids, attention_mask=attention_mask)
            captured = capture.pop()  # {site: [ (rows, width) per layer ]}
            # per layer, not stacked: stacking would copy every activation of the batch once more;
            # float32 on the CPU: numpy views of the capture buffers, no copy either
            batch = {site: [layer.to(dtype).cpu().numpy() for layer in layers]
                     for site, layers in captured.items()}
            del captured
            rows = len(next(iter(batch.values()))[0])
            yield row, batch
            del batch  # before the next forward: one batch of activations alive at a time
            row += rows


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `input_ids` and `attention_mask`, both (batch, max_len). Right padding keeps
    every real token's position ids unchanged, so no position_ids fix is needed."""
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        input_ids[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[i, : len(sequence)] = 1
    return input_ids.to(device), attention_mask.to(device)


def row_selector(keep: Sequence[Sequence[int]], average: bool, device: torch.device):
    """A function (batch, seq, width) -> (rows, width) picking the kept positions, in order;
    with `average`, each input's kept positions are averaged into one row."""
    batch_index = torch.tensor([b for b, positions in enumerate(keep) for _ in positions], device=device)
    position_index = torch.tensor([p for positions in keep for p in positions], device=device)
    gather = select_rows(batch_index, position_index)  # (n_kept, width)
    if not average or all(len(positions) == 1 for positions in keep):
        return gather
    weights = torch.zeros(len(keep), len(position_index), device=device)  # (rows, n_kept)
    weights[batch_index, torch.arange(len(position_index), device=device)] = torch.tensor(
        [1.0 / len(positions) for positions in keep for _ in positions], device=device)
    return lambda act: weights.to(device=act.device, dtype=act.dtype) @ gather(act)  # any block's device
