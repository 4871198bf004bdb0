"""State-space trajectories (course module of the path-length challenge, completed): every
token's path through the layers in one shared low-dimensional space.

    >>> analyse(job)     # job: laminae.experiment.AnalysisJob -> trajectories.tsv, trajectories_pca.tsv,
    ...                  #    trajectories_tokens.h5

A token's trajectory is its embedding (resid_pre of layer 0) followed by every block's output
(resid_post of layers 0..L-1): L + 1 points (`laminae.metrics.trajectories`). Two streamed
passes over the store, so memory stays at a chunk plus one (d, d) float64 matrix:

1. every chunk: the points of the included tokens go into the streamed PCA
   (`StreamingPCA`: tokens x depths rows, covariance accumulated in float64), and each token's
   step lengths and turning angles in the full space are written to the .h5;
2. after the fit: each chunk's points are projected on the first `n_components` components and
   the same step lengths and angles are computed in that space; the selected tokens' projected
   trajectories are kept for the figure.

Then, per layer, the mean, SEM and the 5/25/50/75/95 % quantiles of each per-token value over
the included tokens (the first token of every window left out with `exclude_first_token`: its
activations are orders of magnitude larger in many models and would dominate the PCA).

Indexing: `step` at layer l is block l's step, ||x_{l+1} - x_l|| (x_0 the embedding), l = 0..L-1;
`length` at layer l is the path length up to block l, the sum of steps 0..l (at l = L - 1 the
whole trajectory's length);
`turn` at layer l is the angle between block l-1's step and block l's, l = 1..L-1 (the
curvature where the stream enters block l).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from laminae.errors import ConfigError
from laminae.experiment import AnalysisJob
from laminae.metrics.trajectories import PCAFit, StreamingPCA, trajectory_points, trajectory_steps
from laminae.store import write_tsv

log = logging.getLogger(__name__)

SITES = ("resid_pre", "resid_post")
TABLE_FILENAME = "trajectories.tsv"
PCA_FILENAME = "trajectories_pca.tsv"
TOKENS_FILENAME = "trajectories_tokens.h5"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
QUANTILE_COLUMNS = tuple(f"q{round(100 * q):02d}" for q in QUANTILES)
TABLE_COLUMNS = ("layer", "metric", "value", "sem", "n", *QUANTILE_COLUMNS)
#: per-token arrays: name -> (space, kind)
TOKEN_ARRAYS = {"step_full": ("full", "step"), "step_pca": ("pca", "step"),
                "turn_full": ("full", "turn"), "turn_pca": ("pca", "turn"),
                "length_full": ("full", "step"), "length_pca": ("pca", "step")}
DEFINITIONS = {
    "points": "x_0 = resid_pre[0], x_{l+1} = resid_post[l]",
    "step": "step[l, t] = ||x_{l+1} - x_l|| (block l's step)",
    "turn": "turn[l, t] = angle(x_l - x_{l-1}, x_{l+1} - x_l) in degrees, l = 1..L-1",
    "length": "length[l, t] = sum over k <= l of step[k, t] (the path length up to block l; l = L-1: the whole)",
    "pca": "PCA of every included token's L + 1 points; *_pca: the same in the first n_components",
}
INDEX_COLUMNS = ("window", "position", "token_id")
#: rows per streamed chunk; None: what fits the store's budget (tests set it to cut uneven chunks)
CHUNK_ROWS: int | None = None


def check_settings(settings: Mapping[str, Any]) -> None:
    """ConfigError naming the `trajectories.*` key (what the schema cannot say)."""
    select = settings["select"]
    if select["strings"] and not all(isinstance(s, str) and s.strip() for s in select["strings"]):
        raise ConfigError("trajectories.select.strings", "a list of non-blank strings", select["strings"])


def selected_rows(rows, select: Mapping[str, Any], included: np.ndarray) -> np.ndarray:
    """Row indices of the tokens drawn in the figure: the first `select.count` included rows
    whose token text (spaces stripped) is one of `select.strings`, else the first
    `select.count` included rows of window `select.window`. (n_selected,) int64."""
    tokens = [str(t) for t in rows.column("token")]
    if select["strings"]:
        wanted = set(select["strings"])
        chosen = [i for i, text in enumerate(tokens) if included[i] and text.strip() in wanted]
    else:
        window = rows.integers("window")
        chosen = np.flatnonzero((window == select["window"]) & included).tolist()
        if not chosen and len(window):
            raise ConfigError("trajectories.select.window", f"a window of this corpus (0..{int(window.max())})",
                              select["window"])
    return np.asarray(chosen[: select["count"]], dtype=np.int64)


def describe_selection(select: Mapping[str, Any], n_chosen: int) -> str:
    """How the drawn tokens were chosen, for the figure's title."""
    if select["strings"]:
        return f"{n_chosen} tokens matching {', '.join(repr(s) for s in select['strings'])}"
    return f"the first {n_chosen} tokens of window {select['window']}"


