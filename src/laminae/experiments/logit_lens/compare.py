"""The logit lens across the runs of a sweep: median KL(final || layer), median log-prob of the
next token and top-1 agreement per layer, one line per run with its bootstrap CI band
(relative depth when the depths differ). Runs of random-weight models are labelled
"(RANDOM WEIGHTS)".

    >>> fig = compare(job)      # job.metrics_dirs: one metrics folder per run
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from laminae.experiment import CompareJob
from laminae.plots.overlay import depth_axis, run_style
from laminae.plots.style import NEUTRAL, plt

from .figures import stored_model
from .table import LensTable

PANELS = (("kl", "median", "KL(final \u2016 layer), nats\n(median over tokens)"),
          ("logprob", "median", "log p(next token), nats\n(median over tokens)"),
          ("top1_agreement", "mean", "top-1 = final top-1\n(fraction of tokens)"))


def compare(job: CompareJob) -> plt.Figure:
    tables = [LensTable.read(folder / "logit_lens.tsv") for folder in job.metrics_dirs]
    labels = [label + (" (RANDOM WEIGHTS)" if stored_model(folder)["random_weights"] else "")
              for label, folder in zip(job.labels, job.metrics_dirs)]
    return plot_lens_comparison(tables, labels, f"Sweep: logit lens in {len(tables)} runs")


def plot_lens_comparison(tables: Sequence[LensTable], labels: Sequence[str], title: str) -> plt.Figure:
    """Three panels side by side (module docstring)."""
    xs, xlabel = depth_axis([t.n_layers for t in tables])
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.8 + 0.25 * len(tables)), squeeze=False)
    for ax, (metric, statistic, ylabel) in zip(axes[0], PANELS):
        if metric == "kl":
            ax.axhline(0.0, color=NEUTRAL, linewidth=0.9, linestyle=":")
        for index, (table, x) in enumerate(zip(tables, xs)):
            style = run_style(index)
            ax.plot(x, table.get(metric, statistic), marker="o", markersize=2.5, linewidth=1.3, label=labels[index],
                    **style)
            low, high = table.get(metric, statistic, "ci_low"), table.get(metric, statistic, "ci_high")
            if np.isfinite(low).any():
                ax.fill_between(x, low, high, alpha=0.15, color=style["color"], linewidth=0)
        if metric == "top1_agreement":
            ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(ylabel)
        ax.set_xlabel(xlabel)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 2), fontsize=8)
    fig.suptitle(f"{title}\nbands: bootstrap CI over tokens")
    return fig
