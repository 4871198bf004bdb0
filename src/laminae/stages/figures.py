"""The figure stage of any experiment: metrics -> `figures/<name>.png|pdf` + `config.yaml`.

    >>> run_figures(experiment, stage, context, Path(".../metrics"), Path(".../plot-<h>/figures"))

The experiment's `plot` hook reads the metrics folder and saves each declared figure with
`job.save(fig, name)`; the folder appears complete or not at all (a bad plot setting raises
before anything is written under the final name), and a declared figure the hook did not save
is reported as a broken declaration. `stage["config"]["references"]`, when the experiment's claims
carry any, are handed to the hook as `job.references` (drawn with laminae.plots.references).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from laminae.experiment import Experiment, FigureJob
from laminae.provenance import atomic_dir, stage_config_record
from laminae.store import CONFIG_FILE

log = logging.getLogger(__name__)
FORMATS = ("png", "pdf")


def run_figures(experiment: Experiment, stage: dict[str, Any], context: Mapping[str, Any], metrics_dir: str | Path,
                figures_dir: str | Path) -> list[Path]:
    """Draw and save every figure of `experiment`; returns the written paths, config.yaml last."""
    config = stage["config"]
    figures_dir = Path(figures_dir)
    logging.getLogger("fontTools").setLevel(logging.WARNING)   # PDF font subsetting logs pages at INFO
    with atomic_dir(figures_dir) as tmp:
        job = FigureJob(settings=context.get("analysis", {}), plot=config[experiment.name]["plot"],
                        dpi=int(config["plot"]["dpi"]), metrics_dir=Path(metrics_dir), out_dir=tmp, context=context,
                        references=tuple(config.get("references", ())))
        experiment.hook("plot")(job)
        figures = experiment.figures_for(experiment.active_variants(job.settings))
        expected = [f"{figure.name}.{ext}" for figure in figures for ext in FORMATS]
        missing = [name for name in expected if not (tmp / name).is_file()]
        if missing:
            raise RuntimeError(f"experiment {experiment.name!r}: its plot hook did not save {', '.join(missing)} "
                               "(declared in its figures; save each with job.save(fig, name))")
        (tmp / CONFIG_FILE).write_text(stage_config_record(stage), encoding="utf-8")
    log.info("wrote %s", ", ".join(expected))
    return [figures_dir / name for name in (*expected, CONFIG_FILE)]
