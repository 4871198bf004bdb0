"""Parts of speech across the runs of a sweep: per layer, the ratio of the mean step length of
the first two tested tags (by default NOUN / ADJ), left, and of their mean cumulative path
length, right; one line per run (relative depth when depths differ), dots where the
permutation test's BH q-value is below the first run's `plot.alpha`.

    >>> fig = compare(job)      # job.metrics_dirs: one metrics folder per run
"""

from __future__ import annotations

import numpy as np

from laminae.experiment import CompareJob
from laminae.plots.overlay import depth_axis, run_style
from laminae.plots.style import NEUTRAL, plt

from .analysis import CONTRASTS_FILENAME, METRICS, read_contrasts
from .figures import METRIC_LABELS


def compare(job: CompareJob) -> plt.Figure:
    runs = [read_contrasts(folder / CONTRASTS_FILENAME) for folder in job.metrics_dirs]
    alpha = float(job.plot.get("alpha", 0.05))
    pair = next(((r["tag_a"], r["tag_b"]) for r in runs[0]), ("NOUN", "ADJ"))
    n_layers = [max((r["layer"] for r in rows), default=-1) + 1 for rows in runs]
    xs, xlabel = depth_axis(n_layers)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2 + 0.25 * len(runs)))
    for index, (rows, x, label) in enumerate(zip(runs, xs, job.labels)):
        style = run_style(index)
        for ax, metric in zip(axes, METRICS):
            chosen = sorted((r for r in rows if r["metric"] == metric and (r["tag_a"], r["tag_b"]) == pair),
                            key=lambda r: r["layer"])
            if not chosen:
                continue
            ratio = np.array([r["ratio"] for r in chosen])
            q = np.array([r["q_value"] for r in chosen])
            at = x[[r["layer"] for r in chosen]]
            ax.plot(at, ratio, linewidth=1.3, label=label, **style)
            ax.scatter(at[q < alpha], ratio[q < alpha], s=14, color=style["color"], zorder=3)
    for ax, metric in zip(axes, METRICS):
        ax.axhline(1.0, color=NEUTRAL, linestyle=":", linewidth=0.9)
        ax.set_ylabel(f"mean {pair[0]} / mean {pair[1]}\n{METRIC_LABELS[metric]}")
        ax.set_xlabel(xlabel)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 2), fontsize=8)
    fig.suptitle(f"Sweep: {pair[0]} vs {pair[1]} trajectory lengths in {len(runs)} runs\n"
                 f"dots: BH q < {alpha:g} (label-permutation test)")
    return fig
