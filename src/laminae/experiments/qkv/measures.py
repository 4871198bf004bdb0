"""Experiment 1's headline measurements, read back from `qkv_laminar.tsv` (laminae.series):

    >>> measurements = measure(job)            # job: laminae.experiment.MeasureJob
    >>> measurements["rsa:q-k"].low            # (n_layers,) lower bounds of the bootstrap CI
    >>> measurements["selectivity:v"].q_value  # (n_layers,) Benjamini-Hochberg q-values

- `rsa:<a>-<b>` (pairs named in the order q, k, v whatever `qkv.components` says): the RSA with
  its percentile bootstrap CI (words resampled);
- `selectivity:<c>`: the selectivity index (ratio or difference form, as analysed) with its
  permutation p- and q-values; no interval (the table has none for the index itself);
- `selectivity_null:<c>`: the permutation null's mean with its central band.

A component the run left out (`qkv.components`) has no measurements; claims on it are not
applicable.
"""

from __future__ import annotations


from laminae.experiment import MeasureJob
from laminae.series import Series

ORDER = ("q", "k", "v")


def canonical_pair(pair: str) -> str:
    """`k-q` -> `q-k`: RSA is symmetric, so a pair is named in q, k, v order."""
    a, b = pair.split("-")
    return "-".join(sorted((a, b), key=lambda c: ORDER.index(c) if c in ORDER else len(ORDER)))


def measure(job: MeasureJob) -> dict[str, Series]:
    from laminae.experiments.qkv.analysis import TABLE_FILENAME, LaminarTable

    columns = LaminarTable.read(job.metrics_dir / TABLE_FILENAME).columns
    confidence = f"{100 * float(job.settings.get('confidence', 0.95)):g}%"
    form = job.settings.get("selectivity", "ratio")
    out: dict[str, Series] = {}
    for (metric, component), entry in columns.items():
        if metric == "rsa":
            pair = canonical_pair(component)
            out[f"rsa:{pair}"] = Series(entry["value"], entry["ci_low"], entry["ci_high"],
                                        interval=f"{confidence} bootstrap CI (words resampled)",
                                        label=f"RSA {pair.upper()}")
        elif metric == "selectivity":
            out[f"selectivity:{component}"] = Series(entry["value"], p_value=entry["p_value"],
                                                     q_value=entry["q_value"],
                                                     label=f"selectivity {component.upper()} ({form})")
        elif metric == "selectivity_null":
            out[f"selectivity_null:{component}"] = Series(entry["value"], entry["ci_low"], entry["ci_high"],
                                                          interval=f"central {confidence} of the permutation null",
                                                          label=f"null {component.upper()}")
    return out
