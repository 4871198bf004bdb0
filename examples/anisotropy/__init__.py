"""Anisotropy of the residual stream: per layer, the mean cosine similarity between the vectors
of two different tokens (Ethayarajh 2019). A complete laminae experiment, walked through in
docs/WRITING_AN_EXPERIMENT.md; enable it with experiment_packages=[examples]."""

from __future__ import annotations

import numpy as np

from laminae.experiment import Experiment, Figure, FigureJob, ReducerJob
from laminae.store import read_tsv, write_tsv


class AnisotropyReducer:
    """Keeps, per layer, the sum of the tokens' unit vectors and their count: the mean cosine
    over all ordered pairs of distinct tokens is (|sum|^2 - n) / (n (n - 1))."""

    def __init__(self, job: ReducerJob):
        self.out_dir = job.out_dir
        self.keep = job.rows.integers("position") > 0 if job.settings["exclude_first_token"] else None
        self.unit_sum = np.zeros((job.n_layers, job.widths["resid_post"]))  # (n_layers, d_model)
        self.n = np.zeros(job.n_layers, dtype=np.int64)                      # (n_layers,)

    def update(self, start: int, chunk: dict[str, np.ndarray]) -> None:
        x = chunk["resid_post"].astype(np.float64)                  # (n_layers, rows, d_model)
        if self.keep is not None:
            x = x[:, self.keep[start : start + x.shape[1]]]
        norms = np.linalg.norm(x, axis=-1, keepdims=True)           # (n_layers, rows, 1)
        self.unit_sum += np.divide(x, norms, out=np.zeros_like(x), where=norms > 0).sum(axis=1)
        self.n += (norms[..., 0] > 0).sum(axis=1)

    def finish(self) -> None:
        pairs = self.n * (self.n - 1)
        mean_cosine = ((self.unit_sum**2).sum(axis=1) - self.n) / np.maximum(pairs, 1)
        rows = [{"layer": layer, "anisotropy": value, "n": n}
                for layer, (value, n) in enumerate(zip(mean_cosine.tolist(), self.n.tolist()))]
        write_tsv(self.out_dir / "anisotropy.tsv", rows, ["layer", "anisotropy", "n"])


def plot(job: FigureJob) -> None:
    from matplotlib.ticker import MaxNLocator

    from laminae.plots.style import plt, run_title

    rows = read_tsv(job.metrics_dir / "anisotropy.tsv")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([int(r["layer"]) for r in rows], [float(r["anisotropy"]) for r in rows], marker="o",
            color=job.plot["colour"])
    ax.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlabel="layer", ylabel="mean cosine between tokens", ylim=(min(-0.05, ax.get_ylim()[0]), 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(run_title(job.context, "Anisotropy of the residual stream (resid_post)"))
    job.save(fig, "anisotropy")


EXPERIMENT = Experiment(
    name="anisotropy",
    title="Anisotropy of the residual stream",
    inputs="corpus",
    sites=("resid_post",),
    metrics=("anisotropy.tsv",),
    figures=(Figure("anisotropy", caption="caption.rst", label="laminar profile"),),
    reducer=AnisotropyReducer,
    plot=plot,
    schema={"type": "object", "additionalProperties": False, "required": ["exclude_first_token", "plot"],
            "properties": {"exclude_first_token": {"type": "boolean"},
                           "plot": {"type": "object", "properties": {"colour": {"type": "string"}}}}},
)
