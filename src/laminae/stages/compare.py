"""The comparison stage of a sweep: one experiment's runs overlaid, by the experiment's
`compare` hook, into `results/sweeps/<experiment>-<hash>/compare_<experiment>.png|pdf`, with
`sweep.yaml` listing the runs and the metrics folders they come from.

    >>> run_comparison(experiment, record, [".../analysis-<h1>/metrics", ".../analysis-<h2>/metrics"], out_png)

The record (`CompareRecord`) holds `runs` (one `{label, analysis, settings}` per metrics folder,
in order), `dpi` and `plot` (the experiment's `plot` keys of the first run). When the runs are
training checkpoints of one model (`steps`), `run_training` also draws the experiment's headline
metrics (the measures it declares with a `headline` label) across training:

    >>> run_training(experiment, record, metrics_dirs, Path(".../training_qkv.png"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from laminae.atomic import atomic_write_text
from laminae.experiment import CompareJob, Experiment
from laminae.plots.style import save_figure
from laminae.provenance import dump_yaml
from laminae.stages.claims import measurements_of
from laminae.stages.records import SAME_WEIGHTS, CompareRecord


def run_comparison(experiment: Experiment, record: CompareRecord | Mapping[str, Any],
                   metrics_dirs: Sequence[str | Path], out_png: Path) -> list[Path]:
    stage = CompareRecord.parse(record)
    runs = stage.runs
    job = CompareJob(metrics_dirs=[Path(d) for d in metrics_dirs], labels=[run["label"] for run in runs],
                     settings=[run["settings"] for run in runs], plot=stage.plot)
    figure = experiment.hook("compare")(job)
    for ax in figure.axes:   # runs of one depth share a layer axis: whole layers only
        if ax.get_xlabel() == "layer":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if stage.model:   # the runs differ in settings only: the model they share, once, in the title
        title = figure.get_suptitle()
        figure.suptitle(f"{title}\n{stage.model}" if title else stage.model)
    written = save_figure(figure, out_png, dpi=stage.dpi)
    sweep = {"stage": stage.name, "hash": stage.hash,
             "runs": [{**run, "metrics": str(path)} for run, path in zip(runs, metrics_dirs)]}
    atomic_write_text(out_png.with_name("sweep.yaml"), dump_yaml(sweep))
    return [*written, out_png.with_name("sweep.yaml")]


def training_title(what: str, runs: Sequence[Mapping[str, Any]], steps: Sequence[int]) -> str:
    """`<what> across training: N checkpoints`, and the checkpoints whose weights repeat an earlier
    one's (their labels say so), e.g. `; step 2,000 has the weights of step 1,000`.

        >>> training_title("RSA", [{"label": "model.revision=step1000"},
        ...                        {"label": "model.revision=step2000 [same weights as model.revision=step1000]"}],
        ...                [1000, 2000])
        'RSA across training: 2 checkpoints; step 2,000 has the weights of step 1,000 (one model, not two)'
    """
    labels = [run["label"].partition(SAME_WEIGHTS) for run in runs]    # (label, marker, "earlier label]")
    step_of = {label: step for (label, _, _), step in zip(labels, steps)}
    repeats = [f"step {step:,} has the weights of step {step_of[same[:-1]]:,}"
               for (_, _, same), step in zip(labels, steps) if same[:-1] in step_of]
    title = f"{what} across training: {len(steps)} checkpoints"
    return title + (f"; {', '.join(repeats)} (one model, not two)" if repeats else "")


def run_training(experiment: Experiment, record: CompareRecord | Mapping[str, Any],
                 metrics_dirs: Sequence[str | Path], out_png: Path) -> list[Path]:
    """The headline metrics of every checkpoint (the record's `steps`): heatmaps and curves."""
    from laminae.plots.training import plot_across_training

    stage = CompareRecord.parse(record)
    if stage.steps is None:
        raise ValueError(f"stage {stage.name} ({stage.hash}): its runs are not checkpoints of one model (no steps)")
    headlines = [measure for measure in experiment.measures if measure.headline and measure.kind == "layers"]
    measured = [measurements_of(experiment, folder, run["settings"]) for folder, run in zip(metrics_dirs, stage.runs)]
    series = {measure.headline: [run[measure.name] for run in measured] for measure in headlines
              if all(measure.name in run for run in measured)}
    title = training_title(experiment.title, stage.runs, list(stage.steps))
    return save_figure(plot_across_training(series, list(stage.steps), title), out_png, dpi=stage.dpi)
