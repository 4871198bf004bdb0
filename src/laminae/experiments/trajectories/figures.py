"""Trajectory figures, from `trajectories.tsv`, `trajectories_pca.tsv` and the .h5's selection:

    >>> plot(job)   # -> figures/trajectories_pca.png|pdf, figures/trajectories_steps.png|pdf

- `plot_pca`: the selected tokens' trajectories in the plane of the first two principal
  components (of every included token's points); each point coloured by its depth (colourbar:
  0 = the embedding, l = after block l - 1), a grey line joining a token's points in order, a
  square at the embedding and the token's text at its last point.
- `plot_steps`: per layer, the distribution over tokens of (a) block l's step length in the full
  space, (b) the same step in the PCA plane, (c) the turning angle between consecutive steps
  (full space solid, PCA dashed), (d) the path length up to block l: the median with bands of
  the 25-75 % and 5-95 % quantiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from laminae.experiment import FigureJob
from laminae.plots.style import NEUTRAL, OKABE_ITO, run_title

from .analysis import PCA_FILENAME, TABLE_FILENAME, TOKENS_FILENAME, read_table, read_tokens

import matplotlib.pyplot as plt  # noqa: E402  (after style, which selects the Agg backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

PCA_FIGURE = "trajectories_pca"
STEPS_FIGURE = "trajectories_steps"
LOG_SPAN = 100.0
SPACE_COLOURS = {"full": OKABE_ITO[0], "pca": OKABE_ITO[5]}
SPACE_LABELS = {"full": "full space", "pca": "PCA plane"}
DEPTH_CMAP = "viridis"


def token_label(text: str) -> str:
    """A token's text for a label: spaces shown as '␣', newlines as '⏎', empty as '∅'."""
    shown = text.replace(" ", "\u2423").replace("\n", "\u23ce")
    return shown if shown else "\u2205"


def use_log(setting: Any, values: np.ndarray) -> bool:
    if setting in (True, False):
        return bool(setting)
    finite = values[np.isfinite(values) & (values > 0)]
    return bool(finite.size) and finite.max() / finite.min() > LOG_SPAN


def plot_pca(arrays: Mapping[str, Any], attrs: Mapping[str, Any], pca_table: list[dict[str, str]],
             context: Mapping[str, Any]) -> plt.Figure:
    selected = arrays["selected"]
    coords = np.asarray(selected["coords"])                # (n_selected, L + 1, k)
    n_points = coords.shape[1] if coords.ndim == 3 else 0
    fig, ax = plt.subplots(figsize=(7.2, 5.6))
    norm = plt.Normalize(0, max(n_points - 1, 1))
    scatter = None
    for token, path in zip(selected["token"], coords):
        ax.plot(path[:, 0], path[:, 1], color=NEUTRAL, linewidth=0.7, alpha=0.6, zorder=1)
        scatter = ax.scatter(path[:, 0], path[:, 1], c=np.arange(n_points), cmap=DEPTH_CMAP, norm=norm, s=14,
                             edgecolors="none", zorder=2)
        ax.scatter(path[:1, 0], path[:1, 1], marker="s", s=22, facecolors="none", edgecolors="black",
                   linewidths=0.7, zorder=3)
        ax.annotate(token_label(token), path[-1, :2], xytext=(3, 3), textcoords="offset points", fontsize=7.5,
                    zorder=4)
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=ax, pad=0.01)
        bar.set_label("depth (0 = embedding, l = output of block l \u2212 1)")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ratio = {int(r["component"]): float(r["explained_ratio"]) for r in pca_table}
    ax.set_xlabel(f"PC1 ({100 * ratio.get(1, np.nan):.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * ratio.get(2, np.nan):.1f}% of variance)")
    chosen = attrs.get("selection", f"{len(selected['token'])} tokens")
    fit_on = "every token but each window's first" if attrs.get("exclude_first_token") else "every token"
    n_fit = int(pca_table[0]["n_points"]) if pca_table else 0
    ax.set_title(f"{chosen}; PCA fit on {fit_on} x depth ({n_fit} points); \u25a1 = embedding", fontsize=8.5)
    fig.suptitle(run_title(context, "State-space trajectories through the layers (first two PCs)"))
    return fig


