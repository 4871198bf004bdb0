"""Experiment-1 per-head figure (`qkv.resolution: heads`), drawn from `qkv_heads.tsv` only:

    >>> table = HeadsTable.read(metrics_dir / "qkv_heads.tsv")
    >>> fig, axes = plot_heads(table, context, settings)     # figures/qkv_heads.png|pdf via job.save

Layer x head heatmaps (layer 0 at the bottom): (a) the selectivity of each component, one panel
per component (K and V have one column per KV head), on one diverging scale centred on "no
selectivity" (1 for the ratio form, on a log scale; 0 for the difference form); a dot marks a
cell whose selectivity q-value (Benjamini-Hochberg within that panel) is < 0.05. (b) the RSA of
each pair of components, one panel per pair (Q-K and Q-V per query head against the KV head it
reads, K-V per KV head), on one diverging scale centred on 0. Panel widths follow their number
of heads, so a cell is the same size in every panel of a row.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from laminae.errors import InputFileError
from laminae.experiments.qkv.heads import HEADS_FILENAME, read_heads_table
from laminae.experiments.qkv.plotting import ALPHA, NULL_LINE, display_name, nice_log_ticks, settings_line
from laminae.plots.style import DIVERGING_CMAP, run_title

import matplotlib.pyplot as plt  # noqa: E402  (after style, which selects the Agg backend)
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator  # noqa: E402

HEADS_FIGURE = "qkv_heads"
BAD_COLOUR = "#bdbdbd"            # cells without an interpretable value
# Colour limits: a few extreme heads (a ratio whose between-mean is near 0) must not wash out the
# rest; the colour bar's arrows say that some cells lie beyond.
ROBUST_PERCENTILE = 95


@dataclass(frozen=True)
class HeadsTable:
    """`qkv_heads.tsv` as grids: `get(metric, component, column)` -> (n_layers, n_heads_c)."""

    n_layers: int
    grids: dict[tuple[str, str], dict[str, np.ndarray]]   # (metric, component) -> column -> grid

    @classmethod
    def read(cls, path: str | Path) -> "HeadsTable":
        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "not found; run the qkv analysis with qkv.resolution=heads first")
        try:
            rows = read_heads_table(path)
        except ValueError as error:
            raise InputFileError(path, f"is not a {HEADS_FILENAME} table ({error})") from None
        if not rows:
            raise InputFileError(path, "has no rows")
        n_layers = max(row.layer for row in rows) + 1
        widths: dict[tuple[str, str], int] = {}
        for row in rows:
            key = (row.metric, row.component)
            widths[key] = max(widths.get(key, 0), row.head + 1)
        grids = {key: {name: np.full((n_layers, n), np.nan) for name in ("value", "ci_low", "ci_high", "p_value",
                                                                          "q_value")}
                 for key, n in widths.items()}
        for row in rows:
            for name, grid in grids[(row.metric, row.component)].items():
                grid[row.layer, row.head] = getattr(row, name)
        return cls(n_layers=n_layers, grids=grids)

    def has(self, metric: str, component: str) -> bool:
        return (metric, component) in self.grids

    def get(self, metric: str, component: str, column: str = "value") -> np.ndarray:
        return self.grids[(metric, component)][column]

    def components(self, metric: str) -> list[str]:
        """Components (or pairs) that have `metric`, in table order."""
        return list(dict.fromkeys(c for m, c in self.grids if m == metric))


def plot_heads(table: HeadsTable | str | Path, context: Mapping[str, Any],
               settings: Mapping[str, Any] | None = None) -> tuple[plt.Figure, dict[str, Any]]:
    """The per-head figure. `settings`: the analysis settings (`selectivity` form, `rsa_method`,
    counts), by default `context["analysis"]`. Returns (figure, {"selectivity": {component: ax},
    "rsa": {pair: ax}, "colorbars": {"selectivity": cb, "rsa": cb}, "legend": legend,
    "significant": {component: (n_layers, n_heads) bool grid of the dots drawn}})."""
    table = table if isinstance(table, HeadsTable) else HeadsTable.read(table)
    settings = dict(settings if settings is not None else context.get("analysis") or {})
    form = settings.get("selectivity", "ratio")
    if form not in NULL_LINE:
        raise ValueError(f"unknown selectivity form {form!r}; expected one of {sorted(NULL_LINE)}")
    components, pairs = table.components("selectivity"), table.components("rsa")
    heads = {c: table.get("selectivity", c).shape[1] for c in components}
    heads.update({p: table.get("rsa", p).shape[1] for p in pairs})
    n_query = max(heads.values())
    group = _group_size(table, components, pairs)

    rows = [("selectivity", components)] + ([("rsa", pairs)] if pairs else [])
    max_columns = max(sum(heads[c] for c in names) for _, names in rows)
    width = float(np.clip(2.4 + 0.13 * max_columns, 7.2, 13.0))
    cell = (width - 2.4) / max(max_columns, 1)                       # inches per head column
    row_height = float(np.clip(cell * table.n_layers, 1.8, 4.6)) + 1.0
    fig = plt.figure(figsize=(width, row_height * len(rows) + 1.5))
    subfigs = np.atleast_1d(fig.subfigures(len(rows), 1, hspace=0.02))
    marker = float(np.clip(0.3 * 72 * min(cell, row_height / max(table.n_layers, 1)), 1.5, 4.0))

    axes: dict[str, Any] = {"selectivity": {}, "rsa": {}, "colorbars": {}, "significant": {}}
    grids = {("selectivity", c): _interpretable(table, c, form) for c in components}
    grids.update({("rsa", p): table.get("rsa", p) for p in pairs})
    norms = {"selectivity": _selectivity_norm([grids[("selectivity", c)] for c in components], form)}
    if pairs:
        norms["rsa"] = _rsa_norm([grids[("rsa", p)] for p in pairs])
    cmap = plt.get_cmap(DIVERGING_CMAP).with_extremes(bad=BAD_COLOUR)
    for (metric, names), subfig, letter in zip(rows, subfigs, "ab"):
        norm, extend = norms[metric]
        ratios = [max(heads[n], 0.3 * n_query) for n in names]
        panel_axes = subfig.subplots(1, len(names), width_ratios=ratios, sharey=True, squeeze=False)[0]
        for index, (ax, name) in enumerate(zip(panel_axes, names)):
            image = ax.imshow(_drawable(grids[(metric, name)], norm), cmap=cmap, norm=norm, origin="lower",
                              aspect="auto", interpolation="nearest")
            axes[metric][name] = ax
            _head_axes(ax, name, heads[name], table.n_layers, group, first=index == 0)
            if metric == "selectivity":
                significant = _significant(table.get("selectivity", name, "q_value"))
                axes["significant"][name] = significant
                layer_idx, head_idx = np.nonzero(significant)
                ax.plot(head_idx, layer_idx, linestyle="none", marker="o", markersize=marker,
                        markerfacecolor="black", markeredgecolor="white", markeredgewidth=0.5)
        colourbar = subfig.colorbar(image, ax=list(panel_axes), shrink=0.9, aspect=25, pad=0.02, extend=extend)
        if metric == "selectivity":
            what = "within / between" if form == "ratio" else "within − between"
            colourbar.set_label(f"selectivity ({what}{', log scale' if form == 'ratio' else ''})\n"
                                f"centre = no selectivity ({NULL_LINE[form]:g})")
            if form == "ratio":
                _log_colourbar(colourbar, norm)
            title = "Category selectivity per head"
        else:
            method = str(settings.get("rsa_method", "pearson")).capitalize()
            colourbar.set_label(f"RSA ({method} r)\ncentre = 0")
            title = "Representational similarity between components per head (correlation of similarity matrices)"
        subfig.suptitle(rf"$\mathbf{{({letter})}}$  {title}", x=0.01, ha="left", fontsize=10)
        colourbar.ax.axhline(NULL_LINE[form] if metric == "selectivity" else 0.0, color="black", linewidth=0.7)
        axes["colorbars"][metric] = colourbar

    axes["legend"] = _legend(fig, table, components, form, settings, group, marker)
    fig.suptitle(run_title(context, "Per-head selectivity and RSA of " + ", ".join(display_name(c) for c in components))
                 + "\n" + settings_line(context, settings), fontsize=10)
    return fig, axes


# ----------------------------------------------------------------------------------- helpers
def _group_size(table: HeadsTable, components: Sequence[str], pairs: Sequence[str]) -> int:
    """Query heads per KV head, from the panels' widths (1 without grouped-query attention)."""
    counts = {c: table.get("selectivity", c).shape[1] for c in components}
    counts.update({p: table.get("rsa", p).shape[1] for p in pairs if "q" in p.split("-")})
    n_query = max(counts.values())
    kv = [table.get("selectivity", c).shape[1] for c in components if c != "q"]
    kv += [table.get("rsa", p).shape[1] for p in pairs if "q" not in p.split("-")]
    return n_query // min(kv) if kv and min(kv) and n_query % min(kv) == 0 else 1


