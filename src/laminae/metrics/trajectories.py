"""Tokens' trajectories through the layers, and a PCA of all their points fit chunk by chunk.

A token's trajectory is its residual stream at depth 0 (the embedding: resid_pre of layer 0)
and after each block (resid_post of layers 0..L-1): L + 1 points, L steps.

    >>> points = trajectory_points(resid_pre, resid_post)   # (n_layers + 1, rows, d) from (n_layers, rows, d) each
    >>> geometry = trajectory_steps(points)                 # step lengths (L, rows), turning angles (L - 1, rows)
    >>> pca = StreamingPCA(d_model)
    >>> pca.update(points.reshape(-1, d_model))             # any number of chunks, any sizes
    >>> fit = pca.fit(n_components=2)                       # mean (d,), components (k, d), variances
    >>> projected = fit.project(points)                     # (L + 1, rows, k)

Per token t and step l = 1..L (||.|| the L2 norm, x_l the point at depth l):

    step[l, t]      = ||x_l - x_{l-1}||                      (row l - 1 of the (L, rows) array)
    turn[l, t]      = angle between x_l - x_{l-1} and x_{l+1} - x_l, degrees in [0, 180]
                      (the curvature at depth l, l = 1..L-1; NaN where a step is zero)
    length[t]       = sum over l of step[l, t]

With chained blocks (resid_pre[l] = resid_post[l-1], `laminae.metrics.paths.token_paths`'
premise) step[l] is the pathlength experiment's pl_hs of block l - 1 and the cumulative sums
its `cumulative`.

The PCA is of every point of every token (tokens x depths rows of width d), fit from sums
accumulated in float64: n, the sum of (x - shift) and the sum of (x - shift)(x - shift)^T,
where `shift` is the first chunk's mean (which keeps the subtraction that follows well
conditioned when the mean is large against the spread). Covariance = (S - n m m^T) / (n - 1)
with m the mean of the shifted rows; components are its leading eigenvectors (numpy eigh),
each signed so that its largest-magnitude coordinate is positive. Memory: one (d, d) float64
matrix, whatever the corpus.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from laminae.metrics.vectors import angle_rows, row_norms


def trajectory_points(resid_pre: np.ndarray, resid_post: np.ndarray) -> np.ndarray:
    """The L + 1 points of each token: resid_pre[0] then resid_post[0..L-1]; inputs
    (n_layers, rows, d) each (only resid_pre[0] is read) -> (n_layers + 1, rows, d), float64."""
    if np.ndim(resid_pre) != 3 or np.shape(resid_post) != np.shape(resid_pre):
        raise ValueError(f"resid_pre and resid_post must both be (n_layers, rows, d); got {np.shape(resid_pre)} "
                         f"and {np.shape(resid_post)}")
    return np.concatenate([np.asarray(resid_pre[:1], dtype=np.float64), np.asarray(resid_post, dtype=np.float64)])


class TrajectoryGeometry(NamedTuple):
    """step (n_steps, rows): step lengths; turn (n_steps - 1, rows): angles in degrees."""

    step: np.ndarray
    turn: np.ndarray


def trajectory_steps(points: np.ndarray) -> TrajectoryGeometry:
    """Step lengths and turning angles of (n_points, rows, width) points (module docstring)."""
    points = np.asarray(points)
    if points.ndim != 3 or points.shape[0] < 2:
        raise ValueError(f"points must be (n_points >= 2, rows, width); got {points.shape}")
    steps = np.diff(points.astype(np.float64, copy=False), axis=0)       # (n_steps, rows, width)
    norms = row_norms(steps)                                             # (n_steps, rows)
    turn = np.degrees(angle_rows(steps[:-1], steps[1:], norms[:-1], norms[1:]))
    return TrajectoryGeometry(step=norms, turn=turn)


class PCAFit(NamedTuple):
    """A fitted PCA: mean (d,), components (k, d) orthonormal rows, their variances (k,), the
    total variance (sum of all eigenvalues) and the number of rows fit."""

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    total_variance: float
    n: int

    @property
    def explained_ratio(self) -> np.ndarray:
        """Each component's share of the total variance, (k,)."""
        return self.variances / self.total_variance if self.total_variance > 0 else np.full_like(self.variances, np.nan)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Coordinates of (..., d) points on the components: (..., k), float64."""
        return np.einsum("...d,kd->...k", np.asarray(x, dtype=np.float64) - self.mean, self.components)


class StreamingPCA:
    """PCA of rows given chunk by chunk (module docstring); `update` any number of times, then `fit`."""

    def __init__(self, width: int):
        self.width = width
        self.n = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(width)                 # (d,) sum of shifted rows
        self.outer = np.zeros((width, width))      # (d, d) sum of their outer products

    def update(self, rows: np.ndarray) -> None:
        """Add (n_rows, d) rows; non-finite rows are refused (a PCA of them is meaningless)."""
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"rows must be (n, {self.width}); got {rows.shape}")
        if not len(rows):
            return
        if not np.isfinite(rows).all():
            raise ValueError("StreamingPCA: non-finite values in the rows")
        if self.shift is None:
            self.shift = rows.mean(axis=0)
        shifted = rows - self.shift
        self.sum += shifted.sum(axis=0)
        self.outer += shifted.T @ shifted
        self.n += len(rows)

    def merge(self, other: "StreamingPCA") -> None:
        """Add another accumulator's rows (exact: its sums are moved onto this one's shift)."""
        if other.n == 0:
            return
        if self.shift is None:
            self.shift, self.sum, self.outer, self.n = other.shift.copy(), other.sum.copy(), other.outer.copy(), other.n
            return
        delta = other.shift - self.shift          # rows - self.shift = (rows - other.shift) + delta
        self.outer += other.outer + np.outer(other.sum, delta) + np.outer(delta, other.sum) + other.n * np.outer(delta, delta)
        self.sum += other.sum + other.n * delta
        self.n += other.n

    def covariance(self) -> np.ndarray:
        """(d, d) sample covariance (n - 1 in the denominator)."""
        if self.n < 2:
            raise ValueError(f"StreamingPCA: {self.n} rows; a covariance needs at least 2")
        mean = self.sum / self.n
        cov = (self.outer - self.n * np.outer(mean, mean)) / (self.n - 1)
        return (cov + cov.T) / 2

    def fit(self, n_components: int) -> PCAFit:
        """The leading `n_components` principal axes."""
        cov = self.covariance()
        values, vectors = np.linalg.eigh(cov)               # ascending
        order = np.argsort(values)[::-1][:n_components]
        components = vectors[:, order].T                     # (k, d)
        biggest = np.argmax(np.abs(components), axis=1)
        components *= np.sign(components[np.arange(len(components)), biggest])[:, None]
        total = float(np.clip(values, 0, None).sum())
        return PCAFit(mean=self.shift + self.sum / self.n, components=components,
                      variances=np.clip(values[order], 0, None), total_variance=total, n=self.n)