def _bands(ax: plt.Axes, x: np.ndarray, columns: Mapping[str, np.ndarray], colour: str, label: str,
           linestyle: str = "-") -> None:
    ax.fill_between(x, columns["q05"], columns["q95"], color=colour, alpha=0.12, linewidth=0)
    ax.fill_between(x, columns["q25"], columns["q75"], color=colour, alpha=0.28, linewidth=0)
    ax.plot(x, columns["q50"], color=colour, linestyle=linestyle, marker="o", markersize=2.8, linewidth=1.3,
            label=label)


def plot_steps(table: Mapping[str, Mapping[str, np.ndarray]], context: Mapping[str, Any],
               plot_settings: Mapping[str, Any], n_tokens: int) -> plt.Figure:
    fig, grid = plt.subplots(2, 2, figsize=(11, 7.6), sharex=True)
    axes = grid.ravel()
    for ax, space, letter in ((axes[0], "full", "a"), (axes[1], "pca", "b")):
        columns = table[f"step_{space}"]
        _bands(ax, columns["layer"], columns, SPACE_COLOURS[space], "median")
        ax.plot(columns["layer"], columns["value"], color="black", linestyle=":", linewidth=1.0, label="mean")
        if use_log(plot_settings["log_steps"], np.concatenate([columns["q05"], columns["q95"]])):
            ax.set_yscale("log")
            ax.set_ylabel("step length ||x_(l+1) \u2212 x_l|| (log)")
        else:
            ax.set_ylabel("step length ||x_(l+1) \u2212 x_l||")
        ax.set_title(f"({letter}) block l's step, {SPACE_LABELS[space]}", fontsize=9)
    ax = axes[2]
    for space, style in (("full", "-"), ("pca", "--")):
        if f"turn_{space}" in table and len(table[f"turn_{space}"]["layer"]):
            columns = table[f"turn_{space}"]
            _bands(ax, columns["layer"], columns, SPACE_COLOURS[space], f"median, {SPACE_LABELS[space]}", style)
    ax.axhline(90, color=NEUTRAL, linestyle=":", linewidth=0.9, label="90\u00b0 (orthogonal steps)")
    ax.set_ylim(0, 180)
    ax.set_yticks([0, 45, 90, 135, 180])
    ax.set_ylabel("angle between steps of blocks l\u22121 and l (\u00b0)")
    ax.set_title("(c) turning angle (curvature)", fontsize=9)
    ax = axes[3]
    for space, style in (("full", "-"), ("pca", "--")):
        if f"length_{space}" in table:
            columns = table[f"length_{space}"]
            _bands(ax, columns["layer"], columns, SPACE_COLOURS[space], f"median, {SPACE_LABELS[space]}", style)
    ax.set_ylabel("path length up to block l (sum of steps)")
    ax.set_title("(d) path length so far (last layer: the whole trajectory)", fontsize=9)
    for ax in grid[1]:
        ax.set_xlabel("layer l")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7.5, loc="best")
    axes[2].legend(fontsize=7.5, loc="best")
    axes[3].legend(fontsize=7.5, loc="upper left")
    fig.suptitle(run_title(context, f"Step lengths, turning angles and path lengths by depth ({n_tokens} tokens; bands: 25-75 % "
                                    "and 5-95 % of tokens)"))
    return fig


def plot(job: FigureJob) -> None:
    from laminae.store import read_tsv

    table = read_table(job.metrics_dir / TABLE_FILENAME)
    arrays, attrs = read_tokens(job.metrics_dir / TOKENS_FILENAME)
    pca_table = read_tsv(job.metrics_dir / PCA_FILENAME)
    fig = plot_pca(arrays, attrs, pca_table, job.context)
    job.save(fig, PCA_FIGURE)
    plt.close(fig)
    n_tokens = int(table["step_full"]["n"][0]) if len(table["step_full"]["n"]) else 0
    fig = plot_steps(table, job.context, job.plot, n_tokens)
    job.save(fig, STEPS_FIGURE)
    plt.close(fig)