def _interpretable(table: HeadsTable, component: str, form: str) -> np.ndarray:
    """The selectivity grid, NaN where the ratio form means nothing (between-mean <= 0)."""
    value = table.get("selectivity", component).copy()
    if form == "ratio" and table.has("between_mean", component):
        with np.errstate(invalid="ignore"):
            value[~(table.get("between_mean", component) > 0)] = np.nan
    return value


def _drawable(grid: np.ndarray, norm: Normalize) -> np.ndarray:
    """A ratio <= 0 (within-mean <= 0 < between-mean: as anti-selective as it gets) cannot sit
    on a log scale; draw it below the scale's minimum, in the colour bar's lower end colour."""
    if not isinstance(norm, LogNorm):
        return grid
    with np.errstate(invalid="ignore"):
        return np.where(grid <= 0, 0.5 * norm.vmin, grid)


def _selectivity_norm(grids: Sequence[np.ndarray], form: str) -> tuple[Normalize, str]:
    """One scale for every selectivity panel, symmetric about no selectivity: in log for the
    ratio (1/r .. r), linear for the difference (-d .. d); limits at a high percentile of the
    distance from no selectivity (ROBUST_PERCENTILE), with the colour bar's `extend` saying on
    which side some heads lie beyond."""
    finite = np.concatenate([g[np.isfinite(g)].ravel() for g in grids]) if grids else np.array([])
    if form == "ratio":
        limit = _robust_limit(np.abs(np.log(finite[finite > 0])), minimum=math.log(1.05))
        norm: Normalize = LogNorm(vmin=math.exp(-limit), vmax=math.exp(limit))
    else:
        limit = _robust_limit(np.abs(finite), minimum=1e-3)
        norm = Normalize(vmin=-limit, vmax=limit)
    return norm, _extend(finite, norm)


