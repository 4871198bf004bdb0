"""Path-length figures, drawn from `pathlength.tsv` (and the .h5's attributes) only:

    >>> plot(job)   # -> figures/pathlength_correlations.png|pdf, figures/pathlength_cumulative.png|pdf

- `plot_correlations`: two panels (PL_attn vs PL_hs, PL_mlp vs PL_hs); per layer the Pearson
  and Spearman correlation over tokens (colour = method), with all tokens (solid, filled) and
  without the first token of every window (dashed, open markers), bootstrap CI bands, zero line.
- `plot_cumulative`: three panels over layers, mean +- SEM over tokens: (a) the sizes of the
  attention adjustment, the MLP adjustment and the block's step; (b) cumulative path length and
  straight-line displacement from the embedding; (c) their ratio, the straightness in [0, 1].
  Solid: all tokens; dashed: without the first token of every window.

Each function returns (figure, axes) without saving; the `plot` hook saves them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from laminae.errors import ConfigError
from laminae.experiment import FigureJob
from laminae.models.adapters import ADAPTERS
from laminae.plots.references import draw_references
from laminae.plots.style import COMPONENT_COLOURS, NEUTRAL, OKABE_ITO, run_title

from .analysis import TOKENS_FILENAME
from .table import CORRELATIONS, TABLE_FILENAME, TOKEN_SETS, PathLengthTable

import matplotlib.pyplot as plt  # noqa: E402  (after style, which selects the Agg backend)
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

CORRELATIONS_FIGURE = "pathlength_correlations"
CUMULATIVE_FIGURE = "pathlength_cumulative"
LOG_SPAN = 100.0            # `log_lengths: auto`: log y-axis when max / min of the plotted means exceeds this
BAND_ALPHA = 0.15
METHOD_COLOURS = {"pearson": OKABE_ITO[0], "spearman": OKABE_ITO[5]}
TOKEN_STYLES = {"all": {"linestyle": "-", "marker": "o", "markerfacecolor": None},
                "without_first": {"linestyle": "--", "marker": "s", "markerfacecolor": "white"}}
TOKEN_LABELS = {"all": "all tokens", "without_first": "without the first token of each window"}
SUBLAYER_LABELS = {"attn": "PL_attn = |attn_out|", "mlp": "PL_mlp = |mlp_out|"}
LENGTH_LABELS = {"pl_attn": "PL_attn = |attn_out|", "pl_mlp": "PL_mlp = |mlp_out|",
                 "pl_hs": "PL_hs = |resid_post \u2212 resid_pre|",
                 "cumulative": "cumulative path length \u03a3 PL_hs",
                 "displacement": "displacement |resid_post[l] \u2212 resid_pre[0]|"}
LENGTH_COLOURS = {"pl_attn": COMPONENT_COLOURS["attn_out"], "pl_mlp": COMPONENT_COLOURS["mlp_out"],
                  "pl_hs": COMPONENT_COLOURS["resid_pre"], "cumulative": OKABE_ITO[2], "displacement": OKABE_ITO[3]}
#: post-LayerNorm families (every checkpoint): the block's step is not attn_out + mlp_out
POST_NORM_FAMILIES = tuple(family for family, adapter in ADAPTERS.items() if adapter.pre_norm is False)


def check_log_lengths(value: Any) -> str | bool:
    if value not in ("auto", True, False) or isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ConfigError("pathlength.plot.log_lengths", "auto, true or false", value)
    return value


def _line(ax: plt.Axes, x: np.ndarray, mean: np.ndarray, low: np.ndarray | None, high: np.ndarray | None,
          colour: str, tokens: str, label: str | None = None) -> None:
    style = TOKEN_STYLES[tokens]
    ax.plot(x, mean, color=colour, linestyle=style["linestyle"], marker=style["marker"], markersize=3.2,
            markerfacecolor=style["markerfacecolor"] or colour, markeredgecolor=colour, linewidth=1.3, label=label)
    if low is not None and high is not None and np.isfinite(low).any():
        ax.fill_between(x, low, high, color=colour, alpha=BAND_ALPHA, linewidth=0)


def _n_note(table: PathLengthTable, metric: str) -> str:
    """`n = 322 tokens (316 without first)`, ranges when layers differ."""
    def count(tokens: str) -> str:
        n = table.get(metric, tokens, "n")
        return f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
    return f"n = {count('all')} tokens ({count('without_first')} without first)"


def _layer_axis(ax: plt.Axes, n_layers: int) -> None:
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.4, max(n_layers - 0.6, 0.6))


def _token_legend_handles() -> list[Line2D]:
    return [Line2D([], [], color=NEUTRAL, linestyle=TOKEN_STYLES[t]["linestyle"], marker=TOKEN_STYLES[t]["marker"],
                   markersize=3.5, markerfacecolor=TOKEN_STYLES[t]["markerfacecolor"] or NEUTRAL,
                   markeredgecolor=NEUTRAL, label=TOKEN_LABELS[t]) for t in TOKEN_SETS]


def plot_correlations(table: PathLengthTable, context: Mapping[str, Any], family: str = "",
                      references: Sequence[Mapping[str, Any]] = ()) -> tuple[plt.Figure, np.ndarray]:
    """Per layer: Pearson and Spearman of PL_attn (left) and PL_mlp (right) with PL_hs.
    `references`: reported values of the claims on `<correlation>:<tokens>`, drawn as wide light
    grey stripes; the legend says each value's method and token set."""
    layers = np.arange(table.n_layers)
    settings = context.get("analysis") or {}
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.3), sharey=True, squeeze=False)
    axes = axes[0]
    bands = False
    extent = [np.zeros(1)]                 # every plotted value and CI bound, and 0 (the zero line)
    for ax, sublayer in zip(axes, ("attn", "mlp")):
        ax.axhline(0.0, color=NEUTRAL, linewidth=0.9, linestyle=":", zorder=1)
        for metric, (method, which) in CORRELATIONS.items():
            if which != sublayer:
                continue
            for tokens in TOKEN_SETS:
                value, low, high = (table.get(metric, tokens, column) for column in ("value", "ci_low", "ci_high"))
                bands = bands or bool(np.isfinite(low).any())
                extent += [value, low, high]
                _line(ax, layers, value, low, high, METHOD_COLOURS[method], tokens)
        ax.set_title(f"{SUBLAYER_LABELS[sublayer]} vs PL_hs\n{_n_note(table, f'pearson_{sublayer}_hs')}", fontsize=8.5)
        _layer_axis(ax, table.n_layers)
    for ax, sublayer in zip(axes, ("attn", "mlp")):
        extent += [np.array([r["low"], r["high"]], dtype=float) for r in references
                   if r["series"].split(":")[0] in (f"pearson_{sublayer}_hs", f"spearman_{sublayer}_hs")
                   and r["low"] is not None and r["high"] is not None]
    values = np.concatenate(extent)
    low, high = np.nanmin(values), np.nanmax(values)
    pad = 0.06 * max(high - low, 0.1)
    axes[0].set_ylim(max(low - pad, -1.05), min(high + pad, 1.05))
    drawn: dict[str, Any] = {}
    reported: dict[str, None] = {}       # one stripe per reported value; the legend says which is which
    methods: dict[str, None] = {}
    for ax, sublayer in zip(axes, ("attn", "mlp")):
        names = [f"{metric}:{tokens}" for metric, (_, which) in CORRELATIONS.items() if which == sublayer
                 for tokens in TOKEN_SETS]
        for handle, label in draw_references(ax, references, table.n_layers, names):
            drawn.setdefault(label, handle)
        for reference in references:
            if reference["series"] in names and reference["low"] == reference["high"]:
                metric, tokens = reference["series"].split(":")
                methods.setdefault(CORRELATIONS[metric][0].capitalize())
                reported.setdefault(f"{reference['low']:g} ({'all tokens' if tokens == 'all' else 'without the first'})")
    axes[0].set_ylabel("correlation over tokens (r)")
    method_handles = [Line2D([], [], color=colour, linewidth=2.0, label=method.capitalize())
                      for method, colour in METHOD_COLOURS.items()]
    reference_handles = []
    for label, handle in drawn.items():
        if reported:
            values = " \u2192 ".join(reported)
            label = label.replace(" (a reference", f" {'/'.join(methods)} r\n{values}\n(a reference")
        handle.set_label(label)
        reference_handles.append(handle)
    fig.legend(handles=[*method_handles, *_token_legend_handles(), *reference_handles], loc="outside lower center",
               ncol=4, fontsize=8)
    notes = []
    if bands:
        notes.append(f"bands: {settings.get('confidence', 0.95):.0%} percentile bootstrap CI over tokens "
                     f"({settings.get('n_bootstrap', '?')} resamples)")
    if family in POST_NORM_FAMILIES:
        notes.append("post-LayerNorm model: PL_hs is not |attn_out + mlp_out|")
    fig.suptitle(run_title(context, "Path length: do the sublayer adjustments' sizes track the block's step?")
                 + ("\n" + "; ".join(notes) if notes else ""), fontsize=10)
    return fig, axes


