"""What every sweep overlay shares: the depth axis and one style per run.

    >>> xs, xlabel = depth_axis([12, 6])          # GPT-2 and MiniLM: relative depth, so ends line up
    >>> ax.plot(xs[i], values, label=labels[i], **run_style(i))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from laminae.plots.style import OKABE_ITO

LINE_STYLES = ("-", "--", ":", "-.")


def depth_axis(n_layers: Sequence[int]) -> tuple[list[np.ndarray], str]:
    """x values per run: layer indices when all depths agree, else relative depth in [0, 1]."""
    if len(set(n_layers)) == 1:
        return [np.arange(n) for n in n_layers], "layer"
    return [np.arange(n) / max(n - 1, 1) for n in n_layers], "relative depth  layer / (n_layers - 1)"


def run_style(index: int) -> dict[str, Any]:
    """Colour per run, cycling line styles once the 8 Okabe-Ito colours are used up."""
    return {"color": OKABE_ITO[index % len(OKABE_ITO)], "linestyle": LINE_STYLES[index // len(OKABE_ITO) % 4]}
