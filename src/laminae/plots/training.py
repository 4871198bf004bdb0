"""An experiment's headline metrics across training checkpoints: per metric, a checkpoint x
layer heatmap (checkpoints ordered by step on a log-spaced axis) beside the per-layer curves of
every checkpoint, coloured by step.

    >>> fig = plot_across_training({"RSA Q-K": [series_step1000, series_step8000, ...]},
    ...                            steps=[1000, 8000, 143000], title="...")

`series` holds one `laminae.series.Series` per checkpoint, in the order of `steps`, which need
not be sorted. Step 0 sits one log-decade below the smallest positive step, so the axis can stay
logarithmic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from matplotlib.ticker import MaxNLocator

from laminae.plots.style import DIVERGING_CMAP, plt
from laminae.series import Series

SEQUENTIAL_CMAP = "viridis"
LEGEND_MAX = 8   # more checkpoints: decade ticks and a colour bar instead of one label each


def step_positions(steps: Sequence[int]) -> np.ndarray:
    """log10 of each step (step 0: one decade below the smallest positive step)."""
    steps = np.asarray(steps, dtype=np.float64)
    positive = steps[steps > 0]
    floor = positive.min() / 10 if positive.size else 1.0
    return np.log10(np.where(steps > 0, steps, floor))


def row_edges(positions: np.ndarray) -> np.ndarray:
    """Edges of one heatmap row per sorted position: midpoints, half a gap beyond each end."""
    if positions.size == 1:
        return np.array([positions[0] - 0.5, positions[0] + 0.5])
    middle = (positions[1:] + positions[:-1]) / 2
    return np.concatenate([[positions[0] - (middle[0] - positions[0])], middle,
                           [positions[-1] + (positions[-1] - middle[-1])]])


def step_ticks(steps: Sequence[int], positions: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Every checkpoint labelled when there are few; else the decades they span (and step 0)."""
    if len(steps) <= LEGEND_MAX:
        return positions, [f"{step:,}" for step in steps]
    decades = np.arange(np.ceil(positions.min()), np.floor(positions.max()) + 1)
    ticks = [(p, f"{10 ** p:,.0f}") for p in decades if 10 ** p >= min(s for s in steps if s > 0)]
    if 0 in steps:
        ticks.insert(0, (positions[list(steps).index(0)], "0"))
    return np.array([p for p, _ in ticks]), [name for _, name in ticks]


def plot_across_training(series: Mapping[str, Sequence[Series]], steps: Sequence[int], title: str) -> plt.Figure:
    """One row per headline metric: (left) the checkpoint x layer heatmap, (right) the curves."""
    order = np.argsort(steps, kind="stable")
    sorted_steps = [int(steps[i]) for i in order]
    positions = step_positions(sorted_steps)
    edges = row_edges(positions)
    shade = plt.Normalize(positions.min(), positions.max() if positions.size > 1 else positions.min() + 1)
    colours = plt.get_cmap(SEQUENTIAL_CMAP)(0.9 * shade(positions))
    ticks, tick_labels = step_ticks(sorted_steps, positions)
    fig, axes = plt.subplots(len(series), 2, figsize=(11, 2.9 * len(series) + 0.8), squeeze=False,
                             gridspec_kw={"width_ratios": [1.15, 1]})
    for row, (label, per_run) in enumerate(series.items()):
        values = np.full((len(order), max(s.n_layers for s in per_run)), np.nan)   # (checkpoints, layers)
        for index, run in enumerate(order):
            values[index, : per_run[run].n_layers] = per_run[run].values
        heat, curves = axes[row]
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() < 0 < finite.max():
            bound = np.abs(finite).max()
            cmap, vmin, vmax = DIVERGING_CMAP, -bound, bound
        else:
            cmap, vmin, vmax = SEQUENTIAL_CMAP, None, None
        layer_edges = np.arange(values.shape[1] + 1) - 0.5
        mesh = heat.pcolormesh(layer_edges, edges, np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax,
                               shading="flat")
        fig.colorbar(mesh, ax=heat, label=label, pad=0.02)
        heat.set_yticks(ticks, tick_labels)
        heat.set_ylabel("training step (log scale)")
        heat.set_title(f"{label}, per checkpoint and layer")
        heat.grid(False)
        for index, colour in enumerate(colours):
            curves.plot(np.arange(values.shape[1]), values[index], color=colour, marker="o", markersize=2.5,
                        linewidth=1.2, label=f"step {sorted_steps[index]:,}")
        curves.set_ylabel(label)
        curves.set_title("one line per checkpoint")
        if len(order) > LEGEND_MAX:
            scale = plt.cm.ScalarMappable(norm=plt.Normalize(shade.vmin, shade.vmin + (shade.vmax - shade.vmin) / 0.9),
                                          cmap=SEQUENTIAL_CMAP)
            bar = fig.colorbar(scale, ax=curves, pad=0.02, label="training step (log scale)")
            bar.set_ticks(ticks, labels=tick_labels)
        for axis in (heat, curves):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if row == len(series) - 1:
            heat.set_xlabel("layer")
            curves.set_xlabel("layer")
    if len(order) <= LEGEND_MAX:
        handles, names = axes[0, 1].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 6), fontsize=8,
                   title="checkpoints (colour: later = lighter)")
    fig.suptitle(title)
    return fig
