"""Experiment `probes`' figure: the laminar decoding profile.

    >>> plot(job)       # -> figures/probes_laminar.png and .pdf

Two panels, accuracy and balanced accuracy. Per site: the mean over folds (line; filled markers
where the layer's BH q <= plot.alpha) with its t interval over folds (band) and the per-fold
scores (dots); the permutation null's central band (grey) and mean (grey dashes); the
majority-class chance level (dotted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from laminae.experiment import FigureJob
from laminae.experiments.probes.tables import FOLDS_FILENAME, TABLE_FILENAME, LaminarTable
from laminae.metrics.decoding import SCORES
from laminae.plots.style import COMPONENT_COLOURS, NEUTRAL, plt, run_title
from laminae.store import read_tsv

from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

SCORE_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}


def plot(job: FigureJob) -> None:
    draw(job, "the stimulus category", "probes_laminar")


def draw(job: FigureJob, what: str, name: str) -> None:
    """The profile of `job.metrics_dir`'s tables, saved as `name` (shared with `pos_probes`)."""
    table = LaminarTable.read(job.metrics_dir / TABLE_FILENAME)
    folds = read_tsv(job.metrics_dir / FOLDS_FILENAME)
    fig = plot_profile(table, folds, float(job.plot["alpha"]),
                       run_title(job.context, f"Linear decoding of {what} per layer"), job.settings)
    job.save(fig, name)


def fold_scores(folds: Sequence[Mapping[str, str]], site: str, score: str, n_layers: int) -> np.ndarray:
    """(n_layers, n_folds) from the per-fold table's rows."""
    picked = [r for r in folds if r["site"] == site and r["score"] == score]
    n_folds = max(int(r["fold"]) for r in picked) + 1
    out = np.full((n_layers, n_folds), np.nan)
    for r in picked:
        out[int(r["layer"]), int(r["fold"])] = float(r["value"])
    return out


def plot_profile(table: LaminarTable, folds: Sequence[Mapping[str, str]], alpha: float, title: str,
                 settings: Mapping[str, Any]) -> plt.Figure:
    layers = np.arange(table.n_layers)
    fig, axes = plt.subplots(1, len(SCORES), figsize=(10, 4.3), sharey=True)
    for ax, score in zip(axes, SCORES):
        first = table.sites[0]
        null_low, null_high = table.get(first, score, "null_low"), table.get(first, score, "null_high")
        if np.isfinite(null_low).any():
            ax.fill_between(layers, null_low, null_high, color=NEUTRAL, alpha=0.22, linewidth=0,
                            label=f"permutation null, central {100 * settings.get('confidence', 0.95):g}%")
            ax.plot(layers, table.get(first, score, "null_mean"), color=NEUTRAL, linestyle="--", linewidth=0.9,
                    label="permutation null, mean")
        ax.axhline(table.get(first, score, "chance")[0], color="black", linestyle=":", linewidth=1.0,
                   label="chance: always the majority class")
        for index, site in enumerate(table.sites):
            colour = COMPONENT_COLOURS.get(site, f"C{index}")
            value = table.get(site, score)
            ax.fill_between(layers, table.get(site, score, "ci_low"), table.get(site, score, "ci_high"),
                            color=colour, alpha=0.18, linewidth=0)
            per_fold = fold_scores(folds, site, score, table.n_layers)
            jitter = np.linspace(-0.15, 0.15, per_fold.shape[1])
            ax.scatter((layers[:, None] + jitter[None, :]).ravel(), per_fold.ravel(), s=4, color=colour,
                       alpha=0.35, linewidths=0, zorder=2)
            ax.plot(layers, value, color=colour, linewidth=1.5, zorder=3,
                    label=f"{site}: mean over folds, {100 * settings.get('confidence', 0.95):g}% t interval")
            significant = table.get(site, score, "q_value") <= alpha
            ax.plot(layers[significant], value[significant], "o", color=colour, markersize=4, zorder=4)
            ax.plot(layers[~significant], value[~significant], "o", markerfacecolor="white", color=colour,
                    markersize=4, zorder=4)
        ax.set_title(SCORE_NAMES[score])
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylim(0, 1.03)
    axes[0].set_ylabel(f"held-out score ({settings.get('n_folds', '?')}-fold cross-validation)")
    handles, names = axes[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], marker="o", color="black", linestyle="", markersize=4))
    names.append(f"filled: BH q \u2264 {alpha:g} (open: not)")
    fig.legend(handles, names, loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle(title)
    return fig
