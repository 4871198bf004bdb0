"""The trajectories experiment's measurements, read back from `trajectories.tsv`: per layer,
the mean over tokens with mean +- 1.96 SEM, of

- `step_full`, `step_pca`: block l's step length in the full space / the PCA space (layers 0..L-1);
- `turn_full`, `turn_pca`: the turning angle in degrees at layer l (layer 0: NaN, no previous step);
- `length_full`, `length_pca`: the path length up to block l (at the last layer: the whole trajectory).

    >>> measure(job)["step_full"].values      # (n_layers,)
"""

from __future__ import annotations

import numpy as np

from laminae.experiment import MeasureJob
from laminae.series import Series

Z95 = 1.959963984540054


def measure(job: MeasureJob) -> dict[str, Series]:
    from .analysis import TABLE_FILENAME, TOKEN_ARRAYS, read_table

    table = read_table(job.metrics_dir / TABLE_FILENAME)
    n_layers = len(table["step_full"]["layer"])
    out = {}
    for name in TOKEN_ARRAYS:
        if name not in table:
            continue
        columns = table[name]
        mean, sem = np.full(n_layers, np.nan), np.full(n_layers, np.nan)
        layers = columns["layer"].astype(int)
        mean[layers], sem[layers] = columns["value"], columns["sem"]
        out[name] = Series(mean, mean - Z95 * sem, mean + Z95 * sem,
                           interval="95% normal interval (mean +- 1.96 SEM over tokens)", label=name.replace("_", " "))
    return out
