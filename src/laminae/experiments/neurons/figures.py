"""Experiment `neurons`' figures, drawn from the metrics only:

    >>> plot(job)     # -> figures/neurons_laminar.png|pdf, figures/neurons_top.png|pdf

- `plot_laminar`: (a) the fraction of units selective for the categories (ANOVA, BH per layer)
  per layer, one line per site with its Clopper-Pearson band, the permutation null's fraction
  (grey band up to its upper percentile) and alpha (dotted); (b) one small panel per category:
  the fraction of units that prefer it and pass its one-vs-rest test.
- `plot_top`: each category's top units (rows, grouped by category) x the words (columns,
  grouped by category): each unit's activation z-scored across the words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from laminae.experiment import FigureJob
from laminae.experiments.neurons.analysis import ALL, TABLE_FILENAME, TOP_WORDS_FILENAME
from laminae.experiments.neurons.tables import LaminarTable, read_top_words
from laminae.plots.references import draw_references
from laminae.plots.style import COMPONENT_COLOURS, DIVERGING_CMAP, NEUTRAL, OKABE_ITO, plt, run_title

from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

LAMINAR_FIGURE = "neurons_laminar"
TOP_FIGURE = "neurons_top"
SITE_COLOURS = {"mlp_post": "#D55E00", **{c: COMPONENT_COLOURS[c] for c in "qkv"}}
SITE_NAMES = {"mlp_post": "MLP neurons (mlp_post)", "q": "Q dimensions", "k": "K dimensions", "v": "V dimensions"}


def plot(job: FigureJob) -> None:
    table = LaminarTable.read(job.metrics_dir / TABLE_FILENAME)
    fig = plot_laminar(table, job.context, job.settings, job.references, per_category=job.plot["per_category"])
    job.save(fig, LAMINAR_FIGURE)
    plt.close(fig)
    fig = plot_top(read_top_words(job.metrics_dir / TOP_WORDS_FILENAME), job.context, job.settings)
    job.save(fig, TOP_FIGURE)
    plt.close(fig)


def site_colour(site: str, index: int) -> str:
    return SITE_COLOURS.get(site, OKABE_ITO[index % len(OKABE_ITO)])


def plot_laminar(table: LaminarTable, context: Mapping[str, Any], settings: Mapping[str, Any],
                 references: Sequence[Mapping[str, Any]] = (), per_category: bool = True) -> plt.Figure:
    """(a) fraction selective per layer and site, with intervals and the null; (b) per category."""
    alpha, confidence = float(settings["alpha"]), float(settings["confidence"])
    categories = table.categories if per_category else ()
    fig = plt.figure(figsize=(8, 4.6 + (2.6 if categories else 0)), layout="constrained")
    grid = fig.add_gridspec(2 if categories else 1, max(1, len(categories)), height_ratios=[1.5, 1] if categories else None)
    ax = fig.add_subplot(grid[0, :])
    layers = np.arange(table.n_layers)
    null_high = np.nanmax(np.stack([table.get(s, ALL, "null_high") for s in table.sites]), axis=0)
    ax.fill_between(layers, 0, null_high, color=NEUTRAL, alpha=0.25, linewidth=0, step="mid",
                    label=f"permutation null: {100 * confidence:g}th percentile of the fraction")
    ax.axhline(alpha, color=NEUTRAL, linestyle=":", linewidth=1.0, label=f"α = {alpha:g} (a null unit's chance of p < α)")
    for index, site in enumerate(table.sites):
        colour = site_colour(site, index)
        ax.fill_between(layers, table.get(site, ALL, "ci_low"), table.get(site, ALL, "ci_high"), color=colour,
                        alpha=0.15, linewidth=0)
        ax.plot(layers, table.get(site, ALL, "fraction"), marker="o", markersize=3, linewidth=1.5, color=colour,
                label=SITE_NAMES.get(site, site))
    draw_references(ax, references, table.n_layers, series=tuple(f"fraction:{s}" for s in table.sites))
    ax.set_ylabel(f"fraction of units selective\n(ANOVA, BH q ≤ {alpha:g} per layer)")
    ax.set_xlabel("layer")
    _axes(ax, table.n_layers)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)
    ax.set_title("(a) units selective for the categories", loc="left", fontsize=10)
    first = None
    for col, category in enumerate(categories):
        sub = fig.add_subplot(grid[1, col], sharey=first)
        first = first or sub
        for index, site in enumerate(table.sites):
            colour = site_colour(site, index)
            sub.fill_between(layers, table.get(site, category, "ci_low"), table.get(site, category, "ci_high"),
                             color=colour, alpha=0.12, linewidth=0)
            sub.plot(layers, table.get(site, category, "fraction"), linewidth=1.2, color=colour)
        sub.set_title(f"({'b' if col == 0 else chr(ord('b') + col)}) prefer {category}", loc="left", fontsize=9)
        sub.set_xlabel("layer")
        if col == 0:
            sub.set_ylabel(f"fraction (one vs rest,\nBH q ≤ {alpha:g})")
        else:
            sub.tick_params(labelleft=False)
        _axes(sub, table.n_layers)
        sub.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    words = f"{settings.get('n_permutations', '?')} label permutations, Clopper-Pearson {100 * confidence:g}% bands"
    fig.suptitle(run_title(context, f"Category-selective units per layer ({words})"), fontsize=10)
    return fig


def _axes(ax: plt.Axes, n_layers: int) -> None:
    ax.set_xlim(-0.5, n_layers - 0.5)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def plot_top(rows: Sequence[Mapping[str, str]], context: Mapping[str, Any], settings: Mapping[str, Any]) -> plt.Figure:
    """Heatmap: top units (grouped by preferred category) x words (grouped by category), each
    unit's activations z-scored across the words."""
    units = list(dict.fromkeys((r["category"], int(r["rank"]), int(r["layer"]), int(r["unit"])) for r in rows))
    if not units:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no unit prefers any category", ha="center", va="center")
        ax.set_axis_off()
        return fig
    first = [r for r in rows if (r["category"], int(r["rank"])) == units[0][:2]]
    categories = list(dict.fromkeys(r["category"] for r in rows))
    word_categories = list(dict.fromkeys(r["word_category"] for r in first))
    order = sorted(range(len(first)), key=lambda i: word_categories.index(first[i]["word_category"]))
    words = [first[i]["word"] for i in order]
    matrix = np.empty((len(units), len(words)))
    by_unit: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        by_unit.setdefault((r["category"], int(r["rank"])), []).append(float(r["activation"]))
    for row, (category, rank, _, _) in enumerate(units):
        values = np.asarray(by_unit[(category, rank)])[order]
        sd = values.std()
        matrix[row] = (values - values.mean()) / sd if sd > 0 else 0.0
    limit = max(1.0, float(np.nanmax(np.abs(matrix))))
    fig, ax = plt.subplots(figsize=(2.5 + 0.17 * len(words), 1.6 + 0.24 * len(units)))
    image = ax.imshow(matrix, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.grid(False)
    ax.set_xticks(range(len(words)), words, rotation=90, fontsize=7)
    ax.set_yticks(range(len(units)), [f"L{layer} #{unit}" for _, _, layer, unit in units], fontsize=7)
    word_cats = [first[i]["word_category"] for i in order]
    for boundary in [i for i in range(1, len(words)) if word_cats[i] != word_cats[i - 1]]:
        ax.axvline(boundary - 0.5, color="black", linewidth=0.8)
    unit_cats = [u[0] for u in units]
    for boundary in [i for i in range(1, len(units)) if unit_cats[i] != unit_cats[i - 1]]:
        ax.axhline(boundary - 0.5, color="black", linewidth=0.8)
    for category in categories:            # category names above the word blocks and left of the unit blocks
        cols = [i for i, c in enumerate(word_cats) if c == category]
        if cols:
            ax.text(np.mean(cols), -0.7, category, ha="center", va="bottom", fontsize=8, fontweight="bold")
        rws = [i for i, c in enumerate(unit_cats) if c == category]
        if rws:   # left of the tick labels ("L<layer> #<unit>", about 4 points a character at size 7)
            ax.annotate(category, xy=(0, float(np.mean(rws))), xycoords=("axes fraction", "data"),
                        xytext=(-4.2 * max(len(t.get_text()) for t in ax.get_yticklabels()) - 20, 0),
                        textcoords="offset points", rotation=90, ha="center", va="center", fontsize=8,
                        fontweight="bold")
    fig.colorbar(image, ax=ax, shrink=0.8, label="activation, z-scored across words")
    site = settings.get("top_site", "mlp_post")
    fig.suptitle(run_title(context, f"Top {site} units per category (one-vs-rest Cohen's d), by word"), fontsize=10)
    return fig

