"""The forward loop of an extraction: a plan's sequences through the model in right-padded
batches, every captured layer's rows to the activation writer (in a writer thread, overlapped
with the forward) and to the reducers of experiments computed during extraction.

    >>> run_plan(loaded, plan, batch_size=8, writer=writer, sites=("q", "k", "v"))
    >>> for row, batch in iter_batches(loaded, plan, ("attn_out",), batch_size=8):
    ...     batch["attn_out"][layer]           # (rows, width) numpy, valid until the next batch

Hooks: laminae.capture.hooks; host transport: laminae.capture.staging. Site `pattern` is
padded to the plan's longest sequence (`plan_keys`), so that every batch's rows have one width;
it needs the model loaded with eager attention (`load_model(..., patterns=True)`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import closing
from functools import partial
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from laminae.capture.hooks import SiteCapture
from laminae.capture.selectors import row_selector
from laminae.capture.staging import HostStaging, StagedLayer, to_device
from laminae.experiment import Reducer
from laminae.inputs import ExtractionPlan
from laminae.models.loading import LoadedModel
from laminae.progress import progress_stream
from laminae.sites import SITES
from laminae.store import ActivationWriter, BackgroundWriter

if TYPE_CHECKING:   # annotations only: fidelity builds its batch with this module's pad_right
    from laminae.capture.fidelity import FirstBatchCheck


def overlap_writes(setting: bool | str, device: str) -> bool:
    """`extract.overlap`: true or false as set; `auto` overlaps the writes with the forward unless
    the model runs on the CPU and torch's intra-op threads already take every core this process
    may use (the writer thread would then slow the forward by as much as it hides).

        >>> overlap_writes("auto", "cuda:0")
        True
    """
    if setting != "auto":
        return bool(setting)
    if torch.device(device).type != "cpu":
        return True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return torch.get_num_threads() < cores


#: Host buffers between the forward pass and the writer thread: a ring of as many layers' kept
#: rows as fit in OVERLAP_BYTES (estimated from the first batch), at least OVERLAP_DEPTH, at most
#: every layer; the forward waits when the writer is that far behind.
OVERLAP_DEPTH = 4
OVERLAP_BYTES = 256 * 2**20
#: The writer thread gets a job per this many bytes of rows (and at the end of every pass), not
#: one per layer: waking a thread costs about as much as writing a small layer.
JOB_BYTES = 8 * 2**20


def run_plan(loaded: LoadedModel, plan: ExtractionPlan, batch_size: int, *, writer: ActivationWriter | None = None,
             sites: Sequence[str] = (), reducers: Sequence[tuple[Reducer, Sequence[str]]] = (),
             storage_dtype: torch.dtype = torch.float32, overlap: bool = True,
             check: FirstBatchCheck | None = None) -> None:
    """Forward `plan.sequences` in right-padded batches; write every kept row of `sites` with
    `writer`, and feed each `(reducer, its sites)` the batch's rows as (n_layers, rows, width)
    arrays. Reducers see float32 (exact for any storage dtype); the writer alone may store
    float16.

    With `overlap` (the default), each layer's rows go to the writer as soon as its block has
    run: copied to host buffers (`HostStaging`; asynchronously on a GPU) and written by one
    writer thread (`BackgroundWriter`) while the next blocks and batches compute, through a ring
    of host buffers (`_ring_depth` layers, ~OVERLAP_BYTES; all layers when reducers read whole
    batches), so memory stays flat; the thread gets layers in jobs of ~JOB_BYTES.
    Reducers run in this thread after each batch, on the same host buffers. An error in the
    writer thread is raised here, and no write runs after this returns. Without `overlap`, each
    batch is written in this thread after its forward pass (`iter_batches`): the same values, in
    the same files. A `check` (laminae.capture.fidelity) makes the first batch's forward pass."""
    reduced = {site for _, wanted in reducers for site in wanted}
    stored = tuple(sites) if writer is not None else ()
    captured = tuple(site for site in SITES if site in stored or site in reduced)
    dtype = torch.float32 if reducers else storage_dtype
    if not captured:
        return
    if not overlap or not stored:
        with closing(iter_batches(loaded, plan, captured, batch_size, dtype, check)) as batches:  # hooks off on error
            for row, batch in batches:
                if stored:
                    writer.write(row, {site: batch[site] for site in stored})
                _reduce(reducers, reduced, row, batch)
                del batch  # before the next forward
        return

    n_layers = len(loaded.adapter.blocks(loaded.model))
    depth = n_layers if reducers else _ring_depth(loaded, plan, captured, batch_size, dtype, n_layers)
    with BackgroundWriter() as background:
        layers: list[StagedLayer] = []   # this batch's, for the reducers
        pending: list[StagedLayer] = []  # staged, not yet handed to the writer
        most = max(1, depth // 2)        # never hold more unsubmitted: the rest of the ring keeps moving

        def on_layer(staged: StagedLayer) -> None:  # in a hook, as the block ends
            pending.append(staged)
            if reducers:
                layers.append(staged)
            if (staged.slot == n_layers - 1 or len(pending) >= most
                    or sum(_nbytes(s) for s in pending) >= JOB_BYTES):
                job = tuple(pending)
                pending.clear()
                background.submit(partial(_write_layers, writer, stored, job),
                                  done=partial(_release, staging, job))

        staging = HostStaging(captured, depth=depth, dtype=dtype, on_layer=on_layer,
                              consumers=2 if reducers else 1, check=background.check)
        with closing(_forward_batches(loaded, plan, captured, batch_size, staging, check)) as batches:  # hooks off on error
            for row, _ in batches:
                if not reducers:
                    continue
                _reduce(reducers, reduced, row, _assemble(layers, captured))
                _release(staging, layers)
                layers.clear()


def plan_keys(plan: ExtractionPlan, sites: Sequence[str] = ("pattern",)) -> int | None:
    """The keys of a `pattern` row of `plan`: its longest sequence (a corpus shard's: the whole
    corpus's longest window, `plan.max_length`); None when `sites` has no `pattern` (the plan
    is then not read: a corpus's windows come from disk).

        >>> plan_keys(ExtractionPlan([[5, 6, 7], [8]], [[2], [0]], False, [], ()))
        3
    """
    if "pattern" not in sites:
        return None
    if plan.max_length is not None:
        return plan.max_length
    return max((len(sequence) for sequence in plan.sequences), default=1)


def _ring_depth(loaded: LoadedModel, plan: ExtractionPlan, sites: Sequence[str], batch_size: int,
                dtype: torch.dtype, n_layers: int) -> int:
    """Layers in the host ring: OVERLAP_BYTES over one layer's kept rows in the first batch."""
    keep = plan.keep[:batch_size]
    rows = len(keep) if plan.average else sum(len(positions) for positions in keep)
    widths = loaded.adapter.site_widths(loaded.model.config, plan_keys(plan, sites))
    layer_bytes = max(1, rows) * sum(widths[site] for site in sites) * dtype.itemsize
    return int(min(n_layers, max(OVERLAP_DEPTH, OVERLAP_BYTES // layer_bytes)))


def _nbytes(staged: StagedLayer) -> int:
    return sum(array.nbytes for array in staged.arrays.values())


def _release(staging: HostStaging, layers: Sequence[StagedLayer]) -> None:
    for staged in layers:
        staging.release(staged)


def _write_layers(writer: ActivationWriter, sites: Sequence[str], layers: Sequence[StagedLayer]) -> None:
    """In the writer thread: some layers' rows of `sites`, once their copies to the host are done."""
    for staged in layers:
        _write_layer(writer, sites, staged)


def _write_layer(writer: ActivationWriter, sites: Sequence[str], staged: StagedLayer) -> None:
    """In the writer thread: one layer's rows of `sites`, once their copy to the host is done."""
    staged.wait()
    writer.write_layer(staged.slot, staged.row, {site: staged.arrays[site] for site in sites})


def _reduce(reducers: Sequence[tuple[Reducer, Sequence[str]]], reduced: set[str], row: int,
            batch: Mapping[str, Sequence[np.ndarray]]) -> None:
    if not reducers:
        return
    chunk = {site: np.stack(batch[site]) for site in reduced}   # (n_layers, rows, width)
    for reducer, wanted in reducers:
        reducer.update(row, {site: chunk[site] for site in wanted})


def _assemble(layers: Sequence[StagedLayer], sites: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """{site: [(rows, width) per layer]} of one pass's staged layers, once their copies are done."""
    ordered = sorted(layers, key=lambda staged: staged.slot)
    for staged in ordered:
        staged.wait()
    return {site: [staged.arrays[site] for staged in ordered] for site in sites}


def iter_batches(loaded: LoadedModel, plan: ExtractionPlan, sites: Sequence[str], batch_size: int,
                 dtype: torch.dtype = torch.float32, check: FirstBatchCheck | None = None
                 ) -> Iterator[tuple[int, dict[str, list[np.ndarray]]]]:
    """Forward `plan.sequences` in right-padded batches; after each, yield `(first row, {site:
    [(rows, width) array per layer]})` for every site in `sites`, in `dtype`, on the CPU, valid
    until the next batch (consume it before asking for the next). Nothing is kept between
    batches, so memory does not grow with the number of inputs."""
    layers: list[StagedLayer] = []
    # one host buffer per layer and site (HostStaging with depth = every layer), overwritten by
    # every batch: hence "valid until the next batch"
    staging = HostStaging(sites, depth=len(loaded.adapter.blocks(loaded.model)), dtype=dtype,
                          on_layer=layers.append)
    with closing(_forward_batches(loaded, plan, sites, batch_size, staging, check)) as batches:  # hooks off when closed
        for row, _ in batches:
            batch = _assemble(layers, sites)
            yield row, batch
            del batch  # before the next forward: one batch of activations alive at a time
            _release(staging, layers)
            layers.clear()


@torch.inference_mode()
def _forward_batches(loaded: LoadedModel, plan: ExtractionPlan, sites: Sequence[str], batch_size: int,
                     staging: HostStaging, check: FirstBatchCheck | None = None) -> Iterator[tuple[int, int]]:
    """Forward `plan.sequences` in right-padded batches with `staging` as the capture's sink;
    after each, yield `(first row, rows)` of the batch. The plan is read only through
    `sequences`, `keep` and `average`; nothing here waits for the device (but the first batch's
    `check`, which compares what it captured once its forward is done)."""
    device = loaded.info.device
    pad_id = loaded.tokenizer.pad_token_id
    row = 0
    with SiteCapture(loaded.model, loaded.adapter, sites, sink=staging, n_keys=plan_keys(plan, sites)) as capture:
        for start in tqdm(range(0, len(plan.sequences), batch_size), desc="extract", unit="batch",
                          total=-(-len(plan.sequences) // batch_size), mininterval=1.0, file=progress_stream()):
            sequences = plan.sequences[start : start + batch_size]
            keep = plan.keep[start : start + batch_size]
            input_ids, attention_mask = pad_right(sequences, pad_id, device)
            capture.select = row_selector(keep, plan.average, device, seq=input_ids.shape[1])
            staging.row = row
            if check is not None and start == 0:
                check.forward(sequences, input_ids, attention_mask)   # the model, with the check's hooks too
            else:
                loaded.model(input_ids=input_ids, attention_mask=attention_mask)
            rows = len(keep) if plan.average else sum(len(positions) for positions in keep)
            yield row, rows
            row += rows


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded `input_ids` and `attention_mask`, both (batch, max_len). Right padding keeps
    every real token's position ids unchanged, so no position_ids fix is needed. Built on the
    host and copied to a GPU without blocking (`to_device`)."""
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, sequence in enumerate(sequences):
        input_ids[i, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[i, : len(sequence)] = 1
    return to_device(input_ids, device), to_device(attention_mask, device)