def analyse(job: AnalysisJob) -> None:
    settings = job.settings
    check_settings(settings)
    store, out_dir = job.store, Path(job.out_dir)
    n_layers, n_rows = store.n_layers, store.n_rows
    width = store.widths["resid_post"]
    k = int(settings["n_components"])
    if k > width:
        raise ConfigError("trajectories.n_components", f"at most the model's width {width}", k)
    position = store.rows.integers("position")
    included = position > 0 if settings["exclude_first_token"] else np.ones(n_rows, dtype=bool)
    chosen = selected_rows(store.rows, settings["select"], included)
    chunk_rows = CHUNK_ROWS or store.chunk_rows(SITES)

    handle = h5py.File(out_dir / TOKENS_FILENAME, "w", track_order=True)
    handle.attrs.update({**job.attrs, **{f"definition_{name}": text for name, text in DEFINITIONS.items()},
                         "n_components": k, "exclude_first_token": bool(settings["exclude_first_token"]),
                         "selection": describe_selection(settings["select"], len(chosen))})
    h5_chunks = (1, max(1, min(n_rows, 32768)))
    shapes = {"step": n_layers, "turn": max(n_layers - 1, 0)}
    out = {name: handle.create_dataset(name, shape=(shapes[kind], n_rows), dtype=np.float64, fillvalue=np.nan,
                                       chunks=h5_chunks if shapes[kind] else None, track_times=False)
           for name, (_, kind) in TOKEN_ARRAYS.items()}
    for column in INDEX_COLUMNS:
        handle.create_dataset(column, data=store.rows.integers(column), track_times=False)
    handle.create_dataset("included", data=included, track_times=False)

    # pass 1: PCA sums and the full-space geometry
    pca = StreamingPCA(width)
    for start, chunk in store.iter_chunks(SITES, chunk_rows, dtype=store.read_dtype()):
        points = trajectory_points(chunk["resid_pre"], chunk["resid_post"])     # (L + 1, rows, d)
        stop = start + points.shape[1]
        keep = included[start:stop]
        pca.update(points[:, keep].reshape(-1, width))
        geometry = trajectory_steps(points)
        out["step_full"][:, start:stop] = geometry.step
        out["length_full"][:, start:stop] = np.cumsum(geometry.step, axis=0)
        if n_layers > 1:
            out["turn_full"][:, start:stop] = geometry.turn
    fit = pca.fit(k)
    log.info("PCA of %d points (%d tokens x %d depths): first %d components explain %.1f%% of the variance",
             fit.n, int(included.sum()), n_layers + 1, k, 100 * fit.explained_ratio.sum())

    # pass 2: projections
    selected = np.full((len(chosen), n_layers + 1, k), np.nan)
    for start, chunk in store.iter_chunks(SITES, chunk_rows, dtype=store.read_dtype()):
        projected = fit.project(trajectory_points(chunk["resid_pre"], chunk["resid_post"]))   # (L + 1, rows, k)
        stop = start + projected.shape[1]
        geometry = trajectory_steps(projected)
        out["step_pca"][:, start:stop] = geometry.step
        out["length_pca"][:, start:stop] = np.cumsum(geometry.step, axis=0)
        if n_layers > 1:
            out["turn_pca"][:, start:stop] = geometry.turn
        inside = (chosen >= start) & (chosen < stop)
        selected[inside] = projected[:, chosen[inside] - start].transpose(1, 0, 2)

    _write_selection(handle, fit, chosen, selected, store.rows)
    table = []
    for name in TOKEN_ARRAYS:
        first = 1 if TOKEN_ARRAYS[name][1] == "turn" else 0
        for index in range(out[name].shape[0]):
            table.append(layer_row(index + first, name, out[name][index][included]))
    handle.close()
    write_tsv(out_dir / TABLE_FILENAME, table, TABLE_COLUMNS)
    write_tsv(out_dir / PCA_FILENAME, pca_rows(fit), ("component", "variance", "explained_ratio",
                                                            "cumulative_ratio", "n_points"))


