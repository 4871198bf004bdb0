"""Experiment-1 figures, drawn from the metrics outputs only (never the activations):

    >>> plot(job)      # -> figures/qkv_laminar.png|pdf, figures/qkv_similarity.png|pdf
    >>>                #    (and figures/qkv_heads.png|pdf with qkv.resolution=heads: heads_figure)

- `plot_laminar`: three panels over layers: (a) RSA of each component pair with its bootstrap
  CI band; (b) selectivity of each component with its permutation-null band, the
  no-selectivity line and markers where the Benjamini-Hochberg q-value is < 0.05 (the family:
  every component at every layer); (c) per-category selectivity as small multiples, one panel
  per category, one line per component (colour means component throughout), markers by q within
  that category's family.
- `plot_similarity`: the cosine-similarity matrices, one row per component and one column per
  layer of `plot.qkv.similarity_layers`, words sorted by category with the blocks outlined,
  one diverging colour scale centred on 0 shared by every panel.

Both functions return the figure and its axes without saving; the `plot` hook validates the
plot settings first (a bad layer index raises `ConfigError`), then saves each figure.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from laminae.experiment import FigureJob
from laminae.experiments.qkv.analysis import SIMILARITY_FILENAME, TABLE_FILENAME, LaminarTable
from laminae.experiments.qkv.heads import HEADS_FILENAME, resolution
from laminae.experiments.qkv.heads_figure import HEADS_FIGURE, HeadsTable, plot_heads
from laminae.experiments.qkv.plotting import (ALPHA, NULL_LINE, display_name, nice_log_ticks,
                                              settings_line)
from laminae.config.validate import resolve_layer
from laminae.errors import InputFileError
from laminae.experiments.qkv.measures import canonical_pair
from laminae.plots.references import draw_references
from laminae.plots.style import COMPONENT_COLOURS, DIVERGING_CMAP, NEUTRAL, OKABE_ITO, run_title

import matplotlib.pyplot as plt  # noqa: E402  (after style, which selects the Agg backend)
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

log = logging.getLogger(__name__)
LAMINAR_FIGURE = "qkv_laminar"
SIMILARITY_FIGURE = "qkv_similarity"
LAYERS_KEY = "qkv.plot.similarity_layers"
BAND_ALPHA = 0.18                 # shading of CI / null bands
UNSTABLE_COLOUR = "#D55E00"       # hatching of layers where the ratio form is not interpretable


# ------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class SimilarityData:
    """`similarity.h5`: matrices per component (n_layers, n, n), words, labels, categories, attrs."""

    matrices: dict[str, np.ndarray]
    words: list[str]
    labels: np.ndarray
    categories: list[str]
    attrs: dict[str, Any]

    @property
    def n_layers(self) -> int:
        return next(iter(self.matrices.values())).shape[0]

    @classmethod
    def read(cls, path: str | Path, components: Sequence[str] | None = None) -> "SimilarityData":
        import h5py

        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "not found; run the qkv_metrics rule first")
        try:
            with h5py.File(path, "r") as h5:
                attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in h5.attrs.items()}
                stored = [name for name in h5 if name not in ("labels", "words", "categories")]
                if components is None:
                    listed = attrs.get("components")
                    components = json.loads(listed) if isinstance(listed, str) else stored
                missing = [c for c in components if c not in h5]
                if missing:
                    raise InputFileError(path, f"has no similarity matrices for {missing} (stored: {stored})")
                matrices = {c: h5[c][()] for c in components}
                words = [w.decode() if isinstance(w, bytes) else str(w) for w in h5["words"][()]]
                categories = [c.decode() if isinstance(c, bytes) else str(c) for c in h5["categories"][()]]
                labels = np.asarray(h5["labels"][()], dtype=np.int64)
        except OSError:
            raise InputFileError(path, "is not a readable HDF5 file (truncated or corrupt); rerun qkv_metrics") from None
        except KeyError as error:
            raise InputFileError(path, f"lacks the dataset {error}; not written by laminae") from None
        return cls(matrices=matrices, words=words, labels=labels, categories=categories, attrs=attrs)

    def category_order(self) -> np.ndarray:
        """Item indices sorted by category (the categories' order), stable within a category."""
        return np.argsort(self.labels, kind="stable")


# ----------------------------------------------------------------------------------- helpers
def _colour(component: str, fallback_index: int) -> str:
    return COMPONENT_COLOURS.get(component, OKABE_ITO[fallback_index % len(OKABE_ITO)])


def _analysis_settings(context: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The analysis settings, preferring what the metrics file records over the run context."""
    settings = dict(context.get("analysis") or {})
    if attrs:
        for key, attr in (("selectivity", "selectivity_form"), ("rsa_method", "rsa_method"),
                          ("n_permutations", "n_permutations"), ("n_bootstrap", "n_bootstrap"),
                          ("confidence", "confidence"), ("zscore", "zscore")):
            if attr in attrs:
                value = attrs[attr]
                settings[key] = value.item() if hasattr(value, "item") else value
    return settings


def _percent(confidence: float) -> str:
    return f"{100 * float(confidence):g}%"


def _panel_label(ax: plt.Axes, letter: str, y: float = 1.02) -> None:
    ax.text(-0.01, y, f"({letter})", transform=ax.transAxes, fontsize=11, fontweight="bold",
            ha="right", va="bottom")


def _significant(q: np.ndarray) -> np.ndarray:
    """Where the q-value (Benjamini-Hochberg) is below ALPHA; NaN (no test) never is."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(q) & (q < ALPHA)


# ----------------------------------------------------------------------------- laminar figure
def plot_laminar(table: LaminarTable | str | Path, context: Mapping[str, Any],
                 settings: Mapping[str, Any] | None = None, references: Sequence[Mapping[str, Any]] = ()
                 ) -> tuple[plt.Figure, dict[str, Any]]:
    """The laminar profile figure. `settings`: the analysis settings (`selectivity` form,
    `rsa_method`, `n_permutations`, `n_bootstrap`, `confidence`, `zscore`), by default
    `context["analysis"]`; `references`: reported ranges of the claims on `rsa:<pair>`, drawn
    as light hatched bands in (a) (laminae.plots.references). Returns (figure, {"rsa": ax, "selectivity": ax, "category": [axes],
    "legend": the figure legend shared by (b) and (c)})."""
    table = table if isinstance(table, LaminarTable) else LaminarTable.read(table)
    settings = dict(settings if settings is not None else context.get("analysis") or {})
    form = settings.get("selectivity", "ratio")
    if form not in NULL_LINE:
        raise ValueError(f"unknown selectivity form {form!r}; expected one of {sorted(NULL_LINE)}")
    confidence = float(settings.get("confidence", 0.95))
    chance = NULL_LINE[form]
    layers = np.arange(table.n_layers)
    components = table.components("selectivity")
    pairs = table.components("rsa")
    categories = table.categories()

    n_cat_cols = max(1, min(len(categories), 4))
    n_cat_rows = max(1, math.ceil(len(categories) / n_cat_cols))
    fig = plt.figure(figsize=(7.2, 6.6 + 1.9 * n_cat_rows))
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.4, 0.6 + 1.9 * n_cat_rows], hspace=0.0)
    ax_rsa, ax_sel = top.subplots(2, 1, sharex=True, height_ratios=[1.0, 1.2])
    cat_axes = list(np.ravel(bottom.subplots(n_cat_rows, n_cat_cols, sharex=True, sharey=True, squeeze=False)))
    for ax in cat_axes[len(categories):]:
        ax.set_visible(False)
    cat_axes = cat_axes[:len(categories)]

    # (a) RSA per pair with bootstrap CI bands.
    has_ci = False
    for index, pair in enumerate(pairs):
        colour = _colour(pair, index + 3)
        value, low, high = (table.get("rsa", pair, column) for column in ("value", "ci_low", "ci_high"))
        if np.isfinite(low).any():
            has_ci = True
            ax_rsa.fill_between(layers, low, high, color=colour, alpha=BAND_ALPHA, linewidth=0)
        ax_rsa.plot(layers, value, color=colour, linewidth=1.8, label=display_name(pair))
    handles, labels = ax_rsa.get_legend_handles_labels()
    if has_ci:
        handles.append(Patch(facecolor=NEUTRAL, alpha=0.35, linewidth=0))
        labels.append(f"{_percent(confidence)} bootstrap CI (words resampled)")
    drawn = draw_references(ax_rsa, references, table.n_layers, [f"rsa:{canonical_pair(p)}" for p in pairs])
    if pairs:
        _rsa_limits(ax_rsa)
        ax_rsa.legend(handles, labels, loc="lower left", ncol=len(handles), fontsize=8, handlelength=1.6,
                      columnspacing=1.2)
        if drawn:   # a second legend: the reference is not one of this run's curves
            ax_rsa.add_artist(ax_rsa.get_legend())
            ax_rsa.legend([h for h, _ in drawn], [label for _, label in drawn], loc="lower right", fontsize=7.5,
                          handlelength=1.6, bbox_to_anchor=(1.0, 0.12))
    else:
        ax_rsa.text(0.5, 0.5, "one component only: no RSA pairs", transform=ax_rsa.transAxes, ha="center",
                    color=NEUTRAL)
    method = str(settings.get("rsa_method", "pearson"))
    ax_rsa.set_ylabel(f"RSA ({method.capitalize()} r)")
    ax_rsa.set_title("Representational similarity between components (correlation of similarity matrices)",
                     loc="left")

    # (b) Selectivity with the permutation null.
    ax_sel.axhline(chance, color="black", linestyle=":", linewidth=1.0, zorder=1)
    null_drawn = _draw_null_bands(ax_sel, table, components, layers)
    for index, component in enumerate(components):
        _profile(ax_sel, layers, table, "selectivity", component, index, linewidth=1.8, markersize=4.5)
    what = "within / between" if form == "ratio" else "within − between"
    unstable = _unstable_ratio_layers(table, components, form)
    if unstable:
        log.warning("between-category mean <= 0 at layers %s: the ratio selectivity is not interpretable there; "
                    "consider qkv.selectivity=difference", unstable)
    for ax in (ax_sel, *cat_axes):
        _shade_layers(ax, unstable)
    ax_sel.set_ylabel(f"selectivity\n({what})")
    ax_sel.set_xlabel("layer")
    title = "Category selectivity of " + ", ".join(display_name(c) for c in components)
    ax_sel.set_title(title + ("" if null_drawn else " (no permutation test: n_permutations = 0)"), loc="left")

    # (c) Per-category selectivity: one panel per category, one line per component.
    for index, (ax, category) in enumerate(zip(cat_axes, categories)):
        ax.axhline(chance, color="black", linestyle=":", linewidth=1.0, zorder=1)
        for k, component in enumerate(components):
            if table.has(f"selectivity:{category}", component):
                _profile(ax, layers, table, f"selectivity:{category}", component, k, linewidth=1.4, markersize=3.4)
        ax.set_title(category, fontsize=9)
        if index % n_cat_cols == 0:
            ax.set_ylabel(f"selectivity\n({what})" if n_cat_rows == 1 else "selectivity")
        if index + n_cat_cols >= len(categories):
            ax.set_xlabel("layer")
            ax.tick_params(labelbottom=True)
    if cat_axes:
        cat_axes[0].xaxis.set_major_locator(MaxNLocator(integer=True, nbins=max(2, 9 - 2 * n_cat_cols)))
        bottom.suptitle(r"$\mathbf{(c)}$  Selectivity per category (that category's within-mean against the "
                        "between-mean)", x=0.015, ha="left", fontsize=10)

    # A ratio is multiplicative: on a log axis 1/2 and 2 lie equally far from 1, and one large
    # ratio (a between-mean near 0) does not flatten every other line. Only where all is > 0.
    log_axis = form == "ratio" and not unstable and _all_positive([ax_sel, *cat_axes])
    if log_axis:
        for ax in (ax_sel, *cat_axes[:1]):   # the category panels share one y-axis
            _log_ratio_axis(ax)
        ax_sel.set_ylabel(f"selectivity\n({what}, log scale)")
        for ax in cat_axes[::n_cat_cols]:
            ax.set_ylabel(f"selectivity\n({what}, log)" if n_cat_rows == 1 else "selectivity (log)")

    # The legend of (b) and (c): colour = component, plus the reference line, band and markers.
    handles = [Line2D([], [], color=_colour(c, k), linewidth=1.8) for k, c in enumerate(components)]
    labels = [display_name(c) for c in components]
    handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1.0))
    labels.append(f"no selectivity (= {chance:g})")
    if null_drawn:
        if null_drawn == "shared":
            handles.append(Patch(facecolor=NEUTRAL, alpha=0.35, linewidth=0))
            labels.append(f"permutation null (central {_percent(confidence)})")
        else:
            handles.append(Patch(facecolor=NEUTRAL, alpha=0.15, edgecolor=NEUTRAL, linewidth=0.7))
            labels.append(f"permutation null, central {_percent(confidence)}, per component")
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=4.5, color="black",
                              markeredgecolor="white"))
        labels.append(f"q < {ALPHA:g} (Benjamini-Hochberg)")
    if unstable:
        handles.append(Patch(facecolor="none", edgecolor=UNSTABLE_COLOUR, hatch="////", linewidth=0, alpha=0.6))
        labels.append("between-mean ≤ 0: ratio not interpretable")
    ncol = max(len(components), 3) if null_drawn or unstable else len(handles)
    legend = fig.legend(*_row_major(handles, labels, ncol), loc="outside lower center", ncol=ncol, fontsize=8,
                        handlelength=1.8, columnspacing=1.2)

    ax_rsa.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(12, max(2, table.n_layers))))
    pad = 0.5 if table.n_layers > 1 else 1.0
    for ax in (ax_rsa, *cat_axes):
        ax.set_xlim(-pad, table.n_layers - 1 + pad)
    for ax, letter in ((ax_rsa, "a"), (ax_sel, "b")):
        _panel_label(ax, letter)
    names = ", ".join(display_name(c) for c in components)
    fig.suptitle(run_title(context, f"Laminar profile of {names}: RSA and category selectivity") + "\n"
                 + settings_line(context, settings, None, len(categories)), fontsize=10)
    return fig, {"rsa": ax_rsa, "selectivity": ax_sel, "category": cat_axes, "legend": legend, "log_scale": log_axis}


