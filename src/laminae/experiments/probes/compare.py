"""Experiment `probes` across the runs of a sweep: the probe's held-out accuracy per layer, one
line per run with its t interval over folds and its chance level (x = relative depth when the
models' depths differ).

    >>> fig = compare(job)      # job.metrics_dirs: one metrics folder per run
"""

from __future__ import annotations

from collections.abc import Sequence

from laminae.experiment import CompareJob
from laminae.experiments.probes.tables import TABLE_FILENAME, LaminarTable
from laminae.metrics.decoding import SCORES
from laminae.plots.overlay import depth_axis, run_style
from laminae.plots.style import plt

from matplotlib.ticker import PercentFormatter  # noqa: E402


def compare(job: CompareJob) -> plt.Figure:
    tables = [LaminarTable.read(folder / TABLE_FILENAME) for folder in job.metrics_dirs]
    return plot_probes_comparison(tables, job.labels, f"Sweep: linear decoding of the stimulus category in {len(tables)} runs")


def compare_pos(job: CompareJob) -> plt.Figure:
    """`pos_probes`' hook: the same overlay of its tables."""
    tables = [LaminarTable.read(folder / TABLE_FILENAME) for folder in job.metrics_dirs]
    return plot_probes_comparison(tables, job.labels, f"Sweep: linear decoding of the part of speech in {len(tables)} runs")


def plot_probes_comparison(tables: Sequence[LaminarTable], labels: Sequence[str], title: str,
                           site: str = "resid_post") -> plt.Figure:
    """One panel per score; per run its first site's line (resid_post when probed), band, chance."""
    xs, xlabel = depth_axis([t.n_layers for t in tables])
    fig, axes = plt.subplots(1, len(SCORES), figsize=(9, 3.8 + 0.25 * len(tables)), sharey=True)
    for ax, score in zip(axes, SCORES):
        for index, (table, x) in enumerate(zip(tables, xs)):
            chosen = site if table.has(site, score) else table.sites[0]
            style = run_style(index)
            label = labels[index] + ("" if chosen == site else f" ({chosen})")
            ax.plot(x, table.get(chosen, score), marker="o", markersize=2.5, linewidth=1.3, label=label, **style)
            ax.fill_between(x, table.get(chosen, score, "ci_low"), table.get(chosen, score, "ci_high"), alpha=0.12,
                            color=style["color"], linewidth=0)
            ax.axhline(table.get(chosen, score, "chance")[0], color=style["color"], linestyle=":", linewidth=0.9)
        ax.set_title(score.replace("_", " "))
        ax.set_xlabel(xlabel)
        ax.set_ylim(0, 1.02)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    axes[0].set_ylabel("held-out score (mean over folds)\ndotted: each run's chance")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 2), fontsize=8)
    fig.suptitle(title)
    return fig
