"""The rotations experiment's headline measurements, read back from its metrics
(laminae.series):

    >>> measurements = measure(job)                     # job: laminae.experiment.MeasureJob
    >>> measurements["sequential_rest"].values          # mean angle per layer, radians
    >>> measurements["sequential_angles"].group         # which values are first-token pairs

- `block_rotation`, `attn_angle`, `mlp_angle`, `sequential_first`, `sequential_rest`: the mean
  angle per layer (radians) with mean +- 1.96 SEM;
- `sequential_angles`: the sample behind the histograms: every defined sequential angle, with
  its layer, its pair's first token as the resampling unit, and the group of pairs that start at
  a window's first token.
"""

from __future__ import annotations

import numpy as np

from laminae.experiment import MeasureJob
from laminae.series import Sample, Series

Z95 = 1.959963984540054


def measure(job: MeasureJob) -> dict[str, Series | Sample]:
    from .outputs import ANGLES_FILENAME, METRICS, TABLE_FILENAME, open_angles, read_rotation_table

    table = read_rotation_table(job.metrics_dir / TABLE_FILENAME)
    out: dict[str, Series | Sample] = {
        metric: Series(table[metric].mean, table[metric].mean - Z95 * table[metric].sem,
                       table[metric].mean + Z95 * table[metric].sem,
                       interval="95% normal interval (mean +- 1.96 SEM)", label=f"{metric} (radians)")
        for metric in METRICS}
    with open_angles(job.metrics_dir / ANGLES_FILENAME) as handle:
        sequential = handle["sequential"][()]                              # (n_layers, n_tokens)
        first_pair = handle["first_pair"][()].astype(bool)                 # (n_tokens,)
        has_next = handle["has_next"][()].astype(bool)
    keep = has_next[None, :] & np.isfinite(sequential)
    layer, token = np.nonzero(keep)
    out["sequential_angles"] = Sample(sequential[layer, token], layer=layer, cluster=token, group=first_pair[token],
                                      group_label="pairs starting at a window's first token",
                                      what="angle(resid_post[t], resid_post[t + 1]) per pair and layer, radians",
                                      n_layers=sequential.shape[0])
    return out
