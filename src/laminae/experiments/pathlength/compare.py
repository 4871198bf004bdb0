"""Experiment 3 across the runs of a sweep: the Pearson correlation of PL_attn (top) and PL_mlp
(bottom) with PL_hs per layer, with all tokens (left) and without the first token of every
window (right); one line per run with its bootstrap CI band (relative depth when depths differ).
Runs of random-weight models are labelled "(RANDOM WEIGHTS)".

    >>> fig = compare(job)      # job.metrics_dirs: one metrics folder per run
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from laminae.experiment import CompareJob
from laminae.plots.overlay import depth_axis, run_style
from laminae.plots.style import NEUTRAL, plt

from .figures import stored_model
from .table import TABLE_FILENAME, TOKEN_SETS, PathLengthTable

ROWS = (("pearson_attn_hs", "Pearson r(PL_attn, PL_hs)"), ("pearson_mlp_hs", "Pearson r(PL_mlp, PL_hs)"))
COLUMN_TITLES = {"all": "all tokens", "without_first": "without the first token of each window"}


def compare(job: CompareJob) -> plt.Figure:
    tables = [PathLengthTable.read(folder / TABLE_FILENAME) for folder in job.metrics_dirs]
    labels = [label + (" (RANDOM WEIGHTS)" if stored_model(folder)["random_weights"] else "")
              for label, folder in zip(job.labels, job.metrics_dirs)]
    return plot_pathlength_comparison(tables, labels, f"Sweep: path-length correlations in {len(tables)} runs")


def plot_pathlength_comparison(tables: Sequence[PathLengthTable], labels: Sequence[str], title: str) -> plt.Figure:
    """2 x 2 panels (module docstring), shared y-axis, zero line."""
    xs, xlabel = depth_axis([t.n_layers for t in tables])
    fig, axes = plt.subplots(2, 2, figsize=(9.5, 6.6 + 0.25 * len(tables)), sharex=True, sharey=True, squeeze=False)
    for row, (metric, ylabel) in enumerate(ROWS):
        for col, tokens in enumerate(TOKEN_SETS):
            ax = axes[row, col]
            ax.axhline(0.0, color=NEUTRAL, linewidth=0.9, linestyle=":")
            for index, (table, x) in enumerate(zip(tables, xs)):
                style = run_style(index)
                ax.plot(x, table.get(metric, tokens), marker="o", markersize=2.5, linewidth=1.3,
                        label=labels[index], **style)
                low, high = table.get(metric, tokens, "ci_low"), table.get(metric, tokens, "ci_high")
                if np.isfinite(low).any():
                    ax.fill_between(x, low, high, alpha=0.15, color=style["color"], linewidth=0)
            if row == 0:
                ax.set_title(COLUMN_TITLES[tokens], fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{ylabel}\nover tokens")
            if row == 1:
                ax.set_xlabel(xlabel)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 2), fontsize=8)
    fig.suptitle(f"{title}\nbands: bootstrap CI over tokens")
    return fig
