"""Part-of-speech figures, from `pos.tsv` and `pos_contrasts.tsv`:

    >>> plot(job)   # -> figures/pos_laminar.png|pdf, figures/pos_contrasts.png|pdf

- `plot_laminar`: per layer, for every tested tag, (a) the mean step length of its tokens
  (block l's step), (b) that mean relative to every included token's mean at the layer, (c) the
  mean cumulative path length up to layer l, (d) its relative value; bands: bootstrap intervals.
- `plot_contrasts`: for every pair of tested tags (rows) and layer (columns), log2 of the ratio
  of their mean step (left) and mean cumulative length (right), red: the first tag longer;
  a dot where the permutation test's Benjamini-Hochberg q-value is below `alpha`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from laminae.experiment import FigureJob
from laminae.plots.style import DIVERGING_CMAP, NEUTRAL, OKABE_ITO, run_title

from .analysis import CONTRASTS_FILENAME, METRICS, TABLE_FILENAME, read_contrasts, read_table

import matplotlib.pyplot as plt  # noqa: E402  (after style, which selects the Agg backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

LAMINAR_FIGURE = "pos_laminar"
CONTRASTS_FIGURE = "pos_contrasts"
LOG_SPAN = 100.0
METRIC_LABELS = {"step": "block l's step ||x_(l+1) \u2212 x_l||", "cumulative": "path length up to layer l"}


def tested_tags(table: Mapping[tuple[str, str], Mapping[str, np.ndarray]], tags: Sequence[str], min_tokens: int
                ) -> list[str]:
    return [tag for tag in tags if ("step", tag) in table and table["step", tag]["n"][0] >= min_tokens]


def tag_colours(tags: Sequence[str]) -> dict[str, Any]:
    palette = OKABE_ITO[:7] + ["#555555"] + list(plt.get_cmap("tab20").colors)
    return {tag: palette[i % len(palette)] for i, tag in enumerate(tags)}


def plot_laminar(table, tags: Sequence[str], context: Mapping[str, Any], log_setting: Any, unit: str,
                 confidence: float) -> plt.Figure:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.4), sharex=True)
    colours = tag_colours(tags)
    for row, metric in enumerate(METRICS):
        means = []
        for tag in tags:
            columns = table[metric, tag]
            x = np.arange(len(columns["mean"]))
            label = f"{tag} (n = {int(columns['n'][0])})"
            for ax, key in ((axes[row, 0], ""), (axes[row, 1], "relative")):
                value = columns[key or "mean"]
                low, high = columns[f"{key}_low" if key else "ci_low"], columns[f"{key}_high" if key else "ci_high"]
                ax.plot(x, value, color=colours[tag], marker="o", markersize=2.6, linewidth=1.2, label=label)
                if np.isfinite(low).any():
                    ax.fill_between(x, low, high, color=colours[tag], alpha=0.14, linewidth=0)
            means.append(columns["mean"])
        values = np.concatenate(means) if means else np.array([])
        values = values[np.isfinite(values) & (values > 0)]
        log = log_setting is True or (log_setting == "auto" and values.size and values.max() / values.min() > LOG_SPAN)
        if log:
            axes[row, 0].set_yscale("log")
        axes[row, 0].set_ylabel(f"mean {METRIC_LABELS[metric]}" + (" (log)" if log else ""))
        axes[row, 1].axhline(1.0, color=NEUTRAL, linestyle=":", linewidth=0.9)
        axes[row, 1].set_ylabel(f"relative to all tokens' mean\n({metric})")
        letter = "ab" if row == 0 else "cd"
        axes[row, 0].set_title(f"({letter[0]}) {METRIC_LABELS[metric]}", fontsize=9)
        axes[row, 1].set_title(f"({letter[1]}) the same / mean over every included token", fontsize=9)
    for ax in axes[1]:
        ax.set_xlabel("layer l")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.suptitle(run_title(context, f"Trajectory step lengths by part of speech (bands: {100 * confidence:g}% "
                                    f"bootstrap CI over {unit})"))
    return fig


def plot_contrasts(contrasts: Sequence[Mapping[str, Any]], context: Mapping[str, Any], alpha: float) -> plt.Figure:
    pairs = list(dict.fromkeys((r["tag_a"], r["tag_b"]) for r in contrasts))
    n_layers = max((r["layer"] for r in contrasts), default=-1) + 1
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.6 + 0.27 * max(len(pairs), 1)), sharey=True)
    grids = {}
    for metric in METRICS:
        ratio = np.full((len(pairs), n_layers), np.nan)
        significant = np.zeros((len(pairs), n_layers), dtype=bool)
        for r in contrasts:
            if r["metric"] == metric:
                i = pairs.index((r["tag_a"], r["tag_b"]))
                ratio[i, r["layer"]] = np.log2(r["ratio"]) if r["ratio"] > 0 else np.nan
                significant[i, r["layer"]] = r["q_value"] < alpha
        grids[metric] = ratio, significant
    # the colour scale: the 98th percentile of |log2 ratio| (a few outlier cells saturate, marked by the bar's ends)
    magnitudes = np.concatenate([np.abs(g[0][np.isfinite(g[0])]) for g in grids.values()])
    limit = float(np.percentile(magnitudes, 98)) if magnitudes.size and np.percentile(magnitudes, 98) > 0 else 1.0
    image = None
    for ax, metric in zip(axes, METRICS):
        ratio, significant = grids[metric]
        image = ax.imshow(ratio, aspect="auto", cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
        rows, cols = np.nonzero(significant)
        ax.scatter(cols, rows, s=9, color="black", marker="o", edgecolors="white", linewidths=0.4)
        ax.set_title(METRIC_LABELS[metric], fontsize=9)
        ax.set_xlabel("layer l")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(False)
    axes[0].set_yticks(range(len(pairs)), [f"{a} vs {b}" for a, b in pairs], fontsize=7.5)
    if image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=0.9, pad=0.01, extend="both")
        bar.set_label("log2(mean of first tag / mean of second)")
    n_tests = sum(1 for r in contrasts if r["metric"] == "step")
    fig.suptitle(run_title(context, f"Pairwise contrasts of parts of speech; dots: BH q < {alpha:g} over the "
                                    f"{n_tests} layer x pair tests of each panel"))
    return fig


def plot(job: FigureJob) -> None:
    table = read_table(job.metrics_dir / TABLE_FILENAME)
    contrasts = read_contrasts(job.metrics_dir / CONTRASTS_FILENAME)
    settings = job.settings
    tags = tested_tags(table, settings.get("tags", sorted({t for _, t in table})), settings.get("min_tokens", 1))
    fig = plot_laminar(table, tags, job.context, job.plot.get("log_lengths", "auto"),
                       settings.get("bootstrap_unit", "tokens"), float(settings.get("confidence", 0.95)))
    job.save(fig, LAMINAR_FIGURE)
    plt.close(fig)
    fig = plot_contrasts(contrasts, job.context, float(job.plot.get("alpha", 0.05)))
    job.save(fig, CONTRASTS_FIGURE)
    plt.close(fig)
