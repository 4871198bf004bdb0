"""The analysis stage of any experiment: activation store -> `metrics/`.

    >>> run_analysis(experiment, record, Path(".../activations"), Path(".../qkv/analysis-<h>/metrics"))
    [PosixPath('.../metrics/qkv_laminar.tsv'), PosixPath('.../metrics/similarity.h5'), PosixPath('.../metrics/config.yaml')]

`record` (`AnalysisRecord`, or the `{"stage", "hash", "config"}` dict the Snakefile passes)
holds the experiment's settings and the extraction's hash (`upstream`), which the store must
carry (a store from another config is refused with one line). The metrics folder appears
complete or not at all; its `config.yaml` records the stage, and every HDF5 file the
experiment writes gets the provenance attributes it is handed.

Three ways to fill it, by what the experiment declares:
- `analyse`: called once with the whole store;
- `reducer`: the store streamed in row chunks of every declared site (memory stays flat);
- `reducer` with `<name>.during_extraction: true`: the extraction already ran the reducer on the
  model's batches, into `activations/reductions/<name>/`; this stage publishes those files.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py

from laminae.atomic import atomic_dir
from laminae.errors import ExperimentError, InputFileError
from laminae.experiment import AnalysisJob, Experiment, ReducerJob
from laminae.provenance import provenance_attrs, read_stage_record, stage_config_record, upstream_attrs
from laminae.stages.records import AnalysisRecord, Runtime, model_source
from laminae.store import CONFIG_FILE, REDUCTIONS, ActivationStore

log = logging.getLogger(__name__)


def run_analysis(experiment: Experiment, record: AnalysisRecord | Mapping[str, Any], activations_dir: str | Path,
                 metrics_dir: str | Path, runtime: Runtime | Mapping[str, Any] | None = None,
                 chunk_rows: int | None = None, project_root: Path | None = None) -> list[Path]:
    """Run the stage (see module docstring); returns the written paths, config.yaml last.
    `chunk_rows`: rows per streamed chunk (default: what fits `laminae.store.CHUNK_BYTES`).
    `project_root` (default: the working directory) locates the model for the jobs' readout."""
    stage = AnalysisRecord.parse(record)
    runtime = None if runtime is None else Runtime.parse(runtime)
    settings = stage.settings
    experiment = experiment.for_config({experiment.name: settings})   # the sites its settings name
    activations_dir, metrics_dir = Path(activations_dir), Path(metrics_dir)
    if experiment.streams and settings.get("during_extraction"):
        return publish_reduction(experiment, stage, activations_dir, metrics_dir, runtime)
    store = ActivationStore(activations_dir, expected_hash=stage.upstream)
    store.require(experiment.sites, f"experiment {experiment.name!r}")
    attrs = {**provenance_attrs(stage, runtime), **upstream_attrs(store.attrs)}
    extraction = read_stage_record(activations_dir / CONFIG_FILE)   # its model, for job.readout()
    model = model_source(extraction, extraction.get("runtime"), project_root)
    log.info("experiment %s over %d layers, %d rows; sites %s", experiment.name, store.n_layers, store.n_rows,
             ",".join(experiment.sites))
    with atomic_dir(metrics_dir) as tmp:
        if experiment.analyse is not None:
            experiment.hook("analyse")(AnalysisJob(settings=settings, store=store, out_dir=tmp, attrs=attrs,
                                                          model=model))
        else:
            job = ReducerJob(settings=settings, rows=store.rows, n_layers=store.n_layers, widths=dict(store.widths),
                             model_attrs=store.model_attrs, out_dir=tmp, attrs=attrs, model=model)
            reducer = experiment.hook("reducer")(job)
            chunk_rows = chunk_rows or store.chunk_rows(experiment.sites)
            log.info("streaming chunks of %d rows", chunk_rows)
            for start, chunk in store.iter_chunks(experiment.sites, chunk_rows, dtype=store.read_dtype()):
                reducer.update(start, chunk)
                del chunk
            reducer.finish()
        return _finished(experiment, stage, runtime, tmp, metrics_dir)


def publish_reduction(experiment: Experiment, stage: AnalysisRecord, activations_dir: Path, metrics_dir: Path,
                      runtime: Runtime | None = None) -> list[Path]:
    """The analysis of an experiment that ran during extraction: check the extraction is the
    upstream one, then copy its reduction into `metrics_dir` with this stage's provenance (the
    extraction's own attributes become `activations_*`)."""
    source = activations_dir / REDUCTIONS / experiment.name
    record_path = activations_dir / CONFIG_FILE
    record = read_stage_record(record_path)
    if record.get("hash") != stage.upstream:
        raise InputFileError(record_path, f"stage hash {record.get('hash')!r} does not match the config's "
                                          f"{stage.upstream!r}; these results come from another config: "
                                          "delete the activations folder and rerun")
    attrs = {**provenance_attrs(stage, runtime), "computed_during_extraction": True}
    files = experiment.metrics_for(experiment.active_variants(stage.settings))
    with atomic_dir(metrics_dir) as tmp:
        for name in files:
            path = source / name
            if not path.is_file():
                raise InputFileError(path, f"missing: with {experiment.name}.during_extraction the extraction writes it; "
                                           "delete the activations folder and rerun")
            shutil.copyfile(path, tmp / name)
            if name.endswith((".h5", ".hdf5")):
                _restamp(tmp / name, attrs)
        log.info("computed during extraction (%s); publishing %s", source, ", ".join(files))
        return _finished(experiment, stage, runtime, tmp, metrics_dir)


def _restamp(path: Path, attrs: Mapping[str, Any]) -> None:
    """Add this stage's provenance to an HDF5 file the extraction wrote (it already carries the
    extraction's attributes as `activations_*`, see laminae.stages.extract)."""
    with h5py.File(path, "r+") as handle:
        handle.attrs.update(attrs)


def _finished(experiment: Experiment, stage: AnalysisRecord, runtime: Runtime | None, tmp: Path,
              metrics_dir: Path) -> list[Path]:
    files = experiment.metrics_for(experiment.active_variants(stage.settings))
    missing = [name for name in files if not (tmp / name).is_file()]
    if missing:
        hook = "analyse" if experiment.analyse is not None else "reducer"
        raise ExperimentError(experiment.name, f"its {hook} hook", f"did not write {', '.join(missing)}, declared in "
                              "its metrics: write each declared file into job.out_dir, or declare only what it writes")
    (tmp / CONFIG_FILE).write_text(stage_config_record(stage, runtime), encoding="utf-8")
    log.info("wrote %s", ", ".join(files))
    return [metrics_dir / name for name in (*files, CONFIG_FILE)]