def _all_positive(axes: Sequence[plt.Axes]) -> bool:
    """Whether every finite y value drawn on `axes` (lines and bands) is > 0."""
    values = []
    for ax in axes:
        values += [np.asarray(line.get_ydata(), dtype=float) for line in ax.get_lines()]
        values += [np.asarray(c.get_paths()[0].vertices[:, 1]) for c in ax.collections if c.get_paths()]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    return finite.size > 0 and bool((finite > 0).all())


def _log_ratio_axis(ax: plt.Axes) -> None:
    """Log y-axis with a handful of plain-number ticks (1, 1.2, 1.5, 2, ...) that always
    include 1 when it is in view; no minor ticks."""
    ax.set_yscale("log")
    ax.relim()
    ax.autoscale_view()
    low, high = ax.get_ylim()
    ax.yaxis.set_major_locator(FixedLocator(nice_log_ticks(low, high)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def _unstable_ratio_layers(table: LaminarTable, components: Sequence[str], form: str) -> list[int]:
    """Layers where the ratio form means nothing: the between-category mean is <= 0 (the ratio's
    sign flips, and it explodes near 0) for some component."""
    if form != "ratio":
        return []
    return sorted({int(layer) for c in components if table.has("between_mean", c)
                   for layer in np.flatnonzero(~(table.get("between_mean", c) > 0))})


def _shade_layers(ax: plt.Axes, layers: Sequence[int]) -> None:
    """Hatch the given layers (runs of consecutive layers merged into one span)."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    for first, last in runs:
        ax.axvspan(first - 0.5, last + 0.5, facecolor="none", edgecolor=UNSTABLE_COLOUR, hatch="////",
                   linewidth=0, alpha=0.45, zorder=0)


def _row_major(handles: list, labels: list[str], ncol: int) -> tuple[list, list[str]]:
    """Reorder legend entries so that matplotlib's column-major fill reads row by row."""
    n_rows = math.ceil(len(handles) / ncol)
    order = [r * ncol + c for c in range(ncol) for r in range(n_rows) if r * ncol + c < len(handles)]
    return [handles[i] for i in order], [labels[i] for i in order]


def _profile(ax: plt.Axes, layers: np.ndarray, table: LaminarTable, metric: str, component: str, index: int,
             linewidth: float, markersize: float) -> None:
    """One component's values across layers, with a marker on each layer where q < ALPHA."""
    colour = _colour(component, index)
    value, q = table.get(metric, component), table.get(metric, component, "q_value")
    ax.plot(layers, value, color=colour, linewidth=linewidth, label=display_name(component), zorder=3)
    sig = _significant(q)
    ax.plot(layers[sig], value[sig], linestyle="none", marker="o", markersize=markersize, color=colour,
            markeredgecolor="white", markeredgewidth=0.5, zorder=4)


def _draw_null_bands(ax: plt.Axes, table: LaminarTable, components: Sequence[str], layers: np.ndarray) -> str:
    """Shade the null's central band: one grey band spanning every component's band when that
    misleads nowhere (each component's value lies above / inside / below the span exactly where
    it lies above / inside / below its own band), else one light band per component in its
    colour, edges drawn thin. Returns "shared", "per_component", or "" when there is no null."""
    present = [c for c in components if table.has("selectivity_null", c)]
    if not present or not any(np.isfinite(table.get("selectivity_null", c, "ci_low")).any() for c in present):
        return ""
    lows = np.array([table.get("selectivity_null", c, "ci_low") for c in present])
    highs = np.array([table.get("selectivity_null", c, "ci_high") for c in present])
    values = np.array([table.get("selectivity", c) for c in present])
    with np.errstate(invalid="ignore"):
        span_low, span_high = np.nanmin(lows, axis=0), np.nanmax(highs, axis=0)
        shared = bool(np.all(((values > span_high) == (values > highs)) & ((values < span_low) == (values < lows))))
    if shared:
        ax.fill_between(layers, span_low, span_high, color=NEUTRAL, alpha=0.28, linewidth=0, zorder=2)
        return "shared"
    for index, (component, low, high) in enumerate(zip(present, lows, highs)):
        colour = _colour(component, components.index(component))
        ax.fill_between(layers, low, high, color=colour, alpha=0.10, linewidth=0, zorder=2)
        for edge in (low, high):
            ax.plot(layers, edge, color=colour, linewidth=0.6, alpha=0.55, zorder=2)
    return "per_component"


def _rsa_limits(ax: plt.Axes) -> None:
    """RSA lies in [-1, 1]: keep the data's range, with room below for the legend, capped at 1."""
    low, high = ax.get_ylim()
    span = max(high - low, 0.05)
    ax.set_ylim(max(-1.05, low - 0.45 * span), min(1.02, high + 0.05 * span))


def _headroom(ax: plt.Axes, fraction: float) -> None:
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + fraction * (high - low))


# -------------------------------------------------------------------------- similarity figure
def resolve_similarity_layers(spec: Sequence[int | str], n_layers: int) -> list[tuple[int, str]]:
    """`plot.qkv.similarity_layers` -> [(layer index, column label)], duplicates dropped.

    Raises ConfigError naming `plot.qkv.similarity_layers` for an index out of range."""
    if isinstance(spec, (str, int)):
        spec = [spec]
    resolved: dict[int, str] = {}
    for entry in spec:
        layer = resolve_layer(entry, n_layers, key=LAYERS_KEY)
        name = f" ({entry})" if isinstance(entry, str) else ""
        resolved.setdefault(layer, f"layer {layer}{name}")
    return list(resolved.items())


def plot_similarity(data: SimilarityData | str | Path, layers: Sequence[int | str], context: Mapping[str, Any],
                    settings: Mapping[str, Any] | None = None) -> tuple[plt.Figure, np.ndarray]:
    """The similarity matrices: rows = components, columns = `layers` (indices or
    first/middle/last). Returns (figure, axes of shape (n_components, n_layers))."""
    data = data if isinstance(data, SimilarityData) else SimilarityData.read(data)
    columns = resolve_similarity_layers(layers, data.n_layers)   # before drawing anything
    settings = dict(settings if settings is not None else context.get("analysis") or {})
    components = list(data.matrices)
    order = data.category_order()
    words = [data.words[i] for i in order]
    labels = data.labels[order]
    n = len(words)
    bounds = np.flatnonzero(np.diff(labels)) + 1            # block starts after the first
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [n]])

    # Shared scale centred on 0: the largest off-diagonal |similarity| among the plotted panels
    # (the diagonal is 1 by construction and is blanked).
    off_diagonal = ~np.eye(n, dtype=bool)
    panels = {(c, layer): data.matrices[c][layer][np.ix_(order, order)] for c in components for layer, _ in columns}
    finite = [np.abs(m[off_diagonal]) for m in panels.values()]
    vmax = float(np.nanmax(np.concatenate(finite))) if finite else 1.0
    vmax = vmax if np.isfinite(vmax) and vmax > 0 else 1.0
    norm = Normalize(vmin=-vmax, vmax=vmax)
    cmap = plt.get_cmap(DIVERGING_CMAP).with_extremes(bad="#d9d9d9")

    word_font = max(4.0, min(7.0, 190.0 / max(n, 1)))
    n_rows, n_cols = len(components), len(columns)
    side = float(np.clip(0.085 * n, 2.6, 3.2))   # inches per matrix; the figure is >= 7 in wide
    width = max(7.0, side * n_cols + 1.8)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width, side * n_rows + 1.4), squeeze=False)
    image = None
    for r, component in enumerate(components):
        for c, (layer, column_label) in enumerate(columns):
            ax = axes[r, c]
            matrix = panels[(component, layer)].copy()
            np.fill_diagonal(matrix, np.nan)
            image = ax.imshow(matrix, cmap=cmap, norm=norm, interpolation="nearest", aspect="equal")
            ax.grid(False)
            for edge in (*bounds,):
                ax.axhline(edge - 0.5, color="black", linewidth=0.8)
                ax.axvline(edge - 0.5, color="black", linewidth=0.8)
            for start, stop in zip(starts, stops):   # outline the within-category blocks
                ax.add_patch(plt.Rectangle((start - 0.5, start - 0.5), stop - start, stop - start, fill=False,
                                           edgecolor="black", linewidth=1.2))
            ax.set_xticks(np.arange(n))
            ax.set_yticks(np.arange(n))
            ax.set_xticklabels(words, rotation=90, fontsize=word_font)
            ax.set_yticklabels(words, fontsize=word_font)
            ax.tick_params(length=1.5, width=0.4, pad=1)
            ax.tick_params(labelbottom=(r == n_rows - 1), labelleft=(c == 0))
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_linewidth(0.6)
            if r == 0:
                ax.set_title(column_label, fontsize=10)
                _category_axis(ax, "top", starts, stops, data.categories, np.unique(labels), side)
            if c == n_cols - 1:
                _category_axis(ax, "right", starts, stops, data.categories, np.unique(labels), side)
            if c == 0:
                ax.set_ylabel(display_name(component), fontsize=12, fontweight="bold", rotation=0,
                              labelpad=14, va="center", ha="right")
    colourbar = fig.colorbar(image, ax=axes, shrink=0.6, aspect=30, pad=0.02, extend="neither")
    colourbar.set_label("cosine similarity" + (" (z-scored dimensions)" if settings.get("zscore") else ""))
    colourbar.ax.axhline(0, color="black", linewidth=0.6)
    what = "Cosine similarity between words in " + ", ".join(display_name(c) for c in components)
    fig.suptitle(run_title(context, what) + "\n" + settings_line(context, {}, n, len(data.categories))
                 + "\nwords grouped by category (blocks outlined); diagonal (= 1) left blank", fontsize=10)
    return fig, axes


