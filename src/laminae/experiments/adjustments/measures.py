"""Experiment 2's headline measurements, read back from its metrics (laminae.series):

    >>> measurements = measure(job)             # job: laminae.experiment.MeasureJob
    >>> measurements["cosine"].low              # mean - 1.96 SEM per layer
    >>> measurements["cosine_tokens"].values    # every included token x layer cosine

- `cosine`: the mean cos(attn_out, mlp_out) per layer with mean +- 1.96 SEM (a 95% normal
  interval over tokens);
- `cosine_median`: the per-layer median (no interval);
- `norm_attn_out`, `norm_mlp_out`: mean L2 norms per layer, +- 1.96 SEM;
- `cosine_tokens`: the sample behind the histogram: every included, defined cosine, with its
  layer, and its token as the resampling unit (a token's cosines at different layers are not
  independent, so a bootstrap resamples tokens).
"""

from __future__ import annotations

import numpy as np

from laminae.experiment import MeasureJob
from laminae.series import Sample, Series

Z95 = 1.959963984540054   # the 97.5% quantile of the standard normal: mean +- Z95 SEM is a 95% interval


def _normal_interval(mean: np.ndarray, sem: np.ndarray, label: str) -> Series:
    return Series(mean, mean - Z95 * sem, mean + Z95 * sem, interval="95% normal interval (mean +- 1.96 SEM over "
                                                                      "tokens)", label=label)


def measure(job: MeasureJob) -> dict[str, Series | Sample]:
    from laminae.experiments.adjustments.analysis import (COSINE, COSINE_FILENAME, COSINE_MEDIAN, TABLE_FILENAME,
                                                          read_adjustment_table, read_cosines)

    table = read_adjustment_table(job.metrics_dir / TABLE_FILENAME)
    out: dict[str, Series | Sample] = {"cosine": _normal_interval(table[COSINE].mean, table[COSINE].sem,
                                                                   "cos(attn_out, mlp_out)")}
    if COSINE_MEDIAN in table:
        out["cosine_median"] = Series(table[COSINE_MEDIAN].mean, label="median cos(attn_out, mlp_out)")
    for site in ("attn_out", "mlp_out"):
        if f"norm_{site}" in table:
            stats = table[f"norm_{site}"]
            out[f"norm_{site}"] = _normal_interval(stats.mean, stats.sem, f"|{site}|")
    cosine, included, _ = read_cosines(job.metrics_dir / COSINE_FILENAME)
    keep = included & np.isfinite(cosine)                       # (n_layers, n_tokens)
    layer, token = np.nonzero(keep)
    out["cosine_tokens"] = Sample(cosine[layer, token], layer=layer, cluster=token,
                                  what="cos(attn_out, mlp_out) per included token and layer",
                                  n_layers=cosine.shape[0])
    return out
