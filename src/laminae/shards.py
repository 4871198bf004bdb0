"""Sharded extraction: a corpus's windows split over several extraction jobs (`corpus.shards`),
then gathered into one store that reads like an unsharded one.

    >>> shard_windows(n_inputs=1000, shard=Shard(1, 4, batch_size=8))     # windows 248:504
    (248, 504)
    >>> shard_name(Shard(1, 4, 8))                                         # its folder
    'shard-1-of-4-b8'

Planning: the windows are cut at multiples of `batch_size` windows, batches dealt out as evenly
as the count allows, so every shard forwards exactly the batches an unsharded run forwards
(same windows, same padding): the stored values are identical, not merely close. The folder
name holds the count and the batch size, so shards of another split are never mixed.

Layout of an extraction with N shards:

    <label>-<hash>/shards/shard-K-of-N-bB/   one extraction job each: layer_NN.h5 of its rows,
                                             rows.tsv (global row and window numbers),
                                             config.yaml, shard.yaml, reductions/<exp>/ (the
                                             partial state of each reducer run during extraction)
    <label>-<hash>/activations/              the gather (laminae.stages.gather): layer_NN.h5 of HDF5 virtual datasets
                                             over the shards' files (relative paths), rows.tsv
                                             (the shards' concatenated), config.yaml, and
                                             reductions/<exp>/ merged: the reducer built over
                                             every row `absorb`s each shard's partial, in
                                             order, then `finish`es (laminae.experiment.Reducer)

A shard that finished is kept when another fails (each is its own Snakemake job and folder);
a rerun redoes only the missing ones. The gather checks that the shards are the N of one
split of this stage, contiguous and complete, before writing anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHARDS_FOLDER = "shards"
SHARD_RECORD = "shard.yaml"
_NAME = re.compile(r"shard-(\d+)-of-(\d+)-b(\d+)")
NAME_PATTERN = r"shard-[0-9]+-of-[0-9]+-b[0-9]+"     # the Snakefile's wildcard constraint


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` of an extraction's inputs, cut at multiples of `batch_size`
    inputs so that each shard forwards exactly the batches an unsharded run forwards."""

    index: int
    count: int
    batch_size: int


def shard_windows(n_inputs: int, shard: Shard) -> tuple[int, int]:
    """(first, stop) input of `shard`: batches of `shard.batch_size` inputs dealt out in order,
    shard k getting batches floor(k B / N) : floor((k + 1) B / N) of the B batches."""
    if not 0 <= shard.index < shard.count:
        raise ValueError(f"shard {shard.index} of {shard.count}")
    batches = math.ceil(n_inputs / shard.batch_size)
    first = shard.index * batches // shard.count
    stop = (shard.index + 1) * batches // shard.count
    return min(first * shard.batch_size, n_inputs), min(stop * shard.batch_size, n_inputs)


def shard_name(shard: Shard) -> str:
    """The folder of a shard: `shard-<index>-of-<count>-b<batch size>`."""
    return f"shard-{shard.index}-of-{shard.count}-b{shard.batch_size}"


def parse_shard_name(name: str) -> Shard:
    """`shard_name`'s inverse (ValueError for anything else)."""
    match = _NAME.fullmatch(Path(name).name)
    if match is None:
        raise ValueError(f"not a shard folder name: {name!r}")
    return Shard(int(match.group(1)), int(match.group(2)), int(match.group(3)))


def shard_record(shard: Shard, first_row: int, n_rows: int, n_layers: int, widths: Mapping[str, int],
                 model_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What shard.yaml holds: which part of the inputs a shard holds, and what the gather's
    reducers need (the model's layers, site widths and attributes) without loading the model."""
    return {"index": shard.index, "count": shard.count, "batch_size": shard.batch_size, "first_row": first_row,
            "n_rows": n_rows, "n_layers": n_layers, "widths": dict(widths), "model_attrs": dict(model_attrs)}
