"""Experiment 2 across the runs of a sweep: the mean cosine between the attention and MLP
adjustments per layer, with SEM bands, one line per run (relative depth when depths differ).

    >>> fig = compare(job)      # job.metrics_dirs: one metrics folder per run
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from laminae.experiment import CompareJob
from laminae.experiments.adjustments.analysis import COSINE, TABLE_FILENAME, read_adjustment_table
from laminae.plots.overlay import depth_axis, run_style
from laminae.plots.style import NEUTRAL, plt


def compare(job: CompareJob) -> plt.Figure:
    tables = [read_adjustment_table(folder / TABLE_FILENAME) for folder in job.metrics_dirs]
    return plot_adjustment_comparison(tables, job.labels, f"Sweep: attention vs MLP adjustments in {len(tables)} runs")


def plot_adjustment_comparison(tables: Sequence[Mapping[str, Any]], labels: Sequence[str], title: str) -> plt.Figure:
    """Mean cos(attn_out, mlp_out) per layer with SEM bands, one line per run."""
    xs, xlabel = depth_axis([len(t[COSINE].mean) for t in tables])
    fig, ax = plt.subplots(figsize=(7.5, 4.2 + 0.25 * len(tables)))
    ax.axhline(0.0, color=NEUTRAL, linewidth=0.9, linestyle=":")
    for index, (table, x) in enumerate(zip(tables, xs)):
        stats = table[COSINE]
        style = run_style(index)
        ax.plot(x, stats.mean, marker="o", markersize=2.5, linewidth=1.3, label=labels[index], **style)
        ax.fill_between(x, stats.mean - stats.sem, stats.mean + stats.sem, alpha=0.15, color=style["color"], linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cos(attn_out, mlp_out)\nmean \u00b1 SEM over tokens")
    fig.legend(loc="outside lower center", ncol=min(len(tables), 2), fontsize=8)
    fig.suptitle(title)
    return fig
