"""Logit-lens figures, drawn from the metrics only:

    >>> plot(job)   # -> figures/logit_lens_{profile,grid,dla,pathlength}.png|pdf

- `plot_profile`: the laminar profile, four panels over layers: median rank of the real next
  token (log axis), median and mean log-prob, median and mean KL(final || layer), top-1
  agreement with the final layer; bootstrap CI bands.
- `plot_grid`: the classic logit-lens picture: layers (rows, last on top) x tokens of the
  configured stretch (columns), each cell the layer's decoded top-1 token, coloured by the
  log-prob (or rank) of the real next token; bold and boxed where the top-1 is the real next
  token. Whitespace is made visible: \u2423 space, \u21b5 newline, \u2192 tab.
- `plot_dla`: direct logit attribution of the next token per layer: attn_out and mlp_out (mean
  with CI, median dashed), the embedding left of layer 0.
- `plot_pathlength`: each token's path length against the final log-prob of its next token,
  first tokens of windows marked; Pearson and Spearman with CIs, with and without them.

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
from laminae.plots.references import draw_references, merge_legend
from laminae.plots.style import COMPONENT_COLOURS, NEUTRAL, OKABE_ITO, run_title

from .table import LensTable, read_correlations, read_grid

import matplotlib.pyplot as plt  # noqa: E402  (after style, which selects the Agg backend)
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

BAND_ALPHA = 0.18
GRID_COLOURS = ("logprob", "rank")
MAX_CELL_CHARS = 9
#: panel: (metric, statistics drawn (first solid, then dashed), y label, log axis, measure name)
PROFILE_PANELS = (("rank", ("median",), "rank of the next token\n(median; 1 = top-1)", True, "rank_median"),
                  ("logprob", ("median", "mean"), "log p(next token), nats", False, "logprob_median"),
                  ("kl", ("median", "mean"), "KL(final \u2016 layer), nats", False, "kl_median"),
                  ("top1_agreement", ("mean",), "top-1 = final top-1\n(fraction of tokens)", False, "top1_agreement"))


def stored_model(metrics_dir: Path) -> dict[str, Any]:
    """The stored model's `random_weights` and the run's vocabulary size (the .h5's attributes)."""
    try:
        with h5py.File(Path(metrics_dir) / "logit_lens_tokens.h5", "r") as handle:
            return {"random_weights": bool(handle.attrs.get("activations_random_weights", False)),
                    "vocab_size": int(handle.attrs.get("vocab_size", 0))}
    except OSError:
        return {"random_weights": False, "vocab_size": 0}


def _band(ax, x, table: LensTable, metric: str, statistic: str, colour: str, linestyle: str, label: str) -> None:
    value = table.get(metric, statistic)
    ax.plot(x, value, color=colour, linestyle=linestyle, marker="o" if linestyle == "-" else None, markersize=2.5,
            linewidth=1.4, label=label)
    low, high = table.get(metric, statistic, "ci_low"), table.get(metric, statistic, "ci_high")
    if np.isfinite(low).any():
        ax.fill_between(x, low, high, color=colour, alpha=BAND_ALPHA if linestyle == "-" else 0.08, linewidth=0)


def plot_profile(table: LensTable, context: Mapping[str, Any], references: Sequence[Mapping[str, Any]] = (),
                 vocab_size: int = 0) -> tuple[plt.Figure, np.ndarray]:
    """2 x 2 panels over layers (module docstring)."""
    n_layers = table.n_layers
    x = np.arange(n_layers)
    fig, axes = plt.subplots(2, 2, figsize=(9.5, 6.6), sharex=True, squeeze=False)
    n = int(table.get("logprob", "median", "n")[0]) if n_layers else 0
    for ax, (metric, statistics, ylabel, log_axis, measure) in zip(axes.flat, PROFILE_PANELS):
        for statistic, linestyle in zip(statistics, ("-", "--")):
            _band(ax, x, table, metric, statistic, OKABE_ITO[0] if linestyle == "-" else OKABE_ITO[5], linestyle,
                  statistic)
        if log_axis:
            ax.set_yscale("log")
            if vocab_size:
                ax.axhline(vocab_size / 2, color=NEUTRAL, linewidth=0.9, linestyle=":", label="chance (vocab / 2)")
        if metric == "top1_agreement":
            ax.set_ylim(-0.03, 1.03)
        if metric == "kl":
            ax.axhline(0.0, color=NEUTRAL, linewidth=0.9, linestyle=":")
        drawn = draw_references(ax, references, n_layers, series=(measure,))
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(statistics) > 1 or drawn or (log_axis and vocab_size):
            ax.legend(*merge_legend(ax, drawn), fontsize=7.5, loc="best")
    for ax in axes[1]:
        ax.set_xlabel("layer (resid_post through the final norm and unembedding)")
    fig.suptitle(run_title(context, f"Logit lens: what each layer predicts ({n} tokens; bands: bootstrap CI)"))
    return fig, axes


def cell_text(text: str) -> str:
    """A token as a short cell label: whitespace made visible, long tokens cut."""
    shown = text.replace("\n", "\u21b5").replace("\t", "\u2192").replace(" ", "\u2423")
    return shown if len(shown) <= MAX_CELL_CHARS else shown[: MAX_CELL_CHARS - 1] + "\u2026"


def plot_grid(grid: Sequence[Mapping[str, Any]], context: Mapping[str, Any], colour: str, window: int
              ) -> tuple[plt.Figure, Any]:
    """Layers x tokens of decoded top-1 tokens (module docstring)."""
    if colour not in GRID_COLOURS:
        raise ConfigError("logit_lens.plot.grid_colour", " or ".join(GRID_COLOURS), colour)
    if not grid:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no analysed token in the configured stretch (logit_lens.grid, max_tokens)",
                ha="center", va="center")
        fig.suptitle(run_title(context, "Logit lens grid"))
        return fig, ax
    layers = sorted({c["layer"] for c in grid})
    positions = sorted({c["position"] for c in grid})
    by = {(c["layer"], c["position"]): c for c in grid}
    values = np.array([[by[l, p][colour] for p in positions] for l in layers], dtype=float)   # (n_layers, span)
    if colour == "logprob":
        norm, cmap, label = Normalize(vmin=max(values.min(), -20.0), vmax=0.0), "viridis", "log p(real next token)"
    else:
        norm, cmap, label = LogNorm(vmin=1, vmax=max(values.max(), 10)), "viridis_r", "rank of the real next token"
    width = max(7.0, 0.78 * len(positions) + 2.2)
    height = max(4.0, 0.24 * len(layers) + 2.2)
    fig, ax = plt.subplots(figsize=(width, height))
    mesh = ax.pcolormesh(np.arange(len(positions) + 1) - 0.5, np.arange(len(layers) + 1) - 0.5, values, cmap=cmap,
                         norm=norm, shading="flat")
    colormap = mesh.get_cmap()
    for i, layer in enumerate(layers):
        for j, position in enumerate(positions):
            c = by[layer, position]
            r, g, b, _ = colormap(norm(np.clip(values[i, j], norm.vmin, norm.vmax)))
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            hit = c["rank"] == 1                       # the layer's top-1 is the real next token
            ax.text(j, i, cell_text(c["top1"]), ha="center", va="center", fontsize=6.5, color=ink,
                    fontweight="bold" if hit else "normal")
            if hit:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.1))
    first = {p: by[layers[0], p] for p in positions}
    ax.set_xticks(range(len(positions)), [cell_text(first[p]["token"]) for p in positions], rotation=60,
                  ha="right", fontsize=7)
    top = ax.secondary_xaxis("top")
    top.set_xticks(range(len(positions)), [cell_text(first[p]["next_token"]) for p in positions], rotation=60,
                   ha="left", fontsize=7)
    top.set_xlabel("real next token", fontsize=8)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=6.5)
    ax.set_ylabel("layer")
    ax.set_xlabel(f"input token (window {window}, positions {positions[0]}..{positions[-1]})")
    ax.grid(False)
    fig.colorbar(mesh, ax=ax, label=label, shrink=0.8, pad=0.01)
    fig.suptitle(run_title(context, "Logit lens: each layer's top-1 token (bold, boxed: the real next token)"))
    return fig, ax