def _rsa_norm(grids: Sequence[np.ndarray]) -> tuple[Normalize, str]:
    """RSA lies in [-1, 1]: a scale symmetric about 0, to a high percentile of |r| (at most 1)."""
    finite = np.concatenate([g[np.isfinite(g)].ravel() for g in grids])
    limit = min(1.0, _robust_limit(np.abs(finite), minimum=0.05))
    norm = Normalize(vmin=-limit, vmax=limit)
    return norm, _extend(finite, norm)


def _extend(values: np.ndarray, norm: Normalize) -> str:
    """The colour bar's `extend`: the sides on which some values lie beyond the limits."""
    tolerance = 1e-9 * max(abs(norm.vmin), abs(norm.vmax))
    low = values.size > 0 and values.min() < norm.vmin - tolerance
    high = values.size > 0 and values.max() > norm.vmax + tolerance
    return {(True, True): "both", (True, False): "min", (False, True): "max"}.get((low, high), "neither")


def _robust_limit(distance: np.ndarray, minimum: float) -> float:
    if distance.size == 0:
        return minimum
    limit = float(np.percentile(distance, ROBUST_PERCENTILE))
    return max(limit, minimum)


def _log_colourbar(colourbar: Any, norm: LogNorm) -> None:
    """Plain-number ticks (0.8, 1, 1.25, ...) on a log colour bar."""
    ticks = nice_log_ticks(norm.vmin, norm.vmax, max_ticks=7)
    colourbar.ax.yaxis.set_major_locator(FixedLocator(ticks))
    colourbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    colourbar.ax.yaxis.set_minor_locator(NullLocator())


def _significant(q: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(q) & (q < ALPHA)


def _head_axes(ax: plt.Axes, name: str, n_heads: int, n_layers: int, group: int, first: bool) -> None:
    """Title, head and layer ticks; thin lines between the query heads that share a KV head."""
    per_query = "q" in name.split("-")
    ax.set_title(display_name(name), fontsize=10, fontweight="bold")
    if group > 1:
        ax.set_xlabel("query head" if per_query else "KV head", fontsize=8)
        if per_query:
            for edge in range(group, n_heads, group):
                ax.axvline(edge - 0.5, color="black", linewidth=0.9)
    else:
        ax.set_xlabel("head", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_heads, 6)))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(n_layers, 10)))
    ax.tick_params(labelsize=7, length=2)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_linewidth(0.6)
    if first:
        ax.set_ylabel("layer")


def _legend(fig: plt.Figure, table: HeadsTable, components: Sequence[str], form: str, settings: Mapping[str, Any],
            group: int, marker: float) -> Any:
    handles, labels = [], []
    tested = any(np.isfinite(table.get("selectivity", c, "q_value")).any() for c in components)
    if tested:
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=max(marker, 4.0),
                              markerfacecolor="black", markeredgecolor="white"))
        labels.append(f"selectivity q < {ALPHA:g}: false discovery rate {ALPHA:.0%}, Benjamini-Hochberg over the "
                      f"layers × heads of each panel ({settings.get('n_permutations', '?')} label permutations)")
    else:
        handles.append(Line2D([], []))
        labels.append("no permutation test (n_permutations = 0): no significance marked")
    if form == "ratio" and any(np.isnan(_interpretable(table, c, form)).any() for c in components):
        handles.append(Patch(facecolor=BAD_COLOUR, edgecolor="none"))
        labels.append("between-category mean ≤ 0: ratio not interpretable (use qkv.selectivity=difference)")
    if group > 1:
        handles.append(Line2D([], [], color="black", linewidth=0.9))
        labels.append(f"grouped-query attention: {group} query heads share each KV head; "
                      f"Q–K, Q–V: query head h against KV head ⌊h/{group}⌋")
    wrap = int(fig.get_figwidth() * 13)      # characters of 8 pt text per line across the figure
    labels = [textwrap.fill(label, wrap) for label in labels]
    return fig.legend(handles, labels, loc="outside lower left", ncol=1, fontsize=8, handlelength=1.4)
