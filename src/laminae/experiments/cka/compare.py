"""Sweep overlay of the `cka` experiment: adjacent-layer CKA per run, with bootstrap bands.

    >>> fig = compare(job)    # job: laminae.experiment.CompareJob
"""

from __future__ import annotations

from laminae.experiment import CompareJob
from laminae.plots.overlay import depth_axis, run_style
from laminae.experiments.cka.figures import layer_ticks
from laminae.plots.style import NEUTRAL, plt


def compare(job: CompareJob) -> plt.Figure:
    from laminae.experiments.cka.analysis import TABLE_FILENAME, adjacent, read_table

    tables = [read_table(folder / TABLE_FILENAME) for folder in job.metrics_dirs]
    depths = [t["cka"].shape[0] for t in tables]
    # adjacent pair (l, l + 1) drawn at l + 0.5, on the layer or relative-depth axis
    xs, xlabel = depth_axis(depths)
    fig, ax = plt.subplots(figsize=(7.5, 4.2 + 0.25 * len(tables)))
    for index, (table, x) in enumerate(zip(tables, xs)):
        mid = (x[:-1] + x[1:]) / 2
        style = run_style(index)
        ax.fill_between(mid, adjacent(table["ci_low"])[:-1], adjacent(table["ci_high"])[:-1], color=style["color"],
                        alpha=0.15, linewidth=0)
        ax.plot(mid, adjacent(table["cka"])[:-1], marker="o", markersize=2.5, linewidth=1.3, label=job.labels[index],
                **style)
    ax.axhline(0.0, color=NEUTRAL, linewidth=0.8, linestyle=":")
    estimators = {s.get("estimator") for s in job.settings}
    sites = {s.get("site") for s in job.settings}
    what = f"{'/'.join(sorted(estimators))} CKA" + (f" of {next(iter(sites))}" if len(sites) == 1 else "")
    ax.set_xlabel(xlabel + " (pair l, l+1 drawn between them)")
    ax.set_ylabel(f"{what}(l, l+1)\nbootstrap CI band (words)")
    ax.set_ylim(top=1.05)
    if len(set(depths)) == 1:
        ax.set_xticks(layer_ticks(depths[0]))
    fig.legend(loc="outside lower center", ncol=min(len(tables), 2), fontsize=8)
    fig.suptitle(f"Sweep: adjacent-layer CKA in {len(tables)} runs")
    return fig
