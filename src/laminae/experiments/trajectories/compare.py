"""Trajectories across the runs of a sweep: per layer, the median step length in the full space
(left, log axis when the runs span more than two decades) and the median turning angle (right),
one line per run with its 25-75 % band (relative depth when depths differ).

    >>> fig = compare(job)      # job.metrics_dirs: one metrics folder per run
"""

from __future__ import annotations

import numpy as np

from laminae.experiment import CompareJob
from laminae.plots.overlay import depth_axis, run_style
from laminae.plots.style import NEUTRAL, plt

from .analysis import TABLE_FILENAME, TOKENS_FILENAME, read_table
from .figures import LOG_SPAN


def _random(folder) -> bool:
    import h5py

    with h5py.File(folder / TOKENS_FILENAME, "r") as handle:
        return bool(handle.attrs.get("activations_random_weights", False))


def compare(job: CompareJob) -> plt.Figure:
    tables = [read_table(folder / TABLE_FILENAME) for folder in job.metrics_dirs]
    labels = [label + (" (RANDOM WEIGHTS)" if _random(folder) else "")
              for label, folder in zip(job.labels, job.metrics_dirs)]
    n_layers = [len(t["step_full"]["layer"]) for t in tables]
    xs, xlabel = depth_axis(n_layers)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2 + 0.25 * len(tables)))
    medians = []
    for index, (table, x) in enumerate(zip(tables, xs)):
        style = run_style(index)
        for ax, metric in ((axes[0], "step_full"), (axes[1], "turn_full")):
            columns = table[metric]
            at = x[columns["layer"].astype(int)]
            ax.plot(at, columns["q50"], marker="o", markersize=2.5, linewidth=1.3, label=labels[index], **style)
            ax.fill_between(at, columns["q25"], columns["q75"], color=style["color"], alpha=0.15, linewidth=0)
        medians.append(table["step_full"]["q50"])
    values = np.concatenate(medians)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size and values.max() / values.min() > LOG_SPAN:
        axes[0].set_yscale("log")
    axes[0].set_ylabel("median step length ||x_(l+1) \u2212 x_l|| (full space)")
    axes[1].axhline(90, color=NEUTRAL, linestyle=":", linewidth=0.9)
    axes[1].set_ylim(0, 180)
    axes[1].set_ylabel("median turning angle (\u00b0)")
    for ax in axes:
        ax.set_xlabel(xlabel)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 2), fontsize=8)
    fig.suptitle(f"Sweep: trajectory step lengths and turning angles in {len(tables)} runs\n"
                 "bands: 25-75 % of tokens")
    return fig