def _log_scale(setting: str | bool, means: Sequence[np.ndarray]) -> bool:
    if setting != "auto":
        return bool(setting)
    values = np.concatenate([np.asarray(m, dtype=np.float64) for m in means])
    positive = values[np.isfinite(values) & (values > 0)]
    return positive.size > 0 and positive.max() / positive.min() > LOG_SPAN


def plot_cumulative(table: PathLengthTable, context: Mapping[str, Any], log_lengths: str | bool = "auto",
                    family: str = "") -> tuple[plt.Figure, np.ndarray]:
    """(a) step sizes, (b) cumulative path length vs displacement, (c) straightness; mean +- SEM."""
    log_lengths = check_log_lengths(log_lengths)
    layers = np.arange(table.n_layers)
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 4.4), squeeze=False)
    axes = axes[0]
    panels = ((axes[0], ("pl_attn", "pl_mlp", "pl_hs"), "(a) per layer: sublayer outputs and the block's step"),
              (axes[1], ("cumulative", "displacement"), "(b) path length vs straight-line distance from the embedding"))
    for ax, metrics, title in panels:
        log = _log_scale(log_lengths, [table.get(metric, tokens) for metric in metrics for tokens in TOKEN_SETS])
        for metric in metrics:
            for tokens in TOKEN_SETS:
                mean, sem = table.get(metric, tokens), np.nan_to_num(table.get(metric, tokens, "sem"), nan=0.0)
                low = np.maximum(mean - sem, mean * 1e-3) if log else mean - sem   # a log axis cannot show <= 0
                _line(ax, layers, mean, low, mean + sem, LENGTH_COLOURS[metric], tokens,
                      LENGTH_LABELS[metric] if tokens == "all" else None)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel("L2 norm, residual-stream units\nmean \u00b1 SEM over tokens" + (" (log scale)" if log else ""))
        ax.set_title(title, fontsize=9)
        ax.legend(loc="best", fontsize=7)
        _layer_axis(ax, table.n_layers)
    ax = axes[2]
    for tokens in TOKEN_SETS:
        mean, sem = table.get("straightness", tokens), np.nan_to_num(table.get("straightness", tokens, "sem"), nan=0.0)
        _line(ax, layers, mean, mean - sem, mean + sem, OKABE_ITO[7], tokens)
    ax.set_ylim(0.0, 1.04)
    ax.axhline(1.0, color=NEUTRAL, linewidth=0.9, linestyle=":")
    ax.annotate("1 = straight path", xy=(1.0, 1.0), xycoords=("axes fraction", "data"), xytext=(-2, -3),
                textcoords="offset points", ha="right", va="top", fontsize=7.5, color=NEUTRAL)
    ax.set_ylabel("straightness = displacement / path length\nmean \u00b1 SEM over tokens")
    ax.set_title("(c) straightness of the path so far", fontsize=9)
    _layer_axis(ax, table.n_layers)
    fig.legend(handles=_token_legend_handles(), loc="outside lower center", ncol=2, fontsize=8)
    note = _n_note(table, "pl_hs")
    if family in POST_NORM_FAMILIES:
        note += "; post-LayerNorm model: PL_hs is not |attn_out + mlp_out|"
    fig.suptitle(run_title(context, "Path length of the residual stream through the layers") + "\n" + note,
                 fontsize=10)
    return fig, axes


def stored_model(metrics_dir: Path) -> dict[str, Any]:
    """The stored model's `family` and `random_weights` (the .h5's `activations_*` attributes);
    "" and False when not recorded."""
    try:
        with h5py.File(Path(metrics_dir) / TOKENS_FILENAME, "r") as handle:
            family = handle.attrs.get("activations_family", "")
            random_weights = bool(handle.attrs.get("activations_random_weights", False))
    except OSError:
        return {"family": "", "random_weights": False}
    return {"family": family.decode() if isinstance(family, bytes) else str(family), "random_weights": random_weights}


def plot(job: FigureJob) -> None:
    """The plot hook: both figures from the table."""
    log_lengths = check_log_lengths(job.plot.get("log_lengths", "auto"))
    table = PathLengthTable.read(job.metrics_dir / TABLE_FILENAME)
    family = stored_model(job.metrics_dir)["family"]
    job.save(plot_correlations(table, job.context, family, job.references)[0], CORRELATIONS_FIGURE)
    job.save(plot_cumulative(table, job.context, log_lengths, family)[0], CUMULATIVE_FIGURE)
