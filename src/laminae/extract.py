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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from laminae import corpus, stimuli
from laminae.capture import SiteCapture, select_rows
from laminae.config.validate import corpus_documents
from laminae.models.loading import LoadedModel, load_model, open_model, resolve_device
from laminae.provenance import provenance_attrs, stage_config_record
from laminae.store import ActivationWriter

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
    writer = ActivationWriter(out_dir, loaded.info.n_layers, plan.n_rows, attrs,
                              storage_dtype=config["extract"]["storage_dtype"],
                              compression=runtime["compression"], chunk_rows=runtime["chunk_rows"],
                              config_text=stage_config_record(stage, runtime))
    with writer:
        run_plan(loaded, plan, writer, runtime["batch_size"], STORAGE_DTYPES[config["extract"]["storage_dtype"]])
        writer.set_rows(plan.rows, plan.columns)
    log.info("wrote %s", out_dir)


@torch.inference_mode()
def run_plan(loaded: LoadedModel, plan: ExtractionPlan, writer: ActivationWriter, batch_size: int,
             storage_dtype: torch.dtype = torch.float32) -> None:
    """Forward `plan.sequences` in right-padded batches; write every kept row of every site."""
    device = loaded.info.device
    pad_id = loaded.tokenizer.pad_token_id
    row = 0
    with SiteCapture(loaded.model, loaded.adapter, plan.sites) as capture:
        for start in tqdm(range(0, len(plan.sequences), batch_size), desc="extract", unit="batch",
                          total=-(-len(plan.sequences) // batch_size), mininterval=1.0):
            sequences = plan.sequences[start : start + batch_size]
            keep = plan.keep[start : start + batch_size]
            input_ids, attention_mask = pad_right(sequences, pad_id, device)
            capture.select = row_selector(keep, plan.average, device)
            loaded.model(input_ids=input_ids, attention_mask=attention_mask)
            captured = capture.pop()  # {site: [ (rows, width) per layer ]}
            batch = {site: torch.stack(layers).to(storage_dtype).cpu().numpy() for site, layers in captured.items()}
            writer.write(row, batch)
            row += next(iter(batch.values())).shape[1]


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
