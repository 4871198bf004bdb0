"""Experiment 1 across the runs of a sweep: the selectivity of Q, K, V and the RSA between them,
one line per run (x = relative depth when the models' depths differ).

    >>> fig = compare(job)      # job.metrics_dirs: one metrics folder per run
"""

from __future__ import annotations

from collections.abc import Sequence

from laminae.experiment import CompareJob
from laminae.experiments.qkv.analysis import TABLE_FILENAME, LaminarTable
from laminae.experiments.qkv.figures import display_name
from laminae.plots.overlay import depth_axis, run_style
from laminae.plots.style import NEUTRAL, plt

QKV_ROWS = (("selectivity", ("q", "k", "v")), ("rsa", ("q-k", "q-v", "k-v")))


def compare(job: CompareJob) -> plt.Figure:
    tables = [LaminarTable.read(folder / TABLE_FILENAME) for folder in job.metrics_dirs]
    return plot_qkv_comparison(tables, job.labels, f"Sweep: Q, K, V laminar profiles of {len(tables)} runs",
                               [settings["selectivity"] for settings in job.settings])


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
