"""The gather stage of a sharded extraction (`corpus.shards` > 1): the shards' folders
(laminae.shards) -> one activation store that reads like an unsharded one.

    >>> gather(record, runtime, [shard_0, ..., shard_3], out_dir=Path(".../activations"), registry=discover())

The store's layer files are HDF5 virtual datasets over the shards' files (relative paths), its
rows.tsv the shards' concatenated, its fidelity.tsv the first shard's (the extraction's first
batch), its config.yaml this stage's record; each experiment computed
during extraction gets its reducer rebuilt over every row, which `absorb`s each shard's partial
state in row order and then `finish`es (laminae.experiment.Reducer). The shards are checked to
be the N of one split of this stage, contiguous and complete, before anything is written; the
store appears whole or not at all. No model is loaded.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import yaml

from laminae.atomic import atomic_dir
from laminae.errors import InputFileError
from laminae.experiment import Experiment, ReducerJob
from laminae.provenance import provenance_attrs, stage_config_record, upstream_attrs
from laminae.shards import SHARD_RECORD
from laminae.stages.records import ExtractionRecord, Runtime, model_source
from laminae.store import (CONFIG_FILE, FIDELITY_FILE, REDUCTIONS, ROWS_FILE, RowTable, copy_reductions, link_shards,
                           link_stored)

log = logging.getLogger(__name__)


def gather(record: ExtractionRecord | Mapping[str, Any], runtime: Runtime | Mapping[str, Any],
           shard_dirs: Sequence[Path], out_dir: Path, registry: Mapping[str, Experiment],
           project_root: Path | None = None) -> None:
    """The store of an extraction from its shards, atomically (module docstring).
    `project_root` (default: the working directory) locates the model for the reducers' readout."""
    record, runtime = ExtractionRecord.parse(record), Runtime.parse(runtime)
    shard_dirs = [Path(folder) for folder in shard_dirs]
    records = read_shards(record, shard_dirs)
    n_rows = sum(shard["n_rows"] for shard in records)
    first = records[0]
    with atomic_dir(Path(out_dir)) as tmp:
        layers = link_shards(tmp, shard_dirs, [shard["n_rows"] for shard in records], {"shards": len(shard_dirs)})
        _concatenate_rows(shard_dirs, tmp / ROWS_FILE)
        if (shard_dirs[0] / FIDELITY_FILE).is_file():   # the first batch: the first shard's
            shutil.copyfile(shard_dirs[0] / FIDELITY_FILE, tmp / FIDELITY_FILE)
        rows = RowTable.from_tsv(tmp / ROWS_FILE)
        if len(rows) != n_rows:
            raise InputFileError(tmp / ROWS_FILE, f"has {len(rows)} rows; the shards declare {n_rows}")
        loaded = yaml.safe_load((shard_dirs[0] / CONFIG_FILE).read_text(encoding="utf-8")).get("loaded_model")
        (tmp / CONFIG_FILE).write_text(stage_config_record(record, runtime, model=loaded), encoding="utf-8")
        provenance = {**provenance_attrs(record, runtime), **first["model_attrs"]}
        sources = record.reused_from(Path(out_dir))   # a composite store: what it links and copies
        link_stored(tmp, {site: sources[site] for site in record.reused_sites}, int(first["n_layers"]), n_rows,
                    provenance)
        copy_reductions(tmp, {name: sources[name] for name in record.reused_reductions})
        attrs = upstream_attrs(provenance)
        model = model_source(record, runtime, project_root)
        for name, reduction in record.new_reductions.items():
            job = ReducerJob(settings=reduction.settings, rows=rows, n_layers=int(first["n_layers"]),
                             widths=dict(first["widths"]), model_attrs=dict(first["model_attrs"]),
                             out_dir=tmp / REDUCTIONS / name, attrs=attrs, model=model)
            _merge_reduction(registry[name].for_config({name: reduction.settings}), job, shard_dirs,
                             [shard["first_row"] for shard in records])
        log.info("gathered %d shards: %d rows, %d layer files of virtual datasets%s", len(shard_dirs), n_rows,
                 len(layers), f"; reductions merged: {', '.join(record.new_reductions)}" if record.new_reductions else "")


def read_shards(record: ExtractionRecord, shard_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Each shard's shard.yaml, checked: this stage's hash, shards 0..N-1 of one split in
    order, rows contiguous from 0. InputFileError naming the first shard that is not."""
    records: list[dict[str, Any]] = []
    for position, folder in enumerate(shard_dirs):
        try:
            shard = yaml.safe_load((Path(folder) / SHARD_RECORD).read_text(encoding="utf-8"))
            stage_hash = yaml.safe_load((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))["hash"]
        except (OSError, yaml.YAMLError, TypeError, KeyError):
            raise InputFileError(folder, "is not a complete shard (shard.yaml or config.yaml missing or unreadable); "
                                         "delete it and rerun") from None
        expected_first = records[-1]["first_row"] + records[-1]["n_rows"] if records else 0
        if stage_hash != record.hash:
            raise InputFileError(folder, f"holds stage {stage_hash!r}, not {record.hash!r}; delete it and rerun")
        if (shard["index"], shard["count"]) != (position, len(shard_dirs)) or shard["first_row"] != expected_first:
            raise InputFileError(folder, f"is shard {shard['index']} of {shard['count']} from row "
                                         f"{shard['first_row']}; expected shard {position} of {len(shard_dirs)} from "
                                         f"row {expected_first}: delete the shards folder and rerun")
        records.append(shard)
    return records


def _concatenate_rows(shard_dirs: Sequence[Path], target: Path) -> None:
    """The shards' rows.tsv one after another, the header once (they number rows globally)."""
    with open(target, "w", encoding="utf-8", newline="") as out:
        for index, folder in enumerate(shard_dirs):
            with open(folder / ROWS_FILE, encoding="utf-8", newline="") as handle:
                header = handle.readline()
                if index == 0:
                    out.write(header)
                shutil.copyfileobj(handle, out, 1 << 20)


def _merge_reduction(experiment: Experiment, job: ReducerJob, shard_dirs: Sequence[Path],
                     starts: Sequence[int]) -> None:
    """The reducer over every row absorbs each shard's partial state, in row order, then finishes."""
    job.out_dir.mkdir(parents=True, exist_ok=True)
    reducer = experiment.hook("reducer")(job)
    for start, folder in zip(starts, shard_dirs):
        reducer.absorb(start, folder / REDUCTIONS / experiment.name)
    reducer.finish()
