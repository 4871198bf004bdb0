"""Experiment-2 figures, drawn from the metrics outputs only (never the activations):

    >>> plot(job)   # -> figures/adjustments_laminar.png|pdf, adjustments_hist.png|pdf, adjustments_norms.png|pdf

- `plot_laminar`: mean cos(attn_out, mlp_out) per layer with error bars (SEM as in the seed, or
  SD with `adjustments.plot.error_bar: sd`; the y-label says which), the per-layer median as a
  thin dashed line, and the zero line (0 = orthogonal adjustments).
- `plot_histogram`: all included token x layer cosines in `adjustments.plot.bins` bins, with
  the pooled mean and median marked (vertical lines, values in the legend).
- `plot_norms`: mean L2 norm per layer of attn_out, mlp_out and the residual stream (resid_pre,
  resid_post) with +-SEM bands; log y-axis when the means span more than 2 decades.

Each function returns (figure, axes) without saving; the `plot` hook saves them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from laminae.errors import ConfigError, InputFileError
from laminae.experiment import FigureJob
from laminae.experiments.adjustments.analysis import (COSINE, COSINE_FILENAME, COSINE_MEDIAN, RESIDUAL_SITES,
                                                      TABLE_FILENAME, LayerStats, norm_metric, read_adjustment_table,
                                                      read_cosines)
from laminae.plots.references import draw_references, merge_legend
from laminae.plots.style import COMPONENT_COLOURS, NEUTRAL, OKABE_ITO, run_title

import matplotlib.pyplot as plt  # noqa: E402  (after style, which selects the Agg backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

LAMINAR_FIGURE = "adjustments_laminar"
HIST_FIGURE = "adjustments_hist"
NORMS_FIGURE = "adjustments_norms"
ERROR_BARS = {"sem": "SEM", "sd": "SD"}
LOG_SPAN = 100.0                  # log y-axis for norms when max / min of the means exceeds this
BAND_ALPHA = 0.2
COSINE_LABEL = "cos(attn_out, mlp_out)"
NORM_LABELS = {
    "attn_out": "attention output (attn_out)",
    "mlp_out": "MLP output (mlp_out)",
    "resid_pre": "residual stream, block input (resid_pre)",
    "resid_post": "residual stream, block output (resid_post)",
}
NORM_STYLES = {"attn_out": "-", "mlp_out": "-", "resid_pre": "--", "resid_post": "-"}


def _first_token_note(context: Mapping[str, Any]) -> str:
    exclude = (context.get("analysis") or {}).get("exclude_first_token")
    return {True: "first token of each window excluded", False: "all tokens incl. the first"}.get(exclude, "")


def _n_note(n: np.ndarray, n_layers: int) -> str:
    """`n = 346 tokens x 36 layers`, or a range when layers differ (undefined cosines)."""
    n = np.asarray(n)
    if not n.size:
        return "n = 0 tokens"
    tokens = f"{n.min()}" if n.min() == n.max() else f"{n.min()}-{n.max()}"
    return f"n = {tokens} tokens \u00d7 {n_layers} layers"


def _subtitle(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def plot_laminar(table: Mapping[str, LayerStats], context: Mapping[str, Any], error_bar: str = "sem",
                 references: Sequence[Mapping[str, Any]] = ()) -> tuple[plt.Figure, plt.Axes]:
    """Mean cosine per layer with SEM (or SD) error bars; see module docstring. `references`:
    reported ranges of the claims on `cosine`, drawn as light hatched bands."""
    if error_bar not in ERROR_BARS:
        raise ConfigError("adjustments.plot.error_bar", "sem or sd", error_bar)
    if COSINE not in table:
        raise ValueError("the adjustments table has no 'cosine' rows")
    cos = table[COSINE]
    layers = np.arange(cos.mean.size)
    errors = cos.sem if error_bar == "sem" else cos.sd
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.axhline(0.0, color=NEUTRAL, linewidth=0.9, linestyle=":", zorder=1)
    ax.errorbar(layers, cos.mean, yerr=np.nan_to_num(errors, nan=0.0), fmt="o-", color=OKABE_ITO[0], markersize=3.5,
                linewidth=1.3, elinewidth=1.0, capsize=2.5, label=f"mean \u00b1 {ERROR_BARS[error_bar]}", zorder=3)
    if COSINE_MEDIAN in table:
        ax.plot(layers, table[COSINE_MEDIAN].mean, linestyle="--", linewidth=1.0, color=OKABE_ITO[1],
                label="median", zorder=2)
    ax.annotate("0 = orthogonal", xy=(1.0, 0.0), xycoords=("axes fraction", "data"), xytext=(-2, 3),
                textcoords="offset points", ha="right", va="bottom", fontsize=7.5, color=NEUTRAL)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{COSINE_LABEL}\nmean \u00b1 {ERROR_BARS[error_bar]} over tokens")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.5, max(layers.size - 0.5, 0.5))
    drawn = draw_references(ax, references, layers.size, ("cosine",))
    ax.legend(*merge_legend(ax, drawn), loc="best", fontsize=8)
    ax.set_title(_subtitle(_n_note(cos.n, layers.size), _first_token_note(context)), fontsize=8.5)
    fig.suptitle(run_title(context, "Attention vs MLP adjustments: cosine per layer"))
    return fig, ax


def plot_histogram(cosine: np.ndarray, included: np.ndarray, context: Mapping[str, Any], bins: int = 60
                   ) -> tuple[plt.Figure, plt.Axes]:
    """Histogram of every included token x layer cosine, with mean and median marked."""
    if not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ConfigError("adjustments.plot.bins", "an integer >= 2", bins)
    values = np.asarray(cosine, dtype=np.float64)[np.asarray(included, dtype=bool)]
    values = values[np.isfinite(values)]
    n_layers, n_tokens = np.shape(cosine)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.axvline(0.0, color=NEUTRAL, linewidth=0.9, linestyle=":", zorder=1)
    if values.size:
        ax.hist(values, bins=int(bins), color=OKABE_ITO[0], alpha=0.75, edgecolor="white", linewidth=0.3)
        mean, median = float(values.mean()), float(np.median(values))
        ax.axvline(mean, color=OKABE_ITO[5], linewidth=1.6, label=f"mean = {mean:.3f}")
        ax.axvline(median, color=OKABE_ITO[2], linewidth=1.6, linestyle="--", label=f"median = {median:.3f}")
        ax.legend(loc="upper right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no included values", transform=ax.transAxes, ha="center", va="center")
    per_layer = np.asarray(included, dtype=bool).sum(axis=1)
    ax.set_xlabel(f"{COSINE_LABEL} (0 = orthogonal)")
    ax.set_ylabel("count (tokens \u00d7 layers)")
    ax.set_title(_subtitle(f"{_n_note(per_layer, n_layers)} = {values.size} values", _first_token_note(context)),
                 fontsize=8.5)
    fig.suptitle(run_title(context, "Attention vs MLP adjustments: all cosines"))
    return fig, ax


def plot_norms(table: Mapping[str, LayerStats], context: Mapping[str, Any]) -> tuple[plt.Figure, plt.Axes]:
    """Mean L2 norm per layer of the adjustments and the residual stream, +-SEM bands."""
    sites = [site for site in ("attn_out", "mlp_out", *RESIDUAL_SITES) if norm_metric(site) in table]
    if not sites:
        raise ValueError("the adjustments table has no norm_* rows")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    means = np.concatenate([table[norm_metric(site)].mean for site in sites])
    positive = means[np.isfinite(means) & (means > 0)]
    log_scale = positive.size > 0 and positive.max() / positive.min() > LOG_SPAN
    for site in sites:
        stats = table[norm_metric(site)]
        layers = np.arange(stats.mean.size)
        sem = np.nan_to_num(stats.sem, nan=0.0)
        low, high = stats.mean - sem, stats.mean + sem
        if log_scale:
            low = np.maximum(low, stats.mean * 1e-3)
        colour = COMPONENT_COLOURS[site]
        ax.plot(layers, stats.mean, NORM_STYLES[site], color=colour, linewidth=1.4, marker="o", markersize=2.5,
                label=NORM_LABELS[site])
        ax.fill_between(layers, low, high, color=colour, alpha=BAND_ALPHA, linewidth=0)
    if log_scale:
        ax.set_yscale("log")
    n = table[norm_metric(sites[0])].n
    ax.set_xlabel("layer")
    ax.set_ylabel("L2 norm per token\nmean \u00b1 SEM" + (" (log scale)" if log_scale else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best", fontsize=7.5)
    ax.set_title(_subtitle(_n_note(n, n.size), _first_token_note(context)), fontsize=8.5)
    fig.suptitle(run_title(context, "Norms of the adjustments and of the residual stream"))
    return fig, ax


def plot(job: FigureJob) -> None:
    """The plot hook: the laminar profile, the histogram and the norms."""
    error_bar, bins = job.plot["error_bar"], job.plot["bins"]
    table_path = job.metrics_dir / TABLE_FILENAME
    table = read_adjustment_table(table_path)
    if COSINE not in table:
        raise InputFileError(table_path, "has no 'cosine' rows; rerun adjustments_analysis")
    cosine, included, _ = read_cosines(job.metrics_dir / COSINE_FILENAME)
    job.save(plot_laminar(table, job.context, error_bar, job.references)[0], LAMINAR_FIGURE)
    job.save(plot_histogram(cosine, included, job.context, bins)[0], HIST_FIGURE)
    job.save(plot_norms(table, job.context)[0], NORMS_FIGURE)
