"""The attention experiment's figures, drawn from `attention.tsv` and `attention_heads.tsv`:

- `attention_laminar`: per layer, the normalised entropy, the entropy (nats), the sink mass and
  the mean distance: mean over heads with its bootstrap CI, median over heads, and the heads'
  range (min-max) and interquartile range;
- `attention_heads`: layer x head heatmaps of the same four statistics (per head, the mean over
  queries);
- `attention_sink_norm`: the sink mass beside the first token's resid_post norm relative to the
  median token's, per layer, and one against the other.

    >>> plot(job)     # job: laminae.experiment.FigureJob -> figures/attention_*.png and .pdf
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from laminae.experiment import FigureJob
from laminae.plots.references import draw_references, merge_legend
from laminae.plots.style import NEUTRAL, OKABE_ITO, plt, run_title

from .table import HEADS_FILENAME, TABLE_FILENAME, AttentionTable, read_heads

LAMINAR_FIGURE, HEADS_FIGURE, SINK_FIGURE = "attention_laminar", "attention_heads", "attention_sink_norm"
#: (statistic, axis label, colour, fixed colour range or None) of the panels, in order
PANELS = (
    ("entropy_normalised", "normalised entropy  H / ln(keys seen)", OKABE_ITO[0], (0.0, 1.0)),
    ("entropy", "entropy H (nats)", OKABE_ITO[2], None),
    ("sink", "attention mass on the first token", OKABE_ITO[5], (0.0, 1.0)),
    ("distance", "mean attention distance (tokens)", OKABE_ITO[3], None),
)
SINK_COLOUR, NORM_COLOUR = OKABE_ITO[5], OKABE_ITO[0]


def distance_label(causal: bool) -> str:
    return "mean attention distance (tokens)\n" + ("sum_j p_j (q - j)" if causal else "sum_j p_j |q - j|")


def draw_profile(ax, table: AttentionTable, metric: str, colour: str, *, label_prefix: str = "") -> None:
    """Mean over heads (line, markers) with its CI band, median over heads (dashed), the heads'
    interquartile range (light band) and range (dotted lines)."""
    x = np.arange(table.n_layers)
    ax.fill_between(x, table.get(metric, "min"), table.get(metric, "max"), color=colour, alpha=0.07, linewidth=0,
                    label=f"{label_prefix}heads' range (min-max)")
    ax.fill_between(x, table.get(metric, "q25"), table.get(metric, "q75"), color=colour, alpha=0.16, linewidth=0,
                    label=f"{label_prefix}heads' interquartile range")
    low, high = table.get(metric, "mean", "low"), table.get(metric, "mean", "high")
    if np.isfinite(low).any():
        ax.errorbar(x, table.get(metric, "mean"), yerr=np.abs(np.vstack([table.get(metric, "mean") - low,
                                                                        high - table.get(metric, "mean")])),
                    color=colour, marker="o", markersize=3, linewidth=1.4, capsize=1.5, elinewidth=0.8,
                    label=f"{label_prefix}mean over heads ({table.interval(metric, 'mean').split(' (')[0]})")
    else:
        ax.plot(x, table.get(metric, "mean"), color=colour, marker="o", markersize=3, linewidth=1.4,
                label=f"{label_prefix}mean over heads")
    ax.plot(x, table.get(metric, "median"), color="black", linestyle="--", linewidth=0.9,
            label=f"{label_prefix}median over heads")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.5, table.n_layers - 0.5)


def plot_laminar(table: AttentionTable, context: Mapping[str, Any], causal: bool,
                 references: Sequence[Mapping[str, Any]] = ()) -> plt.Figure:
    """2 x 2 laminar profiles (module docstring)."""
    fig, axes = plt.subplots(2, 2, figsize=(9.5, 7.0), sharex=True)
    for ax, (metric, ylabel, colour, limits) in zip(axes.flat, PANELS):
        draw_profile(ax, table, metric, colour)
        if metric == "sink" and table.has("sink_uniform", "mean"):
            ax.plot(np.arange(table.n_layers), table.get("sink_uniform", "mean"), color=NEUTRAL, linestyle=":",
                    linewidth=1.2, label="uniform attention over the keys seen (1 / keys)")
        ax.set_ylabel(distance_label(causal) if metric == "distance" else ylabel)
        if limits is not None:
            ax.set_ylim(limits[0] - 0.03, limits[1] + 0.03)
        drawn = draw_references(ax, references, table.n_layers, series=(metric, f"{metric}:median_heads"))
        if drawn:
            ax.legend(*merge_legend(ax, drawn), fontsize=7, loc="best")
    for ax in axes[1]:
        ax.set_xlabel("layer")
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7.5)
    n = int(np.nanmax(table.get("entropy", "mean", "n")))
    fig.suptitle(run_title(context, f"Where the heads look: attention per layer ({n} queries per head)"))
    return fig


def plot_heads(heads: Mapping[str, Mapping[str, np.ndarray]], context: Mapping[str, Any], causal: bool,
               sort_heads: bool) -> plt.Figure:
    """2 x 2 layer x head heatmaps (module docstring); heads sorted by value per layer when asked."""
    n_layers, n_heads = heads["entropy"]["value"].shape
    height = min(10.0, 2.6 + 0.19 * n_layers)
    fig, axes = plt.subplots(2, 2, figsize=(9.5, 2 * height * 0.62 + 0.8), sharey=True)
    for ax, (metric, label, _, limits) in zip(axes.flat, PANELS):
        values = heads[metric]["value"]
        if sort_heads:
            values = np.sort(values, axis=1)
        vmin, vmax = limits if limits is not None else (np.nanmin(values), np.nanmax(values))
        image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis", vmin=vmin, vmax=vmax,
                          origin="upper")
        ax.grid(False)
        cbar = fig.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
        cbar.set_label(distance_label(causal) if metric == "distance" else label, fontsize=8)
        ax.set_xlabel("head (sorted by value within each layer)" if sort_heads else "head")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_heads, 12)))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_layers, 12)))
    for ax in axes[:, 0]:
        ax.set_ylabel("layer")
    fig.suptitle(run_title(context, "Attention per layer and head (mean over queries)"))
    return fig


def plot_sink_norm(table: AttentionTable, context: Mapping[str, Any]) -> plt.Figure:
    """Sink mass and first-token norm ratio per layer, side by side, and one against the other."""
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 4.0), gridspec_kw={"width_ratios": [1.15, 1.15, 0.9]})
    x = np.arange(table.n_layers)
    ax = axes[0]
    draw_profile(ax, table, "sink", SINK_COLOUR)
    if table.has("sink_uniform", "mean"):
        ax.plot(x, table.get("sink_uniform", "mean"), color=NEUTRAL, linestyle=":", linewidth=1.2,
                label="uniform over the keys seen")
    ax.set(xlabel="layer", ylabel="attention mass on the first token", ylim=(-0.03, 1.03),
           title="attention sink (query's view)")
    ax.legend(fontsize=6.5, loc="best")
    ax = axes[1]
    have_norm = table.has("first_token_norm_ratio", "median")
    if have_norm:
        ratio = table.get("first_token_norm_ratio", "median")
        low, high = table.get("first_token_norm_ratio", "median", "low"), table.get("first_token_norm_ratio", "median", "high")
        n_windows = int(np.nanmax(table.get("first_token_norm_ratio", "median", "n")))
        if n_windows > 1:
            ax.fill_between(x, low, high, color=NORM_COLOUR, alpha=0.18, linewidth=0, label="range over windows")
        ax.plot(x, ratio, color=NORM_COLOUR, marker="o", markersize=3, linewidth=1.4,
                label=f"median over {n_windows} window{'s' if n_windows != 1 else ''}")
        ax.axhline(1.0, color=NEUTRAL, linestyle=":", linewidth=1.0, label="as large as the median token")
        positive = np.concatenate([ratio, low, high])
        positive = positive[np.isfinite(positive) & (positive > 0)]
        if positive.size and positive.max() / positive.min() > 20:
            ax.set_yscale("log")
        ax.legend(fontsize=6.5, loc="best")
    else:
        why = "stimuli keep one query per word,\nnot the first token" if "stimuli" in context \
            else "one token per window?"
        ax.text(0.5, 0.5, f"no first-token norms\n({why})", ha="center", va="center", transform=ax.transAxes,
                color=NEUTRAL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="layer", ylabel="|resid_post| of the first token\n/ median |resid_post| of the others",
           title="first-token outlier (residual stream)")
    ax = axes[2]
    if have_norm:
        points = ax.scatter(table.get("first_token_norm_ratio", "median"), table.get("sink", "mean"), c=x,
                            cmap="viridis", s=22, edgecolors="black", linewidths=0.3, zorder=3)
        cbar = fig.colorbar(points, ax=ax, pad=0.02)
        cbar.set_label("layer")
        cbar.locator = MaxNLocator(integer=True)
        cbar.update_ticks()
        if axes[1].get_yscale() == "log":
            ax.set_xscale("log")
    ax.set(xlabel="first-token norm ratio (resid_post)", ylabel="sink mass (mean over heads)",
           title="one against the other, per layer")
    fig.suptitle(run_title(context, "Attention sink and the first token's outlier norm"))
    return fig


def category_profiles(blocks: Mapping[str, np.ndarray], statistic: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """On stimuli (one query and one block per word): per category, the mean over its words of
    the statistic's mean over heads, and its standard error over words; each (n_layers,)."""
    per_word = np.full(blocks["sums"].shape[:2], np.nan)                          # (n_words, n_layers)
    with np.errstate(invalid="ignore", divide="ignore"):
        word_heads = blocks["sums"][..., statistic] / blocks["counts"][..., statistic]   # (n_words, L, heads)
        used = blocks["block"] >= 0
        per_word[blocks["block"][used]] = np.nanmean(word_heads[blocks["block"][used]], axis=2)
    categories = np.asarray(blocks["category"])[used]
    out = {}
    for category in dict.fromkeys(categories):
        values = per_word[blocks["block"][used][categories == category]]           # (words, n_layers)
        n = np.sum(np.isfinite(values), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[str(category)] = (np.nanmean(values, axis=0), np.nanstd(values, axis=0, ddof=1) / np.sqrt(n))
    return out


def plot_categories(table: AttentionTable, blocks: Mapping[str, np.ndarray], context: Mapping[str, Any]) -> plt.Figure:
    """On stimuli, instead of the first-token norm (no position-0 rows): the sink mass and the
    normalised entropy per category of word, mean over heads and words with its standard error."""
    from laminae.metrics.attention import STATISTICS

    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), sharex=True)
    x = np.arange(table.n_layers)
    for ax, (metric, ylabel, _, limits) in zip(axes, (PANELS[2], PANELS[0])):
        for colour, (category, (mean, sem)) in zip(OKABE_ITO, category_profiles(blocks, STATISTICS.index(metric))
                                                    .items()):
            ax.fill_between(x, mean - sem, mean + sem, color=colour, alpha=0.2, linewidth=0)
            ax.plot(x, mean, color=colour, marker="o", markersize=2.5, linewidth=1.3, label=category)
        if metric == "sink" and table.has("sink_uniform", "mean"):
            ax.plot(x, table.get("sink_uniform", "mean"), color=NEUTRAL, linestyle=":", linewidth=1.2,
                    label="uniform over the keys seen")
        ax.set(xlabel="layer", ylabel=ylabel, ylim=(limits[0] - 0.03, limits[1] + 0.03))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("attention sink, per category")
    axes[1].set_title("spread of attention, per category")
    axes[0].legend(fontsize=7, loc="best", title="mean over heads and words\n(band: standard error over words)",
                   title_fontsize=7)
    fig.suptitle(run_title(context, "Where each category's words look (one query per word)"))
    return fig


def plot(job: FigureJob) -> None:
    """The plot hook: the three figures."""
    from .analysis import BLOCKS_FILENAME, read_attrs, read_blocks

    table = AttentionTable.read(job.metrics_dir / TABLE_FILENAME)
    heads = read_heads(job.metrics_dir / HEADS_FILENAME)
    causal = bool(read_attrs(job.metrics_dir / BLOCKS_FILENAME).get("causal", True))
    job.save(plot_laminar(table, job.context, causal, job.references), LAMINAR_FIGURE)
    job.save(plot_heads(heads, job.context, causal, bool(job.plot.get("sort_heads", False))), HEADS_FIGURE)
    blocks = read_blocks(job.metrics_dir / BLOCKS_FILENAME)[0] if "stimuli" in job.context else {}
    if "category" in blocks and not table.has("first_token_norm_ratio", "median"):
        job.save(plot_categories(table, blocks, job.context), SINK_FIGURE)
    else:
        job.save(plot_sink_norm(table, job.context), SINK_FIGURE)
