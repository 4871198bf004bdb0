"""The seeded random streams of experiment 1, shared by the layer and the per-head analyses.

    >>> perm_seed, boot_seed = resampling_seeds(0)
    >>> shuffles_rng = np.random.default_rng(perm_seed)    # the label permutations
    >>> resamples_rng = np.random.default_rng(boot_seed)   # the bootstrap over words

The two streams are independent (`numpy.random.SeedSequence(seed).spawn(2)`), so changing the
number of permutations leaves the bootstrap's draws as they were, and vice versa. Every analysis
that builds a fresh generator from the same stream draws exactly the same shuffles or resamples:
the per-head tables use the layer-level table's permutations and resamples.
"""

from __future__ import annotations

import numpy as np


def resampling_seeds(seed: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """(permutation stream, bootstrap stream) spawned from `seed`."""
    perm_seed, boot_seed = np.random.SeedSequence(seed).spawn(2)
    return perm_seed, boot_seed