def layer_row(layer: int, metric: str, values: np.ndarray) -> dict[str, Any]:
    """One table row: mean, SEM (ddof 1), count and quantiles of the finite values."""
    values = values[np.isfinite(values)]
    n = len(values)
    row: dict[str, Any] = {"layer": layer, "metric": metric, "n": n,
                           "value": float(values.mean()) if n else "",
                           "sem": float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else ""}
    quantiles = np.quantile(values, QUANTILES) if n else [""] * len(QUANTILES)
    row.update({column: (float(q) if n else "") for column, q in zip(QUANTILE_COLUMNS, quantiles)})
    return row


def pca_rows(fit: PCAFit) -> list[dict[str, Any]]:
    ratio = fit.explained_ratio
    return [{"component": i + 1, "variance": float(fit.variances[i]), "explained_ratio": float(ratio[i]),
             "cumulative_ratio": float(ratio[: i + 1].sum()), "n_points": fit.n} for i in range(len(ratio))]


def _write_selection(handle: h5py.File, fit: PCAFit, chosen: np.ndarray, selected: np.ndarray, rows) -> None:
    group = handle.create_group("pca")
    for name in ("mean", "components", "variances"):
        group.create_dataset(name, data=getattr(fit, name), track_times=False)
    group.attrs.update({"total_variance": fit.total_variance, "n_points": fit.n})
    sel = handle.create_group("selected")
    sel.create_dataset("row", data=chosen, track_times=False)
    sel.create_dataset("coords", data=selected, track_times=False)     # (n_selected, L + 1, k)
    tokens = rows.column("token")
    sel.create_dataset("token", data=np.array([str(tokens[i]) for i in chosen], dtype=h5py.string_dtype()),
                       track_times=False)


def read_tokens(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`trajectories_tokens.h5` -> ({name: array}, attrs); the groups as nested dicts."""
    with h5py.File(path, "r") as handle:
        arrays: dict[str, Any] = {}
        for name, item in handle.items():
            if isinstance(item, h5py.Group):
                arrays[name] = {key: value[()] for key, value in item.items()}
                arrays[name].update(dict(item.attrs))
            else:
                arrays[name] = item[()]
        attrs = {key: value.decode() if isinstance(value, bytes) else value for key, value in handle.attrs.items()}
    if "selected" in arrays:
        arrays["selected"]["token"] = [t.decode() if isinstance(t, bytes) else str(t)
                                       for t in arrays["selected"]["token"]]
    return arrays, attrs


def read_table(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """`trajectories.tsv` -> {metric: {column: (n_layers_of_metric,) array, "layer": ...}}."""
    from laminae.store import read_tsv

    out: dict[str, dict[str, list[float]]] = {}
    for row in read_tsv(Path(path)):
        columns = out.setdefault(row["metric"], {c: [] for c in TABLE_COLUMNS if c != "metric"})
        for column in columns:
            columns[column].append(float(row[column]) if row[column] != "" else np.nan)
    return {metric: {c: np.asarray(v) for c, v in columns.items()} for metric, columns in out.items()}
