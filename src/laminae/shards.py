"""Sharded extraction: a corpus's windows split over several extraction jobs (`corpus.shards`),
then gathered into one store that reads like an unsharded one.

    >>> shard_windows(n_inputs=1000, shard=Shard(1, 4, batch_size=8))     # windows 248:504
    (248, 504)
    >>> shard_name(Shard(1, 4, 8))                                         # its folder
    'shard-1-of-4-b8'
    >>> gather(stage, runtime, [shard_0, ..., shard_3], out_dir, registry)   # -> activations/

Planning: the windows are cut at multiples of `batch_size` windows, batches dealt out as evenly
as the count allows, so every shard forwards exactly the batches an unsharded run forwards
(same windows, same padding): the stored values are identical, not merely close. The folder
name holds the count and the batch size, so shards of another split are never mixed.

Layout of an extraction with N shards:

    <label>-<hash>/shards/shard-K-of-N-bB/   one extraction job each: layer_NN.h5 of its rows,
                                             rows.tsv (global row and window numbers),
                                             config.yaml, shard.yaml, reductions/<exp>/ (the
                                             partial state of each reducer run during extraction)
    <label>-<hash>/activations/              the gather: layer_NN.h5 of HDF5 virtual datasets
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

import logging
import math
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml

from laminae.errors import InputFileError
from laminae.experiment import Experiment, ReducerJob
from laminae.inputs import Shard
from laminae.provenance import atomic_dir, dump_yaml, provenance_attrs, stage_config_record

if TYPE_CHECKING:
    from laminae.store import RowTable

log = logging.getLogger(__name__)
CONFIG_FILE, ROWS_FILE = "config.yaml", "rows.tsv"   # laminae.store's (not imported: the DAG needs no h5py)
SHARDS_FOLDER = "shards"
SHARD_RECORD = "shard.yaml"
REDUCTIONS = "reductions"     # laminae.stages.analysis.REDUCTIONS (not imported: it pulls in the analysis stage)
_NAME = re.compile(r"shard-(\d+)-of-(\d+)-b(\d+)")
NAME_PATTERN = r"shard-[0-9]+-of-[0-9]+-b[0-9]+"     # the Snakefile's wildcard constraint


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
                 model_attrs: Mapping[str, Any]) -> str:
    """shard.yaml: which part of the inputs a shard holds, and what the gather's reducers need
    (the model's layers, site widths and attributes) without loading the model."""
    return dump_yaml({"index": shard.index, "count": shard.count, "batch_size": shard.batch_size,
                      "first_row": first_row, "n_rows": n_rows, "n_layers": n_layers, "widths": dict(widths),
                      "model_attrs": dict(model_attrs)})


# ---------------------------------------------------------------------------------- gather
def read_shards(stage: dict[str, Any], shard_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Each shard's shard.yaml, checked: this stage's hash, shards 0..N-1 of one split in
    order, rows contiguous from 0. InputFileError naming the first shard that is not."""
    records = []
    for position, folder in enumerate(shard_dirs):
        path = Path(folder) / SHARD_RECORD
        config = Path(folder) / CONFIG_FILE
        try:
            record = yaml.safe_load(path.read_text(encoding="utf-8"))
            stage_hash = yaml.safe_load(config.read_text(encoding="utf-8"))["hash"]
        except (OSError, yaml.YAMLError, TypeError, KeyError):
            raise InputFileError(folder, "is not a complete shard (shard.yaml or config.yaml missing or unreadable); "
                                         "delete it and rerun") from None
        expected_first = records[-1]["first_row"] + records[-1]["n_rows"] if records else 0
        if stage_hash != stage["hash"]:
            raise InputFileError(folder, f"holds stage {stage_hash!r}, not {stage['hash']!r}; delete it and rerun")
        if (record["index"], record["count"]) != (position, len(shard_dirs)) or record["first_row"] != expected_first:
            raise InputFileError(folder, f"is shard {record['index']} of {record['count']} from row "
                                         f"{record['first_row']}; expected shard {position} of {len(shard_dirs)} from "
                                         f"row {expected_first}: delete the shards folder and rerun")
        records.append(record)
    return records


def gather(stage: dict[str, Any], runtime: dict[str, Any], shard_dirs: Sequence[Path], out_dir: Path,
           registry: Mapping[str, Experiment]) -> None:
    """The store of an extraction from its shards, atomically (module docstring)."""
    from laminae.stages.analysis import upstream_attrs
    from laminae.store import RowTable, link_shards

    config = stage["config"]
    shard_dirs = [Path(folder) for folder in shard_dirs]
    records = read_shards(stage, shard_dirs)
    n_rows = sum(record["n_rows"] for record in records)
    first = records[0]
    with atomic_dir(Path(out_dir)) as tmp:
        layers = link_shards(tmp, shard_dirs, [record["n_rows"] for record in records], {"shards": len(shard_dirs)})
        _concatenate_rows(shard_dirs, tmp / ROWS_FILE)
        rows = RowTable.from_tsv(tmp / ROWS_FILE)
        if len(rows) != n_rows:
            raise InputFileError(tmp / ROWS_FILE, f"has {len(rows)} rows; the shards declare {n_rows}")
        loaded = yaml.safe_load((shard_dirs[0] / CONFIG_FILE).read_text(encoding="utf-8")).get("loaded_model")
        (tmp / CONFIG_FILE).write_text(stage_config_record(stage, runtime, model=loaded), encoding="utf-8")
        attrs = {**provenance_attrs(stage, runtime), **first["model_attrs"]}
        for name in config["reductions"]:
            _merge_reduction(registry[name], config["reductions"][name]["settings"], rows, first, shard_dirs,
                             tmp / REDUCTIONS / name, upstream_attrs(attrs), [r["first_row"] for r in records])
        log.info("gathered %d shards: %d rows, %d layer files of virtual datasets%s", len(shard_dirs), n_rows,
                 len(layers), f"; reductions merged: {', '.join(config['reductions'])}" if config["reductions"] else "")


def _concatenate_rows(shard_dirs: Sequence[Path], target: Path) -> None:
    """The shards' rows.tsv one after another, the header once (they number rows globally)."""
    with open(target, "w", encoding="utf-8", newline="") as out:
        for index, folder in enumerate(shard_dirs):
            with open(folder / ROWS_FILE, encoding="utf-8", newline="") as handle:
                header = handle.readline()
                if index == 0:
                    out.write(header)
                shutil.copyfileobj(handle, out, 1 << 20)


def _merge_reduction(experiment: Experiment, settings: Mapping[str, Any], rows: "RowTable", first: Mapping[str, Any],
                     shard_dirs: Sequence[Path], out_dir: Path, attrs: Mapping[str, Any],
                     starts: Sequence[int]) -> None:
    """The reducer over every row absorbs each shard's partial state, in row order, then finishes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job = ReducerJob(settings=settings, rows=rows, n_layers=int(first["n_layers"]), widths=dict(first["widths"]),
                     model_attrs=dict(first["model_attrs"]), out_dir=out_dir, attrs=attrs)
    reducer = experiment.hook("reducer")(job)
    for start, folder in zip(starts, shard_dirs):
        reducer.absorb(start, folder / REDUCTIONS / experiment.name)
    reducer.finish()
