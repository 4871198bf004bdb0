"""The attention experiment's measurements, read back from `attention.tsv` (laminae.series):

    >>> measurements = measure(job)                  # job: laminae.experiment.MeasureJob
    >>> measurements["sink"].low                     # bootstrap CI of the mean sink mass over heads

- `<statistic>` for each of laminae.metrics.attention.STATISTICS (`entropy`,
  `entropy_normalised`, `sink`, `distance`, `sink_uniform`): per layer, the mean over heads of
  each head's mean over queries, with its block bootstrap CI;
- `<statistic>:median_heads`: the median over heads, with its block bootstrap CI;
- `first_token_norm_ratio`: per layer, the median over windows of the first token's resid_post
  norm over the median norm of the other tokens, with the range over windows as its interval.
"""

from __future__ import annotations

from laminae.experiment import MeasureJob
from laminae.metrics.attention import STATISTICS
from laminae.series import Series

LABELS = {"entropy": "entropy (nats)", "entropy_normalised": "normalised entropy", "sink": "sink mass",
          "distance": "mean attention distance", "sink_uniform": "sink mass under uniform attention"}


def measure(job: MeasureJob) -> dict[str, Series]:
    from .table import TABLE_FILENAME, AttentionTable

    table = AttentionTable.read(job.metrics_dir / TABLE_FILENAME)
    out: dict[str, Series] = {}
    for metric in STATISTICS:
        for summary, name in (("mean", metric), ("median", f"{metric}:median_heads")):
            if table.has(metric, summary):
                interval = table.interval(metric, summary)
                out[name] = Series(table.get(metric, summary),
                                   table.get(metric, summary, "low") if interval else None,
                                   table.get(metric, summary, "high") if interval else None,
                                   interval=interval, label=f"{LABELS[metric]} ({summary} over heads)")
    if table.has("first_token_norm_ratio", "median"):
        out["first_token_norm_ratio"] = Series(
            table.get("first_token_norm_ratio", "median"), table.get("first_token_norm_ratio", "median", "low"),
            table.get("first_token_norm_ratio", "median", "high"), interval="range over windows",
            label="first-token norm / median token norm")
    return out
