"""Multiple-testing correction: Benjamini-Hochberg q-values (FDR-adjusted p-values).

One call is one family of tests: every finite p-value in the array, whatever its shape, is
corrected against all the others, and NaN (a test that was not run) stays NaN and does not count.

    >>> p = test.p_value                       # (n_components, n_layers) permutation p-values
    >>> q = bh_q_values(p)                     # (n_components, n_layers), one family
    >>> significant = q < 0.05                 # controls the false discovery rate at 5%

With the m finite p-values sorted, p_(1) <= ... <= p_(m),

    q_(i) = min over j >= i of  m * p_(j) / j,   capped at 1

(Benjamini & Hochberg 1995), computed by `scipy.stats.false_discovery_control(p, method="bh")`
on the finite p-values (scipy refuses NaN; this module sets NaN aside and puts it back).
scipy scales p_(j) by (m / j); the hand-written loop it replaced (laminae <= 2026-12-03)
computed m p_(j) / j, so a q-value can differ from that version's in its last bit (<= 4e-16
relative, about 4 in 10 values): below any threshold one would set.
Rejecting every test with q <= alpha is the BH step-up procedure at level alpha.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike


def bh_q_values(p: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg q-values of one family of p-values.

    p: any shape, values in [0, 1] or NaN -> float64 array of the same shape; NaN where p is NaN,
    m = the number of finite p-values. Raises ValueError for values outside [0, 1] or infinite.

        >>> bh_q_values([0.01, 0.04, 0.03, np.nan]).tolist()
        [0.03, 0.04, 0.04, nan]
    """
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    finite = ~np.isnan(flat)
    values = flat[finite]
    if values.size and (not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(f"p-values must lie in [0, 1] (or be NaN), got range [{values.min()}, {values.max()}]")
    q = np.full(flat.shape, np.nan)
    if values.size:
        q[finite] = scipy.stats.false_discovery_control(values, method="bh")
    return q.reshape(p.shape)
