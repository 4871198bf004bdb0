"""The path-length experiment's headline measurements, read back from `pathlength.tsv`
(laminae.series), one per metric and token set, named `<metric>:<tokens>`:

    >>> measurements = measure(job)                              # job: laminae.experiment.MeasureJob
    >>> measurements["pearson_mlp_hs:without_first"].low          # lower bounds of the bootstrap CI

- the four correlations (`pearson_attn_hs`, `spearman_attn_hs`, `pearson_mlp_hs`,
  `spearman_mlp_hs`) with their percentile bootstrap CIs (tokens resampled; NaN without a
  bootstrap, `pathlength.n_bootstrap=0`);
- the means over tokens (`pl_attn`, `pl_mlp`, `pl_hs`, `cumulative`, `displacement`,
  `straightness`) with mean +- 1.96 SEM;

each for `all` tokens and `without_first` (every window's first token left out).
"""

from __future__ import annotations

from laminae.experiment import MeasureJob
from laminae.series import Series

Z95 = 1.959963984540054


def measure(job: MeasureJob) -> dict[str, Series]:
    from .table import CORRELATIONS, MEANS, TABLE_FILENAME, TOKEN_SETS, PathLengthTable

    table = PathLengthTable.read(job.metrics_dir / TABLE_FILENAME)
    confidence = f"{100 * float(job.settings.get('confidence', 0.95)):g}%"
    out: dict[str, Series] = {}
    for tokens in TOKEN_SETS:
        for metric in CORRELATIONS:
            if table.has(metric, tokens):
                out[f"{metric}:{tokens}"] = Series(table.get(metric, tokens), table.get(metric, tokens, "ci_low"),
                                                   table.get(metric, tokens, "ci_high"),
                                                   interval=f"{confidence} bootstrap CI (tokens resampled)",
                                                   label=f"{metric} ({tokens.replace('_', ' ')})")
        for metric in MEANS:
            if table.has(metric, tokens):
                mean, sem = table.get(metric, tokens), table.get(metric, tokens, "sem")
                out[f"{metric}:{tokens}"] = Series(mean, mean - Z95 * sem, mean + Z95 * sem,
                                                   interval="95% normal interval (mean +- 1.96 SEM over tokens)",
                                                   label=f"{metric} ({tokens.replace('_', ' ')})")
    return out