def plot_dla(table: LensTable, context: Mapping[str, Any], references: Sequence[Mapping[str, Any]] = ()
             ) -> tuple[plt.Figure, Any]:
    """Direct logit attribution per layer (module docstring)."""
    n_layers = table.n_layers
    x = np.arange(n_layers)
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    ax.axhline(0.0, color=NEUTRAL, linewidth=0.9, linestyle=":")
    for metric, site in (("dla_attn", "attn_out"), ("dla_mlp", "mlp_out")):
        colour = COMPONENT_COLOURS[site]
        _band(ax, x, table, metric, "mean", colour, "-", f"{site}: mean")
        ax.plot(x, table.get(metric, "median"), color=colour, linestyle="--", linewidth=1.0, label=f"{site}: median")
    embed = {s: table.embed("dla_embed", "mean", s) for s in ("value", "ci_low", "ci_high")}
    ax.errorbar([-1], [embed["value"]], yerr=[[embed["value"] - embed["ci_low"]], [embed["ci_high"] - embed["value"]]]
                if np.isfinite(embed["ci_low"]) else None, fmt="D", color=COMPONENT_COLOURS["resid_pre"], markersize=5,
                capsize=3, label="embedding: mean")
    ax.plot([-1], [table.embed("dla_embed", "median")], marker="d", markerfacecolor="white",
            color=COMPONENT_COLOURS["resid_pre"], linestyle="none", label="embedding: median")
    drawn = draw_references(ax, references, n_layers, series=("dla_attn_mean", "dla_mlp_mean"))
    ax.set_xticks([-1, *[t for t in ax.get_xticks() if 0 <= t < n_layers and float(t).is_integer()]])
    ax.set_xticklabels(["emb", *[str(int(t)) for t in ax.get_xticks()[1:]]])
    ax.set_xlim(-1.6, n_layers - 0.4)
    ax.set_xlabel("layer")
    ax.set_ylabel("direct contribution to the\nnext token's logit (final norm frozen)")
    rest = table.embed("dla_rest", "mean")
    ax.legend(*merge_legend(ax, drawn), fontsize=7.5, ncol=3, loc="best",
              title=f"rest (biases etc.), mean: {rest:.3g}", title_fontsize=7.5)
    fig.suptitle(run_title(context, "Direct logit attribution of the real next token (band: bootstrap CI of the mean)"))
    return fig, ax


