"""Experiment `neurons`' measurements, read back from `neurons_laminar.tsv` (laminae.series):

    >>> measurements = measure(job)                    # job: laminae.experiment.MeasureJob
    >>> measurements["fraction:mlp_post"].low          # (n_layers,) Clopper-Pearson lower bounds
    >>> measurements["null_fraction:q"].high           # (n_layers,) the null's upper percentile

- `fraction:<site>`: the fraction of the site's units selective for the categories (ANOVA,
  BH per layer at `neurons.alpha`) with its Clopper-Pearson interval;
- `null_fraction:<site>`: the same fraction under pseudo-observed label shuffles: its mean, and
  the band from 0 to its upper percentile.

A site the run left out (`neurons.sites`) has no measurements; claims on it are not applicable.
"""

from __future__ import annotations

import numpy as np

from laminae.experiment import MeasureJob
from laminae.series import Series


def measure(job: MeasureJob) -> dict[str, Series]:
    from laminae.experiments.neurons.analysis import ALL, TABLE_FILENAME
    from laminae.experiments.neurons.tables import LaminarTable

    table = LaminarTable.read(job.metrics_dir / TABLE_FILENAME)
    level = f"{100 * float(job.settings.get('confidence', 0.95)):g}%"
    out: dict[str, Series] = {}
    for site in table.sites:
        out[f"fraction:{site}"] = Series(table.get(site, ALL, "fraction"), table.get(site, ALL, "ci_low"),
                                         table.get(site, ALL, "ci_high"),
                                         interval=f"{level} Clopper-Pearson interval (units of the layer)",
                                         label=f"fraction selective {site}")
        null = table.get(site, ALL, "null_mean")
        out[f"null_fraction:{site}"] = Series(null, np.zeros_like(null), table.get(site, ALL, "null_high"),
                                              interval=f"0 to the {level} point of the permutation null",
                                              label=f"null fraction {site}")
    return out
