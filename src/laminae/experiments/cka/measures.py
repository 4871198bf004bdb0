"""The `cka` experiment's measurements, read back from `cka_layers.tsv` (laminae.series):

    >>> measurements = measure(job)                 # job: laminae.experiment.MeasureJob
    >>> measurements["cka_adjacent"].values         # (n_layers,) CKA(l, l + 1); NaN at the last layer

- `cka_adjacent`: CKA between layer l and layer l + 1, with its bootstrap CI and permutation p/q;
- `cka_to_last`: CKA between layer l and the last layer, with its bootstrap CI;
- `cka_to_first`: CKA between layer l and layer 0, with its bootstrap CI.
"""

from __future__ import annotations

import numpy as np

from laminae.experiment import MeasureJob
from laminae.series import Series


def measure(job: MeasureJob) -> dict[str, Series]:
    from laminae.experiments.cka.analysis import TABLE_FILENAME, adjacent, read_table

    table = read_table(job.metrics_dir / TABLE_FILENAME)
    interval = f"{100 * float(job.settings.get('confidence', 0.95)):g}% bootstrap CI (words resampled)"
    estimator = job.settings.get("estimator", "debiased")
    out = {"cka_adjacent": Series(adjacent(table["cka"]), adjacent(table["ci_low"]), adjacent(table["ci_high"]),
                                  interval=interval, p_value=adjacent(table["p_value"]),
                                  q_value=adjacent(table["q_value"]), label=f"CKA(l, l+1), {estimator}")}
    for name, column, what in (("cka_to_last", -1, "last layer"), ("cka_to_first", 0, "layer 0")):
        out[name] = Series(np.array(table["cka"][:, column]), np.array(table["ci_low"][:, column]),
                           np.array(table["ci_high"][:, column]), interval=interval,
                           label=f"CKA(l, {what}), {estimator}")
    return out
