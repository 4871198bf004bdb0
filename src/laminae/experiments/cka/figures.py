"""The `cka` figure of one run: the layer x layer CKA heatmap beside the adjacent-layer profile.

    >>> plot(job)     # job: laminae.experiment.FigureJob -> figures/cka_layers.png|pdf
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from laminae.experiment import FigureJob
from laminae.plots.style import NEUTRAL, OKABE_ITO, plt, run_title

HEATMAP_CMAP = "magma"


def layer_ticks(n_layers: int) -> np.ndarray:
    """Every layer up to 16, else about 12 evenly spaced whole layers, always the last."""
    step = 1 if n_layers <= 16 else int(np.ceil(n_layers / 12))
    ticks = np.arange(0, n_layers, step)
    return ticks if ticks[-1] == n_layers - 1 else np.append(ticks[ticks < n_layers - step / 2], n_layers - 1)


def heatmap(ax: plt.Axes, matrix: np.ndarray, *, xlabel: str, ylabel: str, vmin: float = 0.0,
            vmax: float = 1.0, xticks: Sequence[int] | None = None, yticks: Sequence[int] | None = None):
    """A CKA matrix (rows: layers of the y axis) with layer 0 at the bottom; returns the image."""
    image = ax.imshow(np.ma.masked_invalid(matrix), origin="lower", cmap=HEATMAP_CMAP, vmin=vmin, vmax=vmax,
                      interpolation="nearest", aspect="auto")
    ax.set_xticks(layer_ticks(matrix.shape[1]) if xticks is None else xticks)
    ax.set_yticks(layer_ticks(matrix.shape[0]) if yticks is None else yticks)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(False)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(True)
    return image


def colour_floor(*matrices: np.ndarray) -> float:
    """The colour scale's lower end: the data's minimum rounded down to a tenth (so the structure of
    matrices that are all high stays visible), negative values included; the top is always 1."""
    low = min(float(np.nanmin(m)) for m in matrices)
    return float(np.floor(min(low, 0.9) * 10) / 10)


def plot(job: FigureJob) -> None:
    from laminae.experiments.cka.analysis import TABLE_FILENAME, adjacent, read_table, settings_line

    table = read_table(job.metrics_dir / TABLE_FILENAME)
    matrix = table["cka"]
    n_layers = matrix.shape[0]
    site = job.settings["site"]
    unit = "tokens" if "corpus" in job.context else "words"
    confidence = f"{100 * float(job.settings['confidence']):g}%"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.6), gridspec_kw={"width_ratios": [1.05, 1]})
    image = heatmap(left, matrix, xlabel=f"layer ({site})", ylabel=f"layer ({site})", vmin=colour_floor(matrix))
    fig.colorbar(image, ax=left, label=f"{job.settings['estimator']} CKA", pad=0.02, shrink=0.9)
    left.set_title("every layer against every layer")

    layers = np.arange(n_layers - 1)
    value = adjacent(matrix)[:-1]
    colour = OKABE_ITO[0]
    right.fill_between(layers + 0.5, adjacent(table["ci_low"])[:-1], adjacent(table["ci_high"])[:-1], color=colour,
                       alpha=0.2, linewidth=0, label=f"{confidence} bootstrap CI ({unit})")
    right.plot(layers + 0.5, value, color=colour, marker="o", markersize=3, linewidth=1.4, label="CKA(l, l + 1)")
    null_high = adjacent(table["null_high"])[:-1]
    if np.isfinite(null_high).any():
        right.plot(layers + 0.5, null_high, color=NEUTRAL, linestyle=":", linewidth=1.1,
                   label=f"permutation null, upper {confidence}")
    to_last = table["cka"][:, -1]
    right.plot(np.arange(n_layers), to_last, color=OKABE_ITO[1], marker="s", markersize=2.5, linewidth=1.1,
               linestyle="--", label="CKA(l, last layer)")
    right.axhline(0.0, color=NEUTRAL, linewidth=0.8)
    right.set_xlim(-0.5, n_layers - 0.5)
    right.set_ylim(min(-0.05, float(np.nanmin([np.nanmin(value), np.nanmin(to_last)])) - 0.05), 1.05)
    right.set_xlabel("layer (adjacent pairs drawn between their layers)")
    right.set_ylabel(f"{job.settings['estimator']} CKA")
    right.set_title("neighbouring layers and the last layer")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=7.5)
    rows = "the corpus's tokens" if unit == "tokens" else "the stimuli's words"
    fig.suptitle(run_title(job.context, f"Layer x layer {settings_line(job.settings)} (rows: {rows})"))
    job.save(fig, "cka_layers")
