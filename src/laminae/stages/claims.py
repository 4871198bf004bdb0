"""The claims stage of an experiment, and the claims matrix of a sweep.

    >>> run_claims(experiment, record, context, Path(".../metrics"), Path(".../claims-<h>/claims"))
    [PosixPath('.../claims/claims.tsv'), PosixPath('.../claims/summary.txt'), ..., PosixPath('.../claims/config.yaml')]

The record's `claims` are the experiment's claims as configured; the experiment's
`measure` hook reads its metrics into series and samples (laminae.series), every claim is judged
on them (laminae.claims.predicates), and the folder gets `claims.tsv` (one row per claim),
`summary.txt` (the one-screen summary, also logged to the rule's log), `claims.png|pdf` (the
verdict table, in the Snakemake report) and `config.yaml`, atomically.

    >>> run_claims_matrix(record, [[".../claims.tsv", ...], ...], Path("results/sweeps/claims-<h>/claims_matrix.png"))

A sweep's matrix: one row per run (its sweep label), one column per claim of every experiment
(`<experiment>:<claim>`), the verdict in each cell: `claims_matrix.png|pdf`, `claims_matrix.tsv`
and `sweep.yaml` (which claims.tsv each row comes from).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from laminae.atomic import atomic_dir, atomic_file, atomic_write_text
from laminae.experiment import Experiment, MeasureJob
from laminae.provenance import dump_yaml, stage_config_record
from laminae.stages.records import ClaimsMatrixRecord, ClaimsRecord
from laminae.store import CONFIG_FILE, write_tsv

log = logging.getLogger(__name__)


def measurements_of(experiment: Experiment, metrics_dir: str | Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment's measurements ({name: Series | Sample}) from its metrics folder, checked
    against its declared measures. Any feature that wants an experiment's headline numbers
    (claims, a sweep's heatmaps) reads them this way."""
    from laminae.series import check_measurements

    declared = {measure.name: measure.kind for measure in experiment.measures}
    result = experiment.hook("measure")(MeasureJob(metrics_dir=Path(metrics_dir), settings=settings))
    return check_measurements(result, declared, experiment.name)


def run_claims(experiment: Experiment, record: ClaimsRecord | Mapping[str, Any], context: Mapping[str, Any],
               metrics_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Judge the experiment's claims on its metrics; returns the written paths, config.yaml last."""
    from laminae.claims import CLAIMS_FILES, FIGURE_NAME, SUMMARY_FILENAME, TABLE_FILENAME, evaluate_claims
    from laminae.claims.report import plot_claims, summary_text, write_claims_table
    from laminae.plots.style import run_title, save_figure

    stage = ClaimsRecord.parse(record)
    out_dir = Path(out_dir)
    measurements = measurements_of(experiment, metrics_dir, context.get("analysis", {}))
    results = evaluate_claims(list(stage.claims), measurements)
    title = run_title(context, f"Claims of {experiment.title}").replace("\n", ", ")
    summary = summary_text(results, title)
    for line in summary.splitlines():
        log.info("%s", line)
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    with atomic_dir(out_dir) as tmp:
        write_claims_table(tmp / TABLE_FILENAME, results)
        (tmp / SUMMARY_FILENAME).write_text(summary + "\n", encoding="utf-8")
        save_figure(plot_claims(results, title), tmp / f"{FIGURE_NAME}.png", dpi=stage.dpi)
        (tmp / CONFIG_FILE).write_text(stage_config_record(stage), encoding="utf-8")
    return [out_dir / name for name in (*CLAIMS_FILES, CONFIG_FILE)]


def run_claims_matrix(record: ClaimsMatrixRecord | Mapping[str, Any], tables: Sequence[str | Path],
                      out_png: Path) -> list[Path]:
    """The sweep's matrix. The record's `runs`: per run `{label, claims: {experiment: hash}}`;
    `tables`: the claims.tsv of every (run, experiment) in that order."""
    from laminae.claims.report import plot_matrix, read_claims_table
    from laminae.plots.style import save_figure

    stage = ClaimsMatrixRecord.parse(record)
    out_png = Path(out_png)
    paths = iter(tables)
    columns: dict[str, None] = {}
    rows: list[dict[str, str]] = []
    record = []
    for run in stage.runs:
        verdicts: dict[str, str] = {}
        sources = {}
        for experiment in run["claims"]:
            path = Path(next(paths))
            sources[experiment] = str(path)
            for result in read_claims_table(path):
                column = f"{experiment}:{result.claim}"
                columns.setdefault(column)
                verdicts[column] = result.verdict
        rows.append(verdicts)
        record.append({"label": run["label"], "claims": sources})
    labels = [run["label"] for run in stage.runs]
    names = list(columns)
    figure = plot_matrix(labels, names, [[row.get(name, "") for name in names] for row in rows],
                         "Claims across the sweep (rows: runs; columns: experiment:claim)")
    written = save_figure(figure, out_png, dpi=stage.dpi)
    table = out_png.with_suffix(".tsv")
    with atomic_file(table) as tmp:
        write_tsv(tmp, [{"run": label, **row} for label, row in zip(labels, rows)], ["run", *names])
    atomic_write_text(out_png.with_name("sweep.yaml"), dump_yaml({"stage": stage.name, "hash": stage.hash,
                                                                  "runs": record}))
    log.info("claims matrix: %d runs x %d claims", len(labels), len(names))
    return [*written, table, out_png.with_name("sweep.yaml")]
