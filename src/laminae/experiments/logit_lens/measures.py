"""The logit lens's per-layer measurements, read back from `logit_lens.tsv` (laminae.series):

    >>> measurements = measure(job)                  # job: laminae.experiment.MeasureJob
    >>> measurements["kl_median"].low                # lower bounds of the bootstrap CI

`rank_median`, `logprob_median`, `kl_median` (medians over tokens), `top1_agreement` (mean),
`dla_attn_mean`, `dla_mlp_mean` (means), each with its percentile bootstrap CI over tokens
(NaN without a bootstrap, `logit_lens.n_bootstrap=0`).
"""

from __future__ import annotations

from laminae.experiment import MeasureJob
from laminae.series import Series

#: measure name -> (metric, statistic, label) in logit_lens.tsv
SERIES = {"rank_median": ("rank", "median", "median rank of the next token"),
          "logprob_median": ("logprob", "median", "median log p(next token)"),
          "kl_median": ("kl", "median", "median KL(final || layer)"),
          "top1_agreement": ("top1_agreement", "mean", "top-1 agreement with the final layer"),
          "dla_attn_mean": ("dla_attn", "mean", "mean DLA of attn_out"),
          "dla_mlp_mean": ("dla_mlp", "mean", "mean DLA of mlp_out")}


def measure(job: MeasureJob) -> dict[str, Series]:
    from .table import LensTable

    table = LensTable.read(job.metrics_dir / "logit_lens.tsv")
    confidence = f"{100 * float(job.settings.get('confidence', 0.95)):g}%"
    return {name: Series(table.get(metric, statistic), table.get(metric, statistic, "ci_low"),
                         table.get(metric, statistic, "ci_high"),
                         interval=f"{confidence} bootstrap CI (tokens resampled)", label=label)
            for name, (metric, statistic, label) in SERIES.items() if (metric, statistic) in table.layers}
