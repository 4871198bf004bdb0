"""Experiment `probes`' measurements, read back from `probes_laminar.tsv` (laminae.series):

    >>> measurements = measure(job)                       # job: laminae.experiment.MeasureJob
    >>> measurements["accuracy:resid_post"].low            # (n_layers,) t interval over folds
    >>> measurements["accuracy:resid_post"].q_value        # (n_layers,) BH over layers

- `<score>:<site>` (score accuracy or balanced_accuracy): the mean over folds with its t interval,
  the permutation p- and q-values;
- `null_accuracy:<site>`: the permutation null's mean accuracy with its central band.

A site the run did not probe has no measurements; claims on it are not applicable.
"""

from __future__ import annotations

from laminae.experiment import MeasureJob
from laminae.series import Series


def measure(job: MeasureJob) -> dict[str, Series]:
    from laminae.experiments.probes.tables import TABLE_FILENAME, LaminarTable

    table = LaminarTable.read(job.metrics_dir / TABLE_FILENAME)
    confidence = f"{100 * float(job.settings.get('confidence', 0.95)):g}%"
    out: dict[str, Series] = {}
    for (site, score), entry in table.columns.items():
        out[f"{score}:{site}"] = Series(entry["value"], entry["ci_low"], entry["ci_high"],
                                        interval=f"{confidence} t interval over folds",
                                        p_value=entry["p_value"], q_value=entry["q_value"],
                                        label=f"probe {score.replace('_', ' ')} ({site})")
        if score == "accuracy":
            out[f"null_accuracy:{site}"] = Series(entry["null_mean"], entry["null_low"], entry["null_high"],
                                                  interval=f"central {confidence} of the permutation null",
                                                  label=f"null accuracy ({site})")
    return out
