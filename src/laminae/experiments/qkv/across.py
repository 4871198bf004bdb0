"""Experiment 1 across the runs of a sweep (`Experiment.across`): the Q, K and V similarity
matrices of two runs compared layer by layer, model or checkpoint A's layer i against B's layer
j, with the statistics of the within-run RSA (`laminae.metrics.rsa`: Pearson or Spearman of
the upper triangles, a bootstrap over words for the intervals).

    >>> analyse(job)    # AcrossJob: rows matched by word -> metrics/rsa_across.tsv
    >>> plot(job)       # FigureJob -> figures/qkv_rsa_across.png: per pair, one A x B heatmap per component

The words are the items every run holds (`job.read`: the same words in the same order), so a
bootstrap resample draws the same words for both runs of a pair. Cosine similarities as within a
run (`qkv.zscore` respected); the settings are the runs' shared analysis settings.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from laminae.experiment import AcrossJob, FigureJob
from laminae.metrics.rsa import rsa, rsa_bootstrap
from laminae.metrics.similarity import cosine_similarity
from laminae.store import read_tsv, write_tsv

TABLE = "rsa_across.tsv"
FIGURE = "qkv_rsa_across"
COLUMNS = ("run_a", "run_b", "component", "layer_a", "layer_b", "depth_a", "depth_b", "rsa", "ci_low", "ci_high",
           "n_words", "method", "match")


def analyse(job: AcrossJob) -> None:
    """Every pair of runs (`job.pairs()`: each run against the reference in a large sweep), every
    component: the (layers A x layers B) RSA with bootstrap CIs."""
    settings = job.settings
    method, zscore = settings["rsa_method"], bool(settings["zscore"])
    similarities = {(run, c): cosine_similarity(job.read(run, c), zscore=zscore)   # (L_run, n, n)
                    for run in range(job.n_runs) for c in settings["components"]}
    rows = []
    for a, b in job.pairs():
        for component in settings["components"]:
            sa, sb = similarities[(a, component)], similarities[(b, component)]
            observed, low, high = layer_by_layer(sa, sb, method, settings)
            for i, j in np.ndindex(observed.shape):
                rows.append({"run_a": job.labels[a], "run_b": job.labels[b], "component": component,
                             "layer_a": i, "layer_b": j, "depth_a": depth(i, sa.shape[0]),
                             "depth_b": depth(j, sb.shape[0]), "rsa": observed[i, j], "ci_low": low[i, j],
                             "ci_high": high[i, j], "n_words": job.n_items, "method": method,
                             "match": job.match_rule})
    write_tsv(job.out_dir / TABLE, rows, COLUMNS)


def layer_by_layer(sa: np.ndarray, sb: np.ndarray, method: str, settings: dict[str, Any]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RSA of every layer of A (L_a, n, n) against every layer of B (L_b, n, n): the observed
    (L_a, L_b) and its bootstrap interval over words (the same resampled words on both sides)."""
    grid_a = np.broadcast_to(sa[:, None], (sa.shape[0], sb.shape[0], *sa.shape[1:]))
    grid_b = np.broadcast_to(sb[None, :], (sa.shape[0], sb.shape[0], *sb.shape[1:]))
    observed = rsa(grid_a, grid_b, method=method)
    if settings["n_bootstrap"] == 0:
        nan = np.full(observed.shape, math.nan)
        return observed, nan, nan.copy()
    boot = rsa_bootstrap(np.stack([grid_a, grid_b]), [(0, 1)], method=method, n_bootstrap=settings["n_bootstrap"],
                         confidence=settings["confidence"], seed=settings["seed"])
    return observed, boot.ci_low[0], boot.ci_high[0]


def depth(layer: int, n_layers: int) -> float:
    """Relative depth layer / (n_layers - 1) (0 for a one-layer model)."""
    return layer / max(n_layers - 1, 1)


def plot(job: FigureJob) -> None:
    """Per pair of runs (rows), per component (columns): the A x B RSA heatmap."""
    from laminae.plots.style import plt

    table = read_tsv(Path(job.metrics_dir) / TABLE)
    pairs = list(dict.fromkeys((row["run_a"], row["run_b"]) for row in table))
    components = list(dict.fromkeys(row["component"] for row in table))
    fig, axes = plt.subplots(len(pairs), len(components), figsize=(3.6 * len(components) + 1.2, 3.4 * len(pairs)),
                             squeeze=False, constrained_layout=True)
    image = None
    for row_index, (run_a, run_b) in enumerate(pairs):
        for col, component in enumerate(components):
            cells = [r for r in table if (r["run_a"], r["run_b"], r["component"]) == (run_a, run_b, component)]
            shape = (max(int(r["layer_a"]) for r in cells) + 1, max(int(r["layer_b"]) for r in cells) + 1)
            grid = np.full(shape, math.nan)
            for r in cells:
                grid[int(r["layer_a"]), int(r["layer_b"])] = float(r["rsa"])
            ax = axes[row_index, col]
            image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=-1, vmax=1,
                              interpolation="nearest")
            ax.grid(False)
            ax.set_title(f"{component.upper()}", fontsize=10)
            ax.set_xlabel(f"layer of {short(run_b)}", fontsize=8)
            ax.set_ylabel(f"layer of {short(run_a)}", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label=f"RSA ({table[0]['method']}) of the similarity matrices")
    models = ", ".join(dict.fromkeys(job.context.get("models", [])))
    fig.suptitle(f"Experiment 1 across runs: RSA of Q, K, V similarity structure, layer x layer\n"
                 f"{models}; {table[0]['n_words']} words matched by word")
    job.save(fig, FIGURE)


def short(label: str, limit: int = 40) -> str:
    """A run's label for an axis, shortened."""
    return label if len(label) <= limit else label[: limit - 1] + "…"
