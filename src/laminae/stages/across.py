"""The stage of an analysis across the runs of a sweep (`Experiment.across`): several runs'
activation stores -> its metrics, then its figures, in `<results>/sweeps/<name>-across-<h>/`.

    >>> run_across(experiment, record, [".../activations", ".../activations"], Path("results/sweeps/cka-across-<h>"))
    [PosixPath('.../metrics/cka_across.tsv'), PosixPath('.../metrics/config.yaml'), PosixPath('.../figures/...png'), ...]

Each store must carry the extraction hash the record names (a store from another config is
refused in one line). Rows are matched by what they are (`match_rows`): stimuli by word; a corpus
by the words of its text, each run's tokens aggregated to the words they cover. The metrics and
figures folders each appear complete or not at all; `config.yaml` records the stage, the runs
and the matching rule.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from laminae.atomic import atomic_dir
from laminae.errors import ExperimentError, InputFileError
from laminae.experiment import AcrossJob, Experiment, FigureJob
from laminae.provenance import provenance_attrs, stage_config_record
from laminae.stages.records import AcrossRecord
from laminae.store import CONFIG_FILE, ActivationStore

log = logging.getLogger(__name__)


def run_across(experiment: Experiment, record: AcrossRecord | Mapping[str, Any],
               activation_dirs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Run the stage (see the module docstring); returns the written paths."""
    stage = AcrossRecord.parse(record)
    across = experiment.across
    if across is None:
        raise ExperimentError(experiment.name, "its declaration", "declares no `across` analysis")
    stores = [ActivationStore(Path(folder), expected_hash=run["extraction"])
              for folder, run in zip(activation_dirs, stage.runs)]
    experiment = experiment.for_config({experiment.name: stage.settings})
    for store in stores:
        store.require(experiment.sites, f"experiment {experiment.name!r} across runs")
    groups, items = match_rows(stores, stage.inputs)
    labels = [run["label"] for run in stage.runs]
    log.info("%s across %d runs (%s): %d matched items; %s", experiment.name, len(stores), ", ".join(labels),
             len(items), stage.match)
    out_dir = Path(out_dir)
    attrs = {**provenance_attrs(stage), "match_rule": stage.match}
    with atomic_dir(out_dir / "metrics") as tmp:
        across.hook("analyse", experiment.module)(AcrossJob(
            settings=stage.settings, labels=labels, stores=stores, groups=groups, n_items=len(items), items=items,
            match_rule=stage.match, out_dir=tmp, attrs=attrs, steps=stage.steps))
        _require(experiment, tmp, across.metrics, "analyse")
        (tmp / CONFIG_FILE).write_text(stage_config_record(stage), encoding="utf-8")
    context = {"labels": labels, "models": [run["model"] for run in stage.runs], "match_rule": stage.match,
               "steps": list(stage.steps) if stage.steps else None, "n_items": len(items)}
    with atomic_dir(out_dir / "figures") as tmp:
        across.hook("plot", experiment.module)(FigureJob(
            settings=stage.settings, plot=stage.plot, dpi=stage.dpi, metrics_dir=out_dir / "metrics", out_dir=tmp,
            context=context))
        names = [f"{figure.name}.{ext}" for figure in across.figures for ext in ("png", "pdf")]
        _require(experiment, tmp, names, "plot")
    return ([out_dir / "metrics" / name for name in (*across.metrics, CONFIG_FILE)]
            + [out_dir / "figures" / name for name in names])


def match_rows(stores: Sequence[ActivationStore], inputs: str) -> tuple[list[np.ndarray], list[str]]:
    """Per store, each row's matched item (-1: none), and what the items are, in the first
    store's order. Stimuli: one item per word, which every store must hold exactly once."""
    if inputs != "stimuli":
        from laminae.inputs.matching import match_corpus_rows

        return match_corpus_rows(stores)
    words = [list(store.rows.column("word")) for store in stores]
    items = words[0]
    index = {word: i for i, word in enumerate(items)}
    groups = []
    for store, store_words in zip(stores, words):
        if sorted(store_words) != sorted(items) or len(set(store_words)) != len(store_words):
            raise InputFileError(store.dir / "rows.tsv", f"its words differ from the first run's "
                                 f"({len(set(store_words) ^ set(items))} not in both): rows cannot be matched by word")
        groups.append(np.array([index[word] for word in store_words]))
    return groups, items


def _require(experiment: Experiment, folder: Path, names: Sequence[str], hook: str) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise ExperimentError(experiment.name, f"its across {hook} hook",
                              f"did not write {', '.join(missing)}, declared in its Across: write each into "
                              "job.out_dir")
