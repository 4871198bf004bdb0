"""The figures of the `cka` experiment between runs (`across.plot` calls these):

- `plot_heatmaps`: one A x B layer heatmap per shown pair of runs;
- `plot_best_match`: for each layer of A, the relative depth of B's best-matching layer (one line
  per pair; the diagonal: the same relative depth);
- `plot_reference`: each run's layers against the same layer (same relative depth) of the
  reference run (the final checkpoint of a sweep over training steps, else the last run), as a
  run x layer heatmap; across checkpoints the rows sit on a log-spaced step axis
  (`laminae.plots.training`'s house style).

    >>> plot(job)   # the across plot hook: FigureJob (context: labels, models, match_rule, steps)
"""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np

from laminae.experiments.cka.across import (
    pair_matrix,
    read_across,
    reference_run,
    same_layer_profile,
    shown_pairs,
)
from laminae.experiments.cka.figures import HEATMAP_CMAP, colour_floor, heatmap
from laminae.metrics.cka import best_match, relative_depth
from laminae.plots.overlay import run_style
from laminae.plots.style import NEUTRAL, plt
from laminae.plots.training import row_edges, step_positions, step_ticks


def short(label: str, width: int = 34) -> str:
    return textwrap.shorten(label, width=width, placeholder="...")


def wrap(title: str, width: int = 70) -> str:
    return "\n".join(textwrap.wrap(title, width))


def plot_heatmaps(pairs, shown, labels, depths, what: str, rule: str) -> plt.Figure:
    columns = min(len(shown), 3)
    rows = int(np.ceil(len(shown) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(max(3.9 * columns + 1.0, 6.4), 3.7 * rows + 1.1), squeeze=False)
    low = colour_floor(*(pair_matrix(pairs, a, b) for a, b in shown))
    image = None
    for ax, (a, b) in zip(axes.flat, shown):
        image = heatmap(ax, pair_matrix(pairs, a, b), xlabel=f"layer of B: {short(labels[b])}",
                        ylabel=f"layer of A: {short(labels[a])}", vmin=low)
        if depths[a] == depths[b]:
            ax.plot([-0.5, depths[b] - 0.5], [-0.5, depths[a] - 0.5], color="white", linewidth=0.6, linestyle=":")
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, label=what, shrink=0.85, pad=0.02)
    fig.suptitle(wrap(f"Between runs: {what}, layers of A x layers of B. Rows matched by {rule}"))
    return fig


def plot_best_match(pairs, shown, labels, depths, what: str, rule: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.4, 4.6 + 0.22 * len(shown)))
    ax.plot([0, 1], [0, 1], color=NEUTRAL, linewidth=0.9, linestyle=":", label="same relative depth")
    for index, (a, b) in enumerate(shown):
        matrix = pair_matrix(pairs, a, b)
        match = best_match(matrix)
        keep = match >= 0
        x = relative_depth(np.arange(depths[a]), depths[a])
        best = float(np.nanmax(matrix)) if np.isfinite(matrix).any() else float("nan")
        ax.plot(x[keep], relative_depth(match[keep], depths[b]), marker="o", markersize=3, linewidth=1.3,
                label=f"A {short(labels[a], 28)}  vs  B {short(labels[b], 28)}  (highest CKA {best:.2f})",
                **run_style(index))
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_aspect("equal")
    ax.set_xlabel("layer of A, relative depth  layer / (n_layers - 1)")
    ax.set_ylabel("best-matching layer of B (highest CKA),\nrelative depth")
    fig.legend(loc="outside lower center", ncol=1, fontsize=7.5)
    fig.suptitle(wrap(f"Between runs: where each layer of A is best matched in B ({what})", 60))
    return fig


def plot_reference(pairs, reference, labels, depths, steps, what: str, rule: str) -> plt.Figure:
    others = [r for r in range(len(labels)) if r != reference]
    if steps:
        others = sorted(others, key=lambda r: steps[r])
    width = max(depths[r] for r in others)
    values = np.full((len(others), width), np.nan)                   # (runs, layers)
    for row, run in enumerate(others):
        values[row, : depths[run]] = same_layer_profile(pairs, run, reference, depths)
    fig, (heat, curves) = plt.subplots(1, 2, figsize=(11, 3.2 + 0.18 * len(others)),
                                       gridspec_kw={"width_ratios": [1.15, 1]})
    layer_edges = np.arange(width + 1) - 0.5
    low = colour_floor(values)
    if steps:
        positions = step_positions([steps[r] for r in others])
        mesh = heat.pcolormesh(layer_edges, row_edges(positions), np.ma.masked_invalid(values), cmap=HEATMAP_CMAP,
                               vmin=low, vmax=1.0, shading="flat")
        ticks, tick_labels = step_ticks([steps[r] for r in others], positions)
        heat.set_yticks(ticks, tick_labels)
        heat.set_ylabel("training step (log scale)")
        reference_name = f"the final checkpoint (step {steps[reference]:,})"
    else:
        mesh = heat.pcolormesh(layer_edges, np.arange(len(others) + 1) - 0.5, np.ma.masked_invalid(values),
                               cmap=HEATMAP_CMAP, vmin=low, vmax=1.0, shading="flat")
        heat.set_yticks(np.arange(len(others)), [short(labels[r], 24) for r in others])
        heat.set_ylabel("run")
        reference_name = f"run {short(labels[reference], 40)}"
    heat.grid(False)
    heat.set_xlabel("layer")
    fig.colorbar(mesh, ax=heat, label=what, pad=0.02)
    heat.set_title("per run and layer")
    cmap = plt.get_cmap("viridis")
    for row, run in enumerate(others):
        colour = cmap(0.9 * row / max(len(others) - 1, 1))
        name = f"step {steps[run]:,}" if steps else short(labels[run], 28)
        curves.plot(np.arange(depths[run]), values[row, : depths[run]], color=colour, marker="o", markersize=2.5,
                    linewidth=1.2, label=name)
    curves.axhline(0.0, color=NEUTRAL, linewidth=0.8)
    curves.set_xlabel("layer")
    curves.set_ylabel(f"CKA with the same layer of\n{short(reference_name, 44)}")
    curves.set_ylim(min(-0.05, float(np.nanmin(values)) - 0.05), 1.05)
    curves.set_title("one line per run" + (" (later = lighter)" if steps else ""))
    if len(others) <= 8:
        curves.legend(fontsize=7, loc="best")
    fig.suptitle(wrap(f"Each layer against the same layer of {reference_name} ({what})", 110))
    return fig


def plot(job: Any) -> None:
    """The across figures (`laminae.experiment.FigureJob`; `job.context`: labels, steps, ...)."""
    runs, pairs = read_across(job.metrics_dir)
    labels = [r["label"] for r in runs]
    steps = job.context.get("steps") if hasattr(job, "context") else None
    steps = list(steps) if steps else None
    depths = [int(r["n_layers"]) for r in runs]
    reference = reference_run(len(runs), steps)
    shown = shown_pairs(len(runs), reference)
    what = f"{job.settings['estimator']} CKA of {job.settings['site']}"
    rule = runs[0]["match_rule"]
    job.save(plot_heatmaps(pairs, shown, labels, depths, what, rule), "cka_across")
    job.save(plot_best_match(pairs, shown, labels, depths, what, rule), "cka_best_match")
    job.save(plot_reference(pairs, reference, labels, depths, steps, what, rule), "cka_reference")
