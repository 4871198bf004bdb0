"""The pos experiment's measurements, from `pos.tsv` and `pos_contrasts.tsv`:

- `step:<tag>` (tag in lower case, e.g. `step:noun`): per layer, the mean step length of the
  tag's tokens with its bootstrap CI; `relative_step:<tag>`: the same / every included token's mean;
- `difference:<a>-<b>` (e.g. `difference:noun-adj`): per layer, mean step of a minus mean step
  of b, with the permutation p-values and BH q-values (no interval).

    >>> measure(job)["difference:noun-adj"].q_value      # (n_layers,)
"""

from __future__ import annotations

import numpy as np

from laminae.experiment import MeasureJob
from laminae.series import Series


def measure(job: MeasureJob) -> dict[str, Series]:
    from .analysis import CONTRASTS_FILENAME, TABLE_FILENAME, read_contrasts, read_table

    table = read_table(job.metrics_dir / TABLE_FILENAME)
    interval = (f"{100 * float(job.settings.get('confidence', 0.95)):g}% bootstrap CI over "
                f"{job.settings.get('bootstrap_unit', 'tokens')}")
    out: dict[str, Series] = {}
    for (metric, tag), columns in table.items():
        if metric != "step" or not columns["n"][0]:
            continue
        out[f"step:{tag.lower()}"] = Series(columns["mean"], columns["ci_low"], columns["ci_high"], interval=interval,
                                            label=f"mean step, {tag}")
        out[f"relative_step:{tag.lower()}"] = Series(columns["relative"], columns["relative_low"],
                                                     columns["relative_high"], interval=interval,
                                                     label=f"relative step, {tag}")
    contrasts = [r for r in read_contrasts(job.metrics_dir / CONTRASTS_FILENAME) if r["metric"] == "step"]
    for a, b in dict.fromkeys((r["tag_a"], r["tag_b"]) for r in contrasts):
        rows = sorted((r for r in contrasts if (r["tag_a"], r["tag_b"]) == (a, b)), key=lambda r: r["layer"])
        out[f"difference:{a.lower()}-{b.lower()}"] = Series(
            np.array([r["difference"] for r in rows]), p_value=np.array([r["p_value"] for r in rows]),
            q_value=np.array([r["q_value"] for r in rows]), label=f"mean step {a} - {b}")
    return out
