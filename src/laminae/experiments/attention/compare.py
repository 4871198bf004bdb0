"""The attention experiment across the runs of a sweep: per layer, the normalised entropy, the
sink mass (mean over heads, with bootstrap CI bands) and the first-token norm ratio (log scale),
one line per run (relative depth when the depths differ). Runs of random-weight models are
labelled "(RANDOM WEIGHTS)".

    >>> fig = compare(job)      # job.metrics_dirs: one metrics folder per run
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from laminae.experiment import CompareJob
from laminae.plots.overlay import depth_axis, run_style
from laminae.plots.style import NEUTRAL, plt

from .analysis import BLOCKS_FILENAME, read_attrs
from .table import TABLE_FILENAME, AttentionTable

PANELS = (("entropy_normalised", "mean", "normalised entropy\n(mean over heads)"),
          ("sink", "mean", "attention mass on the first token\n(mean over heads)"),
          ("first_token_norm_ratio", "median", "first-token |resid_post|\n/ median token's"))


def compare(job: CompareJob) -> plt.Figure:
    tables = [AttentionTable.read(folder / TABLE_FILENAME) for folder in job.metrics_dirs]
    labels = [label + (" (RANDOM WEIGHTS)" if read_attrs(folder / BLOCKS_FILENAME).get("activations_random_weights")
                       else "") for label, folder in zip(job.labels, job.metrics_dirs)]
    return plot_attention_comparison(tables, labels, f"Sweep: where the heads look, in {len(tables)} runs")


def plot_attention_comparison(tables: Sequence[AttentionTable], labels: Sequence[str], title: str) -> plt.Figure:
    """1 x 3 panels (module docstring), one line per run."""
    xs, xlabel = depth_axis([t.n_layers for t in tables])
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 4.0 + 0.25 * len(tables)), sharex=True)
    for ax, (metric, summary, ylabel) in zip(axes, PANELS):
        for index, (table, x) in enumerate(zip(tables, xs)):
            if not table.has(metric, summary):
                continue
            style = run_style(index)
            ax.plot(x, table.get(metric, summary), marker="o", markersize=2.5, linewidth=1.3, label=labels[index],
                    **style)
            low, high = table.get(metric, summary, "low"), table.get(metric, summary, "high")
            if metric != "first_token_norm_ratio" and np.isfinite(low).any():
                ax.fill_between(x, low, high, alpha=0.15, color=style["color"], linewidth=0)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        if metric == "first_token_norm_ratio":
            ax.axhline(1.0, color=NEUTRAL, linestyle=":", linewidth=1.0)
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.03, 1.03)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 2), fontsize=8)
    fig.suptitle(f"{title}\nbands: block bootstrap CI over queries")
    return fig
