"""The extraction stage: run the model over the inputs of one experiment and stream the hooked
sites of every layer into the activation store.

    >>> extract(stage, runtime, out_dir=Path(".../activations"), project_root=Path("."))

`stage` is a stage record from the Snakefile (`{"stage": "qkv.extract", "hash": ..., "config":
...}`), `runtime` the unhashed settings (device, batch_size, models_dir, compression,
chunk_rows). Inputs are prepared and checked before the model is loaded, so bad input fails
in seconds; rows come out in input order whatever the batch size.
"""

from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from laminae import corpus, stimuli
from laminae.capture import SiteCapture, select_rows
from laminae.config.validate import corpus_documents
from laminae.models.loading import LoadedModel, load_model, open_model, resolve_device
from laminae.stage_runner import progress_stream
from laminae.provenance import atomic_dir, provenance_attrs, stage_config_record
from laminae.store import ROWS_FILE, ActivationWriter, write_tsv

log = logging.getLogger(__name__)
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class ExtractionPlan:
    """What to feed the model and which positions become stored rows.

    Input i yields one row per position in `keep[i]`, or, when `average`, one row holding the
    mean over them (target_mean)."""

    sequences: list[list[int]]
    keep: list[list[int]]
    average: bool
    rows: list[dict[str, Any]]
    columns: tuple[str, ...]
    sites: tuple[str, ...]

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def plan_stimuli(config: dict[str, Any], tokenizer) -> ExtractionPlan:
    items = stimuli.build_stimuli(config["stimuli"]["categories"], config["template"]["text"])
    position = config["extract"]["position"]
    encoded = stimuli.encode_stimuli(items, tokenizer, position)
    return ExtractionPlan(
        sequences=[item.input_ids for item in encoded],
        keep=[item.positions for item in encoded],
        average=position == "target_mean",
        rows=stimuli.stimulus_rows(encoded, tokenizer),
        columns=stimuli.ROW_COLUMNS,
        sites=tuple(config["extract"]["sites"]["qkv"]),
    )


def plan_corpus(config: dict[str, Any], tokenizer, max_positions: int, project_root: Path) -> ExtractionPlan:
    documents = corpus_documents(config["corpus"]["path"], project_root)
    window = corpus.window_length(config["corpus"]["window_tokens"], max_positions)
    windows = corpus.corpus_windows(documents, tokenizer, window, config["corpus"]["windowing"], project_root.resolve())
    return ExtractionPlan(
        sequences=[w.input_ids for w in windows],
        keep=[list(range(len(w.input_ids))) for w in windows],
        average=False,
        rows=corpus.window_rows(windows, tokenizer),
        columns=corpus.ROW_COLUMNS,
        sites=tuple(config["extract"]["sites"]["adjustments"]),
    )


def extract(stage: dict[str, Any], runtime: dict[str, Any], out_dir: Path, project_root: Path) -> None:
    """Run one extraction stage end to end (see module docstring)."""
    config = stage["config"]
    resolve_device(runtime["device"])  # fail on `cuda` without CUDA before loading anything
    # config and tokenizer first (seconds): bad inputs fail before the weights load
    files = open_model(config["model"], runtime["models_dir"], project_root)
    if stage["stage"] == "qkv.extract":
        plan = plan_stimuli(config, files.tokenizer)
    else:
        plan = plan_corpus(config, files.tokenizer, files.dims.max_positions, project_root)
    loaded = load_model(config["model"], runtime["device"], runtime["models_dir"], project_root, files=files)
    log.info("model %s (%s, %d layers, d_model %d) on %s; %d inputs -> %d rows; sites %s",
             loaded.info.model_id, loaded.info.family, loaded.info.n_layers, loaded.info.d_model,
             loaded.info.device, len(plan.sequences), plan.n_rows, ",".join(plan.sites))
    attrs = {**provenance_attrs(stage, runtime), **loaded.info.as_attrs()}
    if stage["stage"] == "adjustments.extract" and config.get("adjustments", {}).get("during_extraction"):
        adjustments_during_extraction(loaded, plan, stage, runtime, attrs, out_dir)
        log.info("wrote %s", out_dir)
        return
    writer = ActivationWriter(out_dir, loaded.info.n_layers, plan.n_rows, attrs,
                              storage_dtype=config["extract"]["storage_dtype"],
                              compression=runtime["compression"], chunk_rows=runtime["chunk_rows"],
                              config_text=stage_config_record(stage, runtime))
    with writer:
        run_plan(loaded, plan, writer, runtime["batch_size"], STORAGE_DTYPES[config["extract"]["storage_dtype"]])
        writer.set_rows(plan.rows, plan.columns)
    log.info("wrote %s", out_dir)


