"""Sweep comparison figures: the laminar curves of every run of a sweep, overlaid.

    >>> make_comparison(stage, tables=[".../qkv_laminar.tsv", ...], out_png=Path("compare_qkv.png"))

`stage["config"]` holds `experiment`, `runs` (one label per table, same order) and `plot.dpi`.
When the runs' depths differ (say GPT-2 with 12 layers and MiniLM with 6), the x-axis is the
relative depth layer / (n_layers - 1), so the first and last layers line up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from laminae.analysis.adjustments import COSINE, read_adjustment_table
from laminae.plots.qkv import LaminarTable, display_name
from laminae.plots.style import NEUTRAL, OKABE_ITO, plt, save_figure
from laminae.provenance import atomic_write_text, dump_yaml

QKV_ROWS = (("selectivity", ("q", "k", "v")), ("rsa", ("q-k", "q-v", "k-v")))
LINE_STYLES = ("-", "--", ":", "-.")


def depth_axis(n_layers: Sequence[int]) -> tuple[list[np.ndarray], str]:
    """x values per run: layer indices when all depths agree, else relative depth in [0, 1]."""
    if len(set(n_layers)) == 1:
        return [np.arange(n) for n in n_layers], "layer"
    return [np.arange(n) / max(n - 1, 1) for n in n_layers], "relative depth  layer / (n_layers - 1)"


def run_style(index: int) -> dict[str, Any]:
    """Colour per run, cycling line styles once the 8 Okabe-Ito colours are used up."""
    return {"color": OKABE_ITO[index % len(OKABE_ITO)], "linestyle": LINE_STYLES[index // len(OKABE_ITO) % 4]}


def plot_qkv_comparison(tables: Sequence[LaminarTable], labels: Sequence[str], title: str,
                        forms: Sequence[str] = ()) -> plt.Figure:
    """Rows: selectivity of Q, K, V; RSA of Q-K, Q-V, K-V. One line per run, x = depth.
    `forms`: each run's selectivity form; when they agree, the no-selectivity line is drawn."""
    form = forms[0] if forms and len(set(forms)) == 1 else None
    xs, xlabel = depth_axis([t.n_layers for t in tables])
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.2 + 0.25 * len(tables)), sharex=True, squeeze=False)
    for row, (metric, components) in enumerate(QKV_ROWS):
        for col, component in enumerate(components):
            ax = axes[row, col]
            for index, (table, x) in enumerate(zip(tables, xs)):
                if not table.has(metric, component):
                    continue
                ax.plot(x, table.get(metric, component), marker="o", markersize=2.5, linewidth=1.3,
                        label=labels[index], **run_style(index))
                if metric == "rsa":
                    ax.fill_between(x, table.get(metric, component, "ci_low"), table.get(metric, component, "ci_high"),
                                    alpha=0.12, color=run_style(index)["color"], linewidth=0)
            name = display_name(component)
            ax.set_title(f"{'selectivity of ' + name if metric == 'selectivity' else 'RSA ' + name}")
            if metric == "selectivity" and form is not None:
                ax.axhline(1.0 if form == "ratio" else 0.0, color=NEUTRAL, linewidth=0.9, linestyle=":")
            if col == 0:
                ax.set_ylabel(f"selectivity ({form or 'mixed forms'})" if metric == "selectivity" else "RSA (correlation)")
            if row == 1:
                ax.set_xlabel(xlabel)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 2), fontsize=8)
    fig.suptitle(title)
    return fig


def plot_adjustment_comparison(tables: Sequence[Mapping[str, Any]], labels: Sequence[str], title: str) -> plt.Figure:
    """Mean cos(attn_out, mlp_out) per layer with SEM bands, one line per run."""
    xs, xlabel = depth_axis([len(t[COSINE].mean) for t in tables])
    fig, ax = plt.subplots(figsize=(7.5, 4.2 + 0.25 * len(tables)))
    ax.axhline(0.0, color=NEUTRAL, linewidth=0.9, linestyle=":")
    for index, (table, x) in enumerate(zip(tables, xs)):
        stats = table[COSINE]
        style = run_style(index)
        ax.plot(x, stats.mean, marker="o", markersize=2.5, linewidth=1.3, label=labels[index], **style)
        ax.fill_between(x, stats.mean - stats.sem, stats.mean + stats.sem, alpha=0.15, color=style["color"], linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cos(attn_out, mlp_out)\nmean \u00b1 SEM over tokens")
    fig.legend(loc="outside lower center", ncol=min(len(tables), 2), fontsize=8)
    fig.suptitle(title)
    return fig


def make_comparison(stage: Mapping[str, Any], tables: Sequence[str | Path], out_png: Path) -> list[Path]:
    """Read the runs' metric tables, draw the overlay, write png + pdf and `sweep.yaml`."""
    config = stage["config"]
    labels = [run["label"] for run in config["runs"]]
    experiment = config["experiment"]
    if experiment == "qkv":
        fig = plot_qkv_comparison([LaminarTable.read(p) for p in tables], labels,
                                  f"Sweep: Q, K, V laminar profiles of {len(labels)} runs",
                                  [run["selectivity"] for run in config["runs"]])
    else:
        fig = plot_adjustment_comparison([read_adjustment_table(p) for p in tables], labels,
                                         f"Sweep: attention vs MLP adjustments in {len(labels)} runs")
    written = save_figure(fig, out_png, dpi=config["plot"]["dpi"])
    record = {"stage": stage["stage"], "hash": stage["hash"],
              "runs": [{**run, "table": str(path)} for run, path in zip(config["runs"], tables)]}
    atomic_write_text(out_png.with_name("sweep.yaml"), dump_yaml(record))
    return [*written, out_png.with_name("sweep.yaml")]
