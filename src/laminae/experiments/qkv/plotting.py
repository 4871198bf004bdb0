"""What experiment 1's figures share (`figures`: the laminar and similarity figures,
`heads_figure`: the per-head figure, `compare`: a sweep's overlay): the false discovery rate
of the markers, the no-selectivity line, component names and the settings line of the titles,
and the ticks of a log ratio axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from matplotlib.ticker import MaxNLocator

ALPHA = 0.05                      # false discovery rate of the markers (q-values)
NULL_LINE = {"ratio": 1.0, "difference": 0.0}


def display_name(component: str) -> str:
    """`q` -> `Q`, `q-k` -> `Q–K`, `attn_out` unchanged."""
    return "–".join(part.upper() if len(part) == 1 else part for part in component.split("-"))


def settings_line(context: Mapping[str, Any], settings: Mapping[str, Any], n_items: int | None = None,
                  n_categories: int | None = None) -> str:
    """The stimuli, then (on a second line) the analysis settings that shape the numbers."""
    inputs = []
    if "stimuli" in context:
        counts = ", ".join(x for x in (f"{n_items} words" if n_items else "",
                                       f"{n_categories} categories" if n_categories else "") if x)
        inputs.append(f"stimuli {context['stimuli']}" + (f" ({counts})" if counts else ""))
    if "position" in context:
        inputs.append(f"position {context['position']}")
    lines = ["; ".join(inputs)] if inputs else []
    if settings:
        lines.append(", ".join([
            f"{settings.get('selectivity', '?')} selectivity",
            f"{str(settings.get('rsa_method', '?')).capitalize()} RSA",
            f"{settings.get('n_permutations', '?')} permutations",
            f"{settings.get('n_bootstrap', '?')} bootstraps",
            "z-scored dimensions" if settings.get("zscore") else "raw cosines",
        ]))
    return "\n".join(lines)


def nice_log_ticks(low: float, high: float, max_ticks: int = 7) -> list[float]:
    """Round numbers between `low` and `high` (> 0) for a log axis: the roundest set of
    mantissas (1; 1-2-5; 1-1.5-2-3-5-7; ...) giving at least 4 ticks (at most `max_ticks`);
    a narrow range (under a factor 1.5) gets linear ticks, since log is nearly linear there.

        >>> nice_log_ticks(0.9, 5.0)
        [1.0, 1.5, 2.0, 3.0, 5.0]
        >>> nice_log_ticks(0.95, 1.3)
        [1.0, 1.1, 1.2, 1.3]
    """
    if high / low < 1.5:
        return linear_ticks(low, high)
    tiers = ((1.0,), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
             (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0))
    exponents = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    best: list[float] = []
    for mantissas in tiers:
        ticks = sorted({round(m * 10.0 ** e, 10) for e in exponents for m in mantissas if low <= m * 10.0 ** e <= high})
        if len(ticks) > max_ticks:
            break
        best = ticks
        if len(ticks) >= 4:
            break
    return best or linear_ticks(low, high)


def linear_ticks(low: float, high: float) -> list[float]:
    """About 5 round ticks between `low` and `high` (matplotlib's MaxNLocator), both inside."""
    locator = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10])
    return [round(float(v), 10) for v in locator.tick_values(low, high) if low <= v <= high]