def _category_axis(ax: plt.Axes, side: str, starts: np.ndarray, stops: np.ndarray, categories: Sequence[str],
                   codes: np.ndarray, panel_inches: float) -> None:
    """Category names at the centre of their blocks, on a secondary axis on `side`, in a font
    small enough that each name fits its block (8 pt at most, 5 pt at least)."""
    centres = (starts + stops - 1) / 2.0
    names = [categories[code] for code in codes]
    block_pt = (stops - starts) / max(stops[-1], 1) * panel_inches * 72
    size = float(np.clip(np.min(block_pt / (0.68 * np.array([max(len(n), 1) for n in names]))), 5.0, 8.0))
    if side == "top":
        secondary = ax.secondary_xaxis("top")
        secondary.set_xticks(centres, names, fontsize=size, fontweight="bold")
    else:
        secondary = ax.secondary_yaxis("right")
        secondary.set_yticks(centres, names, fontsize=size, fontweight="bold", rotation=270, va="center")
    secondary.tick_params(length=0, pad=2)


# ----------------------------------------------------------------------------------- the hook
def plot(job: FigureJob) -> None:
    """Draw and save the figures. Everything is read and validated before the first one is
    drawn (a bad `qkv.plot.similarity_layers` raises ConfigError naming it); with
    `qkv.resolution: heads` the per-head figure too (`heads_figure`)."""
    table_path, similarity_path = job.metrics_dir / TABLE_FILENAME, job.metrics_dir / SIMILARITY_FILENAME
    layer_spec = job.plot["similarity_layers"]
    table = LaminarTable.read(table_path)
    similarity = SimilarityData.read(similarity_path)
    resolve_similarity_layers(layer_spec, similarity.n_layers)
    if similarity.n_layers != table.n_layers:
        raise InputFileError(similarity_path, f"has {similarity.n_layers} layers but {table_path} has "
                                              f"{table.n_layers}; the metrics folder mixes runs, rerun qkv_analysis")
    heads = None
    if resolution(job.settings) == "heads":
        heads_path = job.metrics_dir / HEADS_FILENAME
        heads = HeadsTable.read(heads_path)
        if heads.n_layers != table.n_layers:
            raise InputFileError(heads_path, f"has {heads.n_layers} layers but {table_path} has {table.n_layers}; "
                                             "the metrics folder mixes runs, rerun qkv_analysis")
    settings = _analysis_settings(job.context, similarity.attrs)
    job.save(plot_laminar(table, job.context, settings, job.references)[0], LAMINAR_FIGURE)
    job.save(plot_similarity(similarity, layer_spec, job.context, settings)[0], SIMILARITY_FIGURE)
    if heads is not None:
        job.save(plot_heads(heads, job.context, settings)[0], HEADS_FIGURE)
