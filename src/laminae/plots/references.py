"""Reported results drawn on a run's figures: the ranges the course reported (from the claims
that carry a `reference` label), as light hatched grey bands (or a wide light grey stripe for a
single reported value) over the claim's depth band, with a legend entry that says they are a reference,
not this run's data.

    >>> handles = draw_references(ax, job.references, n_layers, series=("cosine",))   # after the data
    >>> ax.legend(*merge_legend(ax, handles))

`references` are the mappings the figure stage hands the plot hook (`FigureJob.references`,
made by `laminae.claims.references`): `{"claim", "series", "depth": [low, high], "low", "high",
"label"}`, `low`/`high` None for an open end. Only those naming one of `series` are drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from laminae.claims.kinds import depth_layers

REFERENCE_FACE = "#bdbdbd"
REFERENCE_EDGE = "#8c8c8c"
REFERENCE_ALPHA = 0.35
REFERENCE_HATCH = "////"


def reference_label(label: str) -> str:
    return f"{label}: reported (a reference, not this run)"


def draw_references(ax, references: Sequence[Mapping[str, Any]], n_layers: int, series: Sequence[str],
                    axis: str = "layer") -> list[tuple[Any, str]]:
    """Draw the references of `series` on `ax` (x: layer index, or relative depth with
    `axis="depth"`); returns (legend handle, label) pairs, one per distinct label. Call it after
    the data are drawn: an open end of a range extends to the current y limit."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    drawn: set[tuple] = set()
    handles: dict[str, Any] = {}
    y_bottom, y_top = ax.get_ylim()
    for reference in references:
        if reference["series"] not in series:
            continue
        key = (tuple(reference["depth"]), reference["low"], reference["high"], reference["label"])
        if key in drawn:
            continue
        drawn.add(key)
        layers = depth_layers(reference["depth"], n_layers)
        if not layers:
            continue
        if axis == "depth":
            x0, x1 = float(reference["depth"][0]), float(reference["depth"][1])
        else:
            x0, x1 = layers[0] - 0.4, layers[-1] + 0.4
        low = y_bottom if reference["low"] is None else float(reference["low"])
        high = y_top if reference["high"] is None else float(reference["high"])
        label = reference_label(reference["label"])
        if low == high:   # one reported value: a wide, light stripe, unlike any of the run's lines
            ax.plot([x0, x1], [low, low], color=REFERENCE_FACE, alpha=0.6, linewidth=6, solid_capstyle="butt",
                    zorder=0.6)
            handles.setdefault(label, Line2D([], [], color=REFERENCE_FACE, alpha=0.6, linewidth=6,
                                             solid_capstyle="butt"))
        else:
            ax.fill_between([x0, x1], [low, low], [high, high], facecolor=REFERENCE_FACE, edgecolor=REFERENCE_EDGE,
                            hatch=REFERENCE_HATCH, linewidth=0, alpha=REFERENCE_ALPHA, zorder=0.5)
            handles.setdefault(label, Patch(facecolor=REFERENCE_FACE, edgecolor=REFERENCE_EDGE, hatch=REFERENCE_HATCH,
                                            linewidth=0, alpha=REFERENCE_ALPHA))
    return [(handle, label) for label, handle in handles.items()]


def merge_legend(ax, extra: Sequence[tuple[Any, str]]) -> tuple[list[Any], list[str]]:
    """The axes' own legend entries followed by `extra` (handle, label) pairs."""
    handles, labels = ax.get_legend_handles_labels()
    return [*handles, *(h for h, _ in extra)], [*labels, *(label for _, label in extra)]