def plot_pathlength(metrics_dir: Path, context: Mapping[str, Any]) -> tuple[plt.Figure, Any]:
    """Path length against the final log-prob of the next token (module docstring)."""
    with h5py.File(Path(metrics_dir) / "logit_lens_tokens.h5", "r") as handle:
        path_length, position = handle["path_length"][()], handle["position"][()]
        logprob = handle["logprob"][-1] if handle["logprob"].shape[0] else np.array([])
    correlations = read_correlations(Path(metrics_dir) / "logit_lens_pathlength.tsv")
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    first = position == 0
    ax.scatter(path_length[~first], logprob[~first], s=7, alpha=0.45, color=OKABE_ITO[0], linewidths=0,
               label=f"tokens ({int((~first).sum())})")
    ax.scatter(path_length[first], logprob[first], s=28, marker="^", color=OKABE_ITO[5], edgecolors="black",
               linewidths=0.4, label=f"first token of a window ({int(first.sum())})")
    lines = []
    for tokens, name in (("all", "all tokens"), ("without_first", "without first tokens")):
        parts = []
        for method, symbol in (("pearson", "r"), ("spearman", "\u03c1")):
            c = correlations.get((method, tokens), {})
            interval = f" [{c['ci_low']:.2f}, {c['ci_high']:.2f}]" if np.isfinite(c.get("ci_low", np.nan)) else ""
            parts.append(f"{symbol} = {c.get('value', np.nan):.2f}{interval}")
        lines.append(f"{name}: " + ", ".join(parts))
    ax.set_title("\n".join(lines), fontsize=8, loc="left")
    log_axis = bool(path_length.size) and bool(np.all(path_length > 0))
    if log_axis:
        ax.set_xscale("log")          # the first token's path is often an order of magnitude longer
    ax.set_xlabel("path length of the token (\u03a3 over layers of |resid_post \u2212 resid_pre|"
                  + (", log axis)" if log_axis else ")"))
    ax.set_ylabel("final log p(real next token), nats")
    fig.legend(loc="outside lower center", ncol=2, fontsize=7.5)
    fig.suptitle(run_title(context, "Path length vs next-token log-prob (bootstrap CIs over tokens)"))
    return fig, ax


def plot(job: FigureJob) -> None:
    """The plot hook: the four figures."""
    colour = job.plot.get("grid_colour", "logprob")
    if colour not in GRID_COLOURS:
        raise ConfigError("logit_lens.plot.grid_colour", " or ".join(GRID_COLOURS), colour)
    table = LensTable.read(job.metrics_dir / "logit_lens.tsv")
    model = stored_model(job.metrics_dir)
    job.save(plot_profile(table, job.context, job.references, model["vocab_size"])[0], "logit_lens_profile")
    window = int(job.settings.get("grid", {}).get("window", 0))
    job.save(plot_grid(read_grid(job.metrics_dir / "logit_lens_grid.tsv"), job.context, colour, window)[0],
             "logit_lens_grid")
    job.save(plot_dla(table, job.context, job.references)[0], "logit_lens_dla")
    job.save(plot_pathlength(job.metrics_dir, job.context)[0], "logit_lens_pathlength")
    plt.close("all")
