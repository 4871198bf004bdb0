"""`rotations` across the runs of a sweep: per layer, mean +- SEM of the block rotation and of
the sequential angles (other pairs, first-token pairs), one line per run, in three panels
(relative depth on x when the runs' depths differ).

    >>> fig = compare(job)      # job.metrics_dirs: one metrics folder per run
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from laminae.experiment import CompareJob
from laminae.experiments.rotations.outputs import (SEQUENTIAL_FIRST, SEQUENTIAL_REST, TABLE_FILENAME, AngleStats,
                                                   read_rotation_table)
from laminae.plots.overlay import depth_axis, run_style
from laminae.plots.style import NEUTRAL, plt

PANELS = {
    "block_rotation": "block rotation\nresid_pre \u2192 resid_post",
    SEQUENTIAL_REST: "sequential angle\nother pairs (t \u2265 1)",
    SEQUENTIAL_FIRST: "sequential angle\nfirst-token pairs (t = 0)",
}


def compare(job: CompareJob) -> plt.Figure:
    tables = [read_rotation_table(folder / TABLE_FILENAME) for folder in job.metrics_dirs]
    title = f"Sweep: rotations of the residual stream in {len(tables)} runs"
    return plot_rotation_comparison(tables, job.labels, title)


def plot_rotation_comparison(tables: Sequence[Mapping[str, AngleStats]], labels: Sequence[str], title: str
                             ) -> plt.Figure:
    """Mean angle per layer with SEM bands, one line per run, one panel per metric of PANELS."""
    xs, xlabel = depth_axis([t["block_rotation"].mean.size for t in tables])
    fig, axes = plt.subplots(1, len(PANELS), figsize=(10.5, 3.8 + 0.25 * len(tables)), sharey=True)
    top = np.pi / 2
    for ax, (metric, panel) in zip(axes, PANELS.items()):
        for index, (table, x) in enumerate(zip(tables, xs)):
            stats, style = table[metric], run_style(index)
            sem = np.nan_to_num(stats.sem, nan=0.0)
            ax.plot(x, stats.mean, marker="o", markersize=2.5, linewidth=1.3,
                    label=labels[index] if ax is axes[0] else None, **style)
            ax.fill_between(x, stats.mean - sem, stats.mean + sem, alpha=0.15, color=style["color"], linewidth=0)
            top = max(top, float(np.nanmax(stats.mean + sem, initial=0.0)))
        ax.axhline(np.pi / 2, color=NEUTRAL, linewidth=0.9, linestyle=":")
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0].set_ylim(0.0, min(np.pi, 1.06 * top))          # from 0, always showing pi/2
    degrees = axes[-1].secondary_yaxis("right", functions=(np.degrees, np.radians))
    degrees.set_ylabel("degrees")
    axes[0].set_ylabel("angle (radians), mean \u00b1 SEM over tokens\ndotted: \u03c0/2 (orthogonal)")
    fig.legend(loc="outside lower center", ncol=min(len(tables), 3), fontsize=8)
    fig.suptitle(title)
    return fig
