"""Experiment `neurons` across the runs of a sweep: the fraction of selective units per layer,
one panel per site, one line per run with its Clopper-Pearson band (x = relative depth when
the models' depths differ).

    >>> fig = compare(job)      # job.metrics_dirs: one metrics folder per run
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from laminae.experiment import CompareJob
from laminae.experiments.neurons.analysis import ALL, TABLE_FILENAME
from laminae.experiments.neurons.figures import SITE_NAMES
from laminae.experiments.neurons.tables import LaminarTable
from laminae.plots.overlay import depth_axis, run_style
from laminae.plots.style import NEUTRAL, plt

from matplotlib.ticker import PercentFormatter  # noqa: E402


def compare(job: CompareJob) -> plt.Figure:
    tables = [LaminarTable.read(folder / TABLE_FILENAME) for folder in job.metrics_dirs]
    alphas = {float(s["alpha"]) for s in job.settings}
    return plot_neurons_comparison(tables, job.labels, f"Sweep: category-selective units in {len(tables)} runs",
                                   alphas.pop() if len(alphas) == 1 else None)


def plot_neurons_comparison(tables: Sequence[LaminarTable], labels: Sequence[str], title: str,
                            alpha: float | None = None) -> plt.Figure:
    """One panel per site (in the first run's order, then any other run's), one line per run."""
    sites = list(dict.fromkeys(site for table in tables for site in table.sites))
    xs, xlabel = depth_axis([t.n_layers for t in tables])
    n_cols = min(2, len(sites))
    n_rows = -(-len(sites) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols + 1, 2.9 * n_rows + 0.8 + 0.25 * len(tables)),
                             sharex=True, sharey=True, squeeze=False)
    top = max([float(np.nanmax(t.get(s, ALL, "ci_high"))) for t in tables for s in t.sites] + [alpha or 0.0])
    for ax, site in zip(axes.flat, sites):
        if alpha is not None:
            ax.axhline(alpha, color=NEUTRAL, linestyle=":", linewidth=0.9)
        for index, (table, x) in enumerate(zip(tables, xs)):
            if not table.has(site):
                continue
            style = run_style(index)
            ax.plot(x, table.get(site, ALL), marker="o", markersize=2.5, linewidth=1.3, label=labels[index], **style)
            ax.fill_between(x, table.get(site, ALL, "ci_low"), table.get(site, ALL, "ci_high"), alpha=0.12,
                            color=style["color"], linewidth=0)
        ax.set_title(SITE_NAMES.get(site, site))
        ax.set_ylim(0, 1.05 * top)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    for ax in axes.flat[len(sites):]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of units selective\n(ANOVA, BH per layer)")
    handles, names = max((ax.get_legend_handles_labels() for ax in axes.flat), key=lambda hn: len(hn[1]))
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 2), fontsize=8)
    fig.suptitle(title)
    return fig
