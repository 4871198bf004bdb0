"""The extraction stage: run the model over one set of inputs and stream the hooked sites of
every layer into the activation store; experiments whose reducer runs during extraction get
the same batches and keep only their results.

    >>> extract(record, runtime, out_dir=Path(".../activations"), project_root=Path("."), registry=discover())

`record` (`ExtractionRecord`, or the `{"stage", "hash", "config"}` dict the Snakefile passes)
names the input kind, the sites to store (the union of what the experiments reading stored
activations need; none when every experiment on these inputs runs during extraction) and the
experiments to run during extraction with their settings (`reductions`). `runtime` holds the
unhashed settings (device, batch_size, models_dir, compression, chunk_rows, overlap). Inputs are
prepared and checked before the model is loaded, so bad input fails in seconds; rows come out
in input order whatever the batch size. The forward loop itself is laminae.capture.forward.

    activations/  layer_NN.h5 (when sites are stored), rows.tsv, config.yaml, fidelity.tsv (the
                  first batch's captured sites checked against the model: laminae.capture.fidelity),
                  reductions/<experiment>/<its metrics files>
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from laminae.capture.fidelity import FirstBatchCheck, fidelity_attrs, write_fidelity
from laminae.atomic import atomic_dir
from laminae.capture.forward import overlap_writes, plan_keys, run_plan
from laminae.config.reuse import reads_pattern
from laminae.disk import require_store_space
from laminae.errors import ConfigError
from laminae.experiment import SHARD_METHODS, Experiment, ReducerJob
from laminae.inputs import ExtractionPlan, input_kind
from laminae.models.loading import LoadedModel, load_model, open_model, resolve_device
from laminae.models.placement import placement_summary
from laminae.models.readout import has_readout
from laminae.provenance import dump_yaml, provenance_attrs, read_stage_record, stage_config_record, upstream_attrs
from laminae.shards import SHARD_RECORD, Shard, shard_record
from laminae.stages.records import ExtractionRecord, Runtime, model_source
from laminae.store import (CONFIG_FILE, FIDELITY_FILE, REDUCTIONS, ROWS_FILE, ActivationStore, ActivationWriter,
                           copy_reductions, link_stored)

log = logging.getLogger(__name__)
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def extract(record: ExtractionRecord | Mapping[str, Any], runtime: Runtime | Mapping[str, Any], out_dir: Path,
            project_root: Path, registry: Mapping[str, Experiment], shard: Shard | None = None) -> None:
    """Run one extraction stage end to end (see module docstring), or one `shard` of it
    (laminae.shards: its windows only, its reducers' partial states)."""
    record, runtime = ExtractionRecord.parse(record), Runtime.parse(runtime)
    if not record.runs_model:   # a composite of stores made before: nothing to compute
        return link_only(record, runtime, out_dir)
    resolve_device(runtime.device)  # fail on `cuda` without CUDA before loading anything
    # config and tokenizer first (seconds): bad inputs fail before the weights load
    files = open_model(record.model, runtime.models_dir, project_root)
    plan = input_kind(record.inputs).plan(record.config, files.tokenizer, files.dims.max_positions, project_root,
                                          shard=shard)
    captured = captured_sites(record, registry)
    widths = files.adapter.site_widths(files.config, plan_keys(plan, captured))
    require_store_space(out_dir, files.dims.n_layers, plan.n_rows, widths, record.new_sites, record.storage_dtype,
                        runtime.compression)  # before the weights load
    # where the blocks run is a runtime setting, not hashed (model.device_map, model.gpus)
    model_cfg = {**record.model, "device_map": runtime.device_map, "gpus": runtime.gpus or 1}
    # eager attention (slower) only when attention patterns are captured: sdpa returns none. A
    # composite's own pass runs with the kernel of the store it completes (laminae.config.reuse).
    loaded = load_model(model_cfg, runtime.device, runtime.models_dir, project_root, files=files,
                        patterns="pattern" in captured or reads_pattern(record.config, registry))
    write_extraction(loaded, plan, record, runtime, out_dir, registry, shard=shard, project_root=project_root)
    log.info("wrote %s", out_dir)


def write_extraction(loaded: LoadedModel, plan: ExtractionPlan, record: ExtractionRecord, runtime: Runtime,
                     out_dir: Path, registry: Mapping[str, Experiment], shard: Shard | None = None,
                     project_root: Path | None = None) -> None:
    """The extraction with the model loaded and the inputs planned: an ActivationWriter (one
    layer file per block, provenance attributes, atomic folder; no layer file when no site is
    stored) fed by `run_plan`, the reducers of the experiments computed during extraction, their
    results, and rows.tsv. A `shard` writes its reducers' partial states (`Reducer.partial`)
    instead of their results, and shard.yaml (laminae.shards)."""
    record, runtime = ExtractionRecord.parse(record), Runtime.parse(runtime)
    stored = record.new_sites
    reducing = reductions(record, registry)
    spread = placement_summary(loaded.model)
    log.info("model %s (%s, %d layers, d_model %d) on %s; %d inputs -> %d rows; stored sites %s%s",
             loaded.info.model_id, loaded.info.family, loaded.info.n_layers, loaded.info.d_model,
             f"{loaded.info.device} (modules: {spread})" if spread else loaded.info.device,
             len(plan.sequences), plan.n_rows, ",".join(stored) or "none",
             f"; computed during extraction: {', '.join(reducing)}" if reducing else "")
    reused = {} if shard is not None else record.reused_from(out_dir)   # a shard's gather links them
    if reused:
        log.info("reused from stores made before: %s", ", ".join(f"{name} ({path.parent.name})"
                                                                  for name, path in reused.items()))
    attrs = {**provenance_attrs(record, runtime), **loaded.info.as_attrs()}
    writer = ActivationWriter(out_dir, loaded.info.n_layers, plan.n_rows, attrs, storage_dtype=record.storage_dtype,
                              compression=runtime.compression, chunk_rows=runtime.chunk_rows,
                              config_text=stage_config_record(record, runtime, model=loaded.info.to_dict()),
                              store_layers=bool(stored),
                              links={site: reused[site] for site in record.reused_sites if site in reused})
    widths = loaded.adapter.site_widths(loaded.model.config, plan_keys(plan, captured_sites(record, registry)))
    # the reducers' readout (job.readout()): on the model's device, from the same files
    model = model_source(record, runtime, project_root, device=loaded.info.device)
    # a misplaced hook stops the first batch: nothing is kept
    check = FirstBatchCheck(loaded, model.readout if has_readout(loaded.info.family) else None)
    with writer:
        reducers = [(experiment.hook("reducer")(ReducerJob(
            settings=record.reductions[name].settings, rows=plan.rows, n_layers=loaded.info.n_layers,
            widths=widths, model_attrs=loaded.info.as_attrs(),
            out_dir=_folder(writer.tmp_dir / REDUCTIONS / name), attrs=upstream_attrs(attrs), model=model)),
            experiment.sites)
            for name, experiment in reducing.items()]
        if shard is not None:
            for (reducer, _), name in zip(reducers, reducing):
                if not all(callable(getattr(reducer, method, None)) for method in SHARD_METHODS):
                    raise ConfigError("corpus.shards", f"1 while {name}.during_extraction is true (its reducer offers "
                                                       "no partial/absorb to merge shards)", shard.count)
        overlap = overlap_writes(runtime.overlap, loaded.info.device)
        log.info("writes %s", "overlapped with the forward (writer thread)" if overlap else "after each batch")
        run_plan(loaded, plan, runtime.batch_size, writer=writer, sites=stored, reducers=reducers,
                 storage_dtype=STORAGE_DTYPES[record.storage_dtype], overlap=overlap, check=check)
        check.finish()
        if check.checks:
            write_fidelity(check.checks, writer.tmp_dir / FIDELITY_FILE)
            writer.add_attrs(fidelity_attrs(check.checks, check.left_out))
        for reducer, _ in reducers:
            reducer.partial() if shard is not None else reducer.finish()
        writer.set_rows(plan.rows, plan.columns, first_row=plan.first_row)
        copy_reductions(writer.tmp_dir, {name: reused[name] for name in record.reused_reductions if name in reused})
        if shard is not None:
            (writer.tmp_dir / SHARD_RECORD).write_text(dump_yaml(shard_record(
                shard, plan.first_row, plan.n_rows, loaded.info.n_layers, widths, loaded.info.as_attrs())),
                encoding="utf-8")


def link_only(record: ExtractionRecord, runtime: Runtime, out_dir: Path) -> None:
    """A composite store that computes nothing (every site and reduction it holds was stored
    before): rows.tsv and fidelity.tsv from its first source store, whose forward pass over the
    same inputs they describe, its sites linked, its reductions copied; no model is loaded."""
    sources = record.reused_from(out_dir)
    first = sources[min(record.reused_sites or sources)]
    with atomic_dir(out_dir) as tmp:
        shutil.copyfile(first / ROWS_FILE, tmp / ROWS_FILE)
        if (first / FIDELITY_FILE).is_file():
            shutil.copyfile(first / FIDELITY_FILE, tmp / FIDELITY_FILE)
        if record.reused_sites:
            store = ActivationStore(first)
            attrs = {**{k: v for k, v in store.attrs.items() if k != "shards"}, **provenance_attrs(record, runtime)}
            link_stored(tmp, {site: sources[site] for site in record.reused_sites}, store.n_layers, store.n_rows, attrs)
        copy_reductions(tmp, {name: sources[name] for name in record.reused_reductions})
        loaded = read_stage_record(first / CONFIG_FILE).get("loaded_model")
        (tmp / CONFIG_FILE).write_text(stage_config_record(record, runtime, model=loaded), encoding="utf-8")
    log.info("linked every site and reduction from stores made before (%s); no model loaded",
             ", ".join(sorted({path.parent.name for path in sources.values()})))


def reductions(record: ExtractionRecord, registry: Mapping[str, Experiment]) -> dict[str, Experiment]:
    """The experiments the extraction computes during its pass (not those it copies), as their
    settings run them."""
    return {name: registry[name].for_config({name: reduction.settings})
            for name, reduction in record.new_reductions.items()}


def captured_sites(record: ExtractionRecord, registry: Mapping[str, Experiment]) -> set[str]:
    """The sites an extraction captures: those it stores and those its reducers read."""
    return {*record.new_sites, *(site for experiment in reductions(record, registry).values()
                                 for site in experiment.sites)}


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
