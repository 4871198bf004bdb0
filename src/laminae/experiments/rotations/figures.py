"""`rotations` figures, drawn from the metrics outputs only (never the activations):

    >>> plot(job)   # -> figures/rotations_laminar.png|pdf, figures/rotations_hist.png|pdf

- `plot_laminar`: per layer, mean angle +- SEM (or SD, `rotations.plot.error_bar`) in two
  panels: within the block (block rotation, attn_out and mlp_out to resid_pre) and between
  consecutive tokens (first-token pairs vs the other pairs). Left axis radians, as the table;
  right axis the same in degrees; dotted line at pi/2 (orthogonal).
- `plot_histograms`: the sequential angles of each depth band (`rotations.plot.depth_bands`,
  see `bands`) in `rotations.plot.bins` bins over [0, pi], first-token pairs stacked on the
  other pairs (so the pooled distribution, and where its modes come from, are both visible),
  plus a rug of the first-token angles below the bars when there are few enough to see one by
  one. The x-axis ends 15 degrees past the largest angle (and past pi/2) when no angle comes
  near pi, and the title says so.

The histograms are accumulated one layer at a time (`band_histograms`), so memory stays flat in
corpus length. Each plotting function returns (figure, axes) without saving; `plot` saves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from laminae.errors import ConfigError
from laminae.experiment import FigureJob
from laminae.experiments.rotations.bands import band_count, band_name, depth_bands
from laminae.experiments.rotations.outputs import (ANGLES_FILENAME, SEQUENTIAL_FIRST, SEQUENTIAL_REST, TABLE_FILENAME,
                                                   AngleStats, open_angles, read_rotation_table)
from laminae.plots.style import COMPONENT_COLOURS, NEUTRAL, OKABE_ITO, run_title

import matplotlib.pyplot as plt  # noqa: E402  (after style, which selects the Agg backend)
from matplotlib.ticker import MaxNLocator, MultipleLocator  # noqa: E402

LAMINAR_FIGURE = "rotations_laminar"
HIST_FIGURE = "rotations_hist"
ERROR_BARS = {"sem": "SEM", "sd": "SD"}
RUG_MAX = 400                       # draw every first-token angle as a tick up to this many per band
#: metric -> (legend label, colour, marker); colours from the Okabe-Ito palette
SERIES = {
    "block_rotation": ("block rotation: resid_pre \u2192 resid_post", COMPONENT_COLOURS["resid_pre"], "o"),
    "attn_angle": ("attn_out vs resid_pre", COMPONENT_COLOURS["attn_out"], "s"),
    "mlp_angle": ("mlp_out vs resid_pre", COMPONENT_COLOURS["mlp_out"], "^"),
    SEQUENTIAL_FIRST: ("first-token pairs (t = 0, t = 1)", OKABE_ITO[5], "D"),
    SEQUENTIAL_REST: ("other consecutive pairs (t \u2265 1)", OKABE_ITO[2], "o"),
}
#: (title, metrics, what the statistics run over)
PANELS = (("within the block (same token)", ("block_rotation", "attn_angle", "mlp_angle"), "tokens"),
          ("between consecutive tokens: resid_post[t] vs resid_post[t + 1]", (SEQUENTIAL_FIRST, SEQUENTIAL_REST),
           "pairs"))


@dataclass(frozen=True)
class BandHistogram:
    """Counts of the sequential angles of one depth band, per bin."""

    layers: range
    edges: np.ndarray                  # (bins + 1,) radians, 0 to pi
    rest: np.ndarray                   # (bins,) other pairs
    first: np.ndarray                  # (bins,) first-token pairs
    first_values: np.ndarray | None    # every first-token angle of the band, None when more than RUG_MAX


def band_histograms(handle: h5py.File, bands: Sequence[range], bins: int) -> list[BandHistogram]:
    """Histograms of the defined sequential angles of an open `rotation_angles.h5`, per band,
    reading one layer at a time."""
    edges = np.linspace(0.0, np.pi, bins + 1)
    first_pair = handle["first_pair"][()].astype(bool)                          # (n_tokens,)
    rest_pair = handle["has_next"][()].astype(bool) & ~first_pair
    out = []
    for band in bands:
        rest, first = np.zeros(bins, dtype=np.int64), np.zeros(bins, dtype=np.int64)
        rug: list[np.ndarray] | None = []                                       # dropped past RUG_MAX values
        for layer in band:
            values = handle["sequential"][layer]                                # (n_tokens,)
            defined = ~np.isnan(values)
            rest += np.histogram(values[rest_pair & defined], edges)[0]
            firsts = values[first_pair & defined]
            first += np.histogram(firsts, edges)[0]
            if rug is not None:
                rug.append(firsts)
                rug = rug if sum(part.size for part in rug) <= RUG_MAX else None
        first_values = None if rug is None else np.concatenate([np.empty(0), *rug])
        out.append(BandHistogram(band, edges, rest, first, first_values))
    return out


# ------------------------------------------------------------------------------------ helpers
def _degrees_axis(ax: plt.Axes, which: str) -> None:
    """A secondary axis showing the radians of `which` ("x" or "y") in degrees."""
    functions = (np.degrees, np.radians)
    if which == "y":
        secondary = ax.secondary_yaxis("right", functions=functions)
        secondary.yaxis.set_major_locator(MultipleLocator(15))
        secondary.set_ylabel("degrees")
    else:
        secondary = ax.secondary_xaxis("top", functions=functions)
        secondary.xaxis.set_major_locator(MultipleLocator(45))
        secondary.set_xlabel("degrees", fontsize=8)


def _n_note(n: np.ndarray, what: str) -> str:
    n = np.asarray(n)
    return f"n = {n.min()} {what}" if n.min() == n.max() else f"n = {n.min()}-{n.max()} {what}"


# ------------------------------------------------------------------------------------ figures
def plot_laminar(table: Mapping[str, AngleStats], context: Mapping[str, Any], error_bar: str = "sem"
                 ) -> tuple[plt.Figure, np.ndarray]:
    """Two panels of mean angle per layer with error bars, on one y scale from 0 that always
    shows pi/2; see module docstring."""
    if error_bar not in ERROR_BARS:
        raise ConfigError("rotations.plot.error_bar", "sem or sd", error_bar)
    n_layers = table["block_rotation"].mean.size
    layers = np.arange(n_layers)
    fig, axes = plt.subplots(2, 1, figsize=(6.8, 6.8), sharex=True, sharey=True)
    top = np.pi / 2
    for ax, (panel, metrics, over) in zip(axes, PANELS):
        offsets = np.linspace(-0.08, 0.08, len(metrics)) if n_layers > 1 else np.zeros(len(metrics))
        for offset, metric in zip(offsets, metrics):
            stats, (label, colour, marker) = table[metric], SERIES[metric]
            errors = np.nan_to_num(stats.sem if error_bar == "sem" else stats.sd, nan=0.0)
            ax.errorbar(layers + offset, stats.mean, yerr=errors, fmt=f"{marker}-", color=colour, markersize=4,
                        linewidth=1.3, elinewidth=1.0, capsize=2.5, label=f"{label}; {_n_note(stats.n, 'per layer')}")
            with np.errstate(invalid="ignore"):
                top = max(top, float(np.nanmax(stats.mean + errors, initial=0.0)))
        ax.axhline(np.pi / 2, color=NEUTRAL, linewidth=0.9, linestyle=":", zorder=1, label="\u03c0/2: orthogonal")
        ax.set_ylabel(f"angle (radians)\nmean \u00b1 {ERROR_BARS[error_bar]} over {over}")
        ax.set_title(panel, fontsize=9)
        ax.legend(loc="lower left", fontsize=7.5)
        _degrees_axis(ax, "y")
    axes[0].set_ylim(0.0, min(np.pi, top * 1.06))       # from 0: a zero baseline keeps sizes honest
    axes[-1].set_xlabel("layer (block index, 0 = first)")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlim(-0.5, max(n_layers - 0.5, 0.5))
    fig.suptitle(run_title(context, "Rotations of the residual stream per layer"))
    return fig, axes


def _x_limit(histograms: Sequence[BandHistogram]) -> float:
    """The x-axis end: pi, or, when no angle reaches past it, the first bin edge at least 15
    degrees beyond both pi/2 and the largest angle (the axis then ends where the data do)."""
    edges = histograms[0].edges
    occupied = np.flatnonzero(sum(h.rest + h.first for h in histograms))
    largest = edges[occupied[-1] + 1] if occupied.size else 0.0
    limit = max(largest, np.pi / 2) + np.radians(15)
    return float(min(np.pi, edges[np.searchsorted(edges, limit - 1e-12)] if limit < np.pi else np.pi))


def plot_histograms(histograms: Sequence[BandHistogram], n_layers: int, context: Mapping[str, Any]
                    ) -> tuple[plt.Figure, np.ndarray]:
    """One panel per depth band: stacked counts of the sequential angles, first-token pairs on
    top of the others, and a rug of the first-token angles below the bars; see module docstring."""
    n_bands = len(histograms)
    fig, axes = plt.subplots(1, n_bands, figsize=(2.2 + 2.6 * n_bands, 4.2), sharey=True, squeeze=False)
    axes = axes[0]
    first_label, first_colour, _ = SERIES[SEQUENTIAL_FIRST]
    rest_label, rest_colour, _ = SERIES[SEQUENTIAL_REST]
    x_end = _x_limit(histograms)
    peak = max(int((h.rest + h.first).max(initial=0)) for h in histograms) or 1
    rug = (-0.075 * peak, -0.015 * peak)               # the strip below the bars that holds the rug
    for index, (ax, band) in enumerate(zip(axes, histograms)):
        widths = np.diff(band.edges)
        ax.bar(band.edges[:-1], band.rest, width=widths, align="edge", color=rest_colour, alpha=0.85,
               edgecolor="white", linewidth=0.3, label=rest_label)
        ax.bar(band.edges[:-1], band.first, width=widths, bottom=band.rest, align="edge", color=first_colour,
               edgecolor="white", linewidth=0.3, label=first_label)
        if band.first_values is not None and band.first_values.size:
            ax.vlines(band.first_values, *rug, color=first_colour, linewidth=1.0, label="each first-token angle")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.axvline(np.pi / 2, color=NEUTRAL, linewidth=0.9, linestyle=":", zorder=1, label="\u03c0/2: orthogonal")
        ax.set_xlim(0.0, x_end)
        ax.xaxis.set_major_locator(MultipleLocator(0.5))
        ax.set_xlabel("sequential angle (radians)")
        first, last = band.layers[0], band.layers[-1]
        span = f"layer {first}" if first == last else f"layers {first}\u2013{last}"
        ax.set_title(f"{band_name(index, n_bands)}: {span}\nn = {int(band.rest.sum())} other + "
                     f"{int(band.first.sum())} first-token", fontsize=8.5)
        _degrees_axis(ax, "x")
    axes[0].set_ylim(rug[0] * 1.1, peak * 1.05)
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_yticks([tick for tick in axes[0].get_yticks() if 0 <= tick <= peak * 1.05])
    axes[0].set_ylabel("count (pairs \u00d7 layers)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:                                 # the rug may be in another panel only
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=7.5)
    cut = "" if x_end >= np.pi else f"; x-axis ends at {np.degrees(x_end):.0f}\u00b0: no angle beyond"
    note = f"{n_layers} layers in {n_bands} depth band{'s' if n_bands > 1 else ''} (pairs \u00d7 layers pooled){cut}"
    fig.suptitle(run_title(context, "Angles between consecutive tokens (resid_post), by depth") + f"\n{note}",
                 fontsize=9.5)
    return fig, axes


def plot(job: FigureJob) -> None:
    """The plot hook: the laminar profile and the histograms per depth band."""
    error_bar, bins, n_bands = job.plot["error_bar"], job.plot["bins"], job.plot["depth_bands"]
    if error_bar not in ERROR_BARS:     # before anything is drawn
        raise ConfigError("rotations.plot.error_bar", "sem or sd", error_bar)
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 2:
        raise ConfigError("rotations.plot.bins", "an integer >= 2", bins)
    table = read_rotation_table(job.metrics_dir / TABLE_FILENAME)
    n_layers = table["block_rotation"].mean.size
    bands = depth_bands(n_layers, band_count(n_layers, n_bands))   # at most one band per layer
    with open_angles(job.metrics_dir / ANGLES_FILENAME) as handle:
        histograms = band_histograms(handle, bands, bins)
    job.save(plot_laminar(table, job.context, error_bar)[0], LAMINAR_FIGURE)
    job.save(plot_histograms(histograms, n_layers, job.context)[0], HIST_FIGURE)