def run_plan(loaded: LoadedModel, plan: ExtractionPlan, writer: ActivationWriter, batch_size: int,
             storage_dtype: torch.dtype = torch.float32) -> None:
    """Forward `plan.sequences` in right-padded batches; write every kept row of every site."""
    with closing(iter_batches(loaded, plan, batch_size, storage_dtype)) as batches:  # hooks off on error
        for row, batch in batches:
            writer.write(row, batch)
            del batch  # before the next forward


@torch.inference_mode()
def iter_batches(loaded: LoadedModel, plan: ExtractionPlan, batch_size: int,
                 storage_dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, dict[str, list[np.ndarray]]]]:
    """Forward `plan.sequences` in right-padded batches; after each, yield `(first row, {site:
    [(rows, width) array per layer]})`, in `storage_dtype`, on the CPU, valid until the next
    batch (consume it before asking for the next). Nothing is kept between batches, so memory
    does not grow with the number of inputs."""
    device = loaded.info.device
    pad_id = loaded.tokenizer.pad_token_id
    row = 0
    # reuse_buffers: kept rows go to one buffer per site, overwritten by every batch (hence the
    # views in each yielded batch are valid until the next one), so memory stays flat
    with SiteCapture(loaded.model, loaded.adapter, plan.sites, reuse_buffers=True) as capture:
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
            batch = {site: [layer.to(storage_dtype).cpu().numpy() for layer in layers]
                     for site, layers in captured.items()}
            del captured
            rows = len(next(iter(batch.values()))[0])
            yield row, batch
            del batch  # before the next forward: one batch of activations alive at a time
            row += rows


def adjustments_during_extraction(loaded: LoadedModel, plan: ExtractionPlan, stage: dict[str, Any],
                                  runtime: dict[str, Any], attrs: dict[str, Any], out_dir: Path) -> None:
    """`adjustments.during_extraction`: feed every batch's attn_out and mlp_out (and resid_pre,
    resid_post when in `extract.sites.adjustments`) straight into the experiment-2 computation
    (`laminae.analysis.adjustments.write_adjustment_metrics`, the code the analysis stage runs on
    a store) and keep only its results: `out_dir` gets adjustment_cosine.h5 (per token and layer,
    float64), adjustments.tsv, rows.tsv and config.yaml, written atomically, and no layer files.
    The activations are used in float32 whatever `extract.storage_dtype` says."""
    from laminae.analysis.adjustments import (ADJUSTMENT_SITES, COSINE_DEFINITION, RESIDUAL_SITES,
                                              first_token_mask, write_adjustment_metrics)

    settings = stage["config"]["adjustments"]
    used = tuple(site for site in plan.sites if site in (*ADJUSTMENT_SITES, *RESIDUAL_SITES))
    if used != plan.sites:
        log.warning("adjustments.during_extraction: sites %s are not used and not stored",
                    ",".join(site for site in plan.sites if site not in used))
    plan = replace(plan, sites=used)
    index = {column: np.asarray([row[column] for row in plan.rows], dtype=np.int64)
             for column in ("window", "position", "token_id")}
    exclude_first = bool(settings["exclude_first_token"])
    include = first_token_mask(index["position"], exclude_first)
    attrs = {**attrs, "n_layers": loaded.info.n_layers, "n_rows": plan.n_rows, "exclude_first_token": exclude_first,
             "n_windows": int(np.unique(index["window"]).size), "cosine_definition": COSINE_DEFINITION,
             "computed_during_extraction": True}
    with closing(iter_batches(loaded, plan, runtime["batch_size"], torch.float32)) as batches, \
            atomic_dir(out_dir) as tmp:
        write_adjustment_metrics(_stacked(batches), loaded.info.n_layers, index, include, attrs, tmp, stage, runtime)
        write_tsv(tmp / ROWS_FILE, [{"row": i, **row} for i, row in enumerate(plan.rows)], ["row", *plan.columns])


def _stacked(batches: Iterator[tuple[int, dict[str, list[np.ndarray]]]]
             ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """iter_batches' per-layer lists as (n_layers, rows, width) arrays, one batch alive at a time."""
    for row, batch in batches:
        chunk = {site: np.stack(layers) for site, layers in batch.items()}
        del batch
        yield row, chunk
        del chunk


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
    return lambda act: weights.to(act.dtype) @ gather(act)
