"""The figure stage of any experiment: metrics -> `figures/<name>.png|pdf` + `config.yaml`.

    >>> run_figures(experiment, record, context, Path(".../metrics"), Path(".../plot-<h>/figures"))

The experiment's `plot` hook reads the metrics folder and saves each declared figure with
`job.save(fig, name)`; the folder appears complete or not at all (a bad plot setting raises
before anything is written under the final name), and a declared figure the hook did not save
is reported as a broken declaration. The record's `references`, when the experiment's claims
carry any, are handed to the hook as `job.references` (drawn with laminae.plots.references).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from laminae.atomic import atomic_dir
from laminae.errors import ExperimentError
from laminae.experiment import Experiment, FigureJob
from laminae.provenance import stage_config_record
from laminae.stages.records import FigureRecord
from laminae.store import CONFIG_FILE

log = logging.getLogger(__name__)
FORMATS = ("png", "pdf")


def run_figures(experiment: Experiment, record: FigureRecord | Mapping[str, Any], context: Mapping[str, Any],
                metrics_dir: str | Path, figures_dir: str | Path) -> list[Path]:
    """Draw and save every figure of `experiment`; returns the written paths, config.yaml last."""
    stage = FigureRecord.parse(record)
    figures_dir = Path(figures_dir)
    logging.getLogger("fontTools").setLevel(logging.WARNING)   # PDF font subsetting logs pages at INFO
    with atomic_dir(figures_dir) as tmp:
        job = FigureJob(settings=context.get("analysis", {}), plot=stage.plot, dpi=stage.dpi,
                        metrics_dir=Path(metrics_dir), out_dir=tmp, context=context, references=stage.references)
        experiment.hook("plot")(job)
        figures = experiment.figures_for(experiment.active_variants(job.settings))
        expected = [f"{figure.name}.{ext}" for figure in figures for ext in FORMATS]
        missing = [name for name in expected if not (tmp / name).is_file()]
        if missing:
            raise ExperimentError(experiment.name, "its plot hook", f"did not save {', '.join(missing)}, declared in its "
                                  "figures: save each with job.save(fig, name), or declare only what it draws")
        (tmp / CONFIG_FILE).write_text(stage_config_record(stage), encoding="utf-8")
    log.info("wrote %s", ", ".join(expected))
    return [figures_dir / name for name in (*expected, CONFIG_FILE)]
