"""Cosine-similarity matrices between items, batched over any leading axes.

    >>> x = np.random.default_rng(0).normal(size=(36, 34, 1280))   # (n_layers, n_items, width)
    >>> s = cosine_similarity(x)                                   # (n_layers, n_items, n_items)
    >>> s_z = cosine_similarity(x, zscore=True)   # rogue dimensions neutralised first

`zscore=True` standardises each dimension across items before the cosine (Timkey & van
Schijndel 2021, "All bark and no bite: rogue dimensions in transformer language models obscure
representational quality"): a few high-variance, high-mean dimensions otherwise dominate every
cosine and push all similarities towards 1.
"""

from __future__ import annotations

import numpy as np

# A dimension whose SD is below this fraction of its root-mean-square is treated as constant:
# a constant column's computed SD is rounding noise (~1e-16 of its value), not exactly 0.
_CONSTANT_DIMENSION_RTOL = 1e-12


def zscore_dimensions(x: np.ndarray) -> np.ndarray:
    """Z-score each dimension across items (population SD, like `scipy.stats.zscore`).

    x: (..., n_items, width) -> (..., n_items, width), float64. Constant dimensions (zero
    variance) carry no information about the items and become 0 instead of NaN.

        >>> z = zscore_dimensions(np.array([[1.0, 5.0], [3.0, 5.0]]))   # column 1 is constant
        >>> z.tolist()
        [[-1.0, 0.0], [1.0, 0.0]]
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=-2, keepdims=True)  # (..., 1, width)
    centred = x - mean
    sd = np.sqrt(np.mean(centred * centred, axis=-2, keepdims=True))
    rms = np.sqrt(np.mean(x * x, axis=-2, keepdims=True))
    constant = sd <= _CONSTANT_DIMENSION_RTOL * rms
    return np.where(constant, 0.0, centred / np.where(constant, 1.0, sd))


def cosine_similarity(x: np.ndarray, *, zscore: bool = False) -> np.ndarray:
    """Cosine similarity between every pair of items, for every leading index.

    x: (..., n_items, width) -> (..., n_items, n_items), float64, exactly symmetric.
    A zero vector has similarity 0 with every item, itself included (as in scikit-learn).

        >>> s = cosine_similarity(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]))
        >>> round(float(s[0, 1]), 4), float(s[0, 2])
        (0.7071, 0.0)
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"cosine_similarity needs (..., n_items, width), got shape {x.shape}")
    if zscore:
        x = zscore_dimensions(x)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)  # (..., n_items, 1)
    unit = x / np.where(norms > 0, norms, 1.0)
    s = unit @ np.swapaxes(unit, -1, -2)  # (..., n_items, n_items)
    # Batched matmul need not be bitwise symmetric; downstream code reads only i < j anyway.
    return 0.5 * (s + np.swapaxes(s, -1, -2))
