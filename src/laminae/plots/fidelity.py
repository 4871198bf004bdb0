"""The fidelity figure of an extraction (`fidelity.png` beside `fidelity.tsv` in its store, shown
in the report under "Fidelity"): per layer, each check's relative error against its tolerance.

    >>> rows = read_tsv(store / "fidelity.tsv")       # laminae.capture.fidelity.COLUMNS
    >>> fig = plot_fidelity(rows, "gpt2-large, corpus nietzsche")
    >>> save_figure(fig, store / "fidelity.png", dpi=150)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from laminae.plots.style import NEUTRAL, OKABE_ITO, plt

#: an error of exactly 0 is drawn here, on the log axis
FLOOR = 1e-12
#: (check, legend label, colour, marker); the float32 comparison gets one line per site
CHECKS = (
    ("chain", "resid_post(l) vs resid_pre(l + 1)", OKABE_ITO[0], "o"),
    ("residual_sum", "resid_pre + attn_out + mlp_out vs resid_post", OKABE_ITO[2], "s"),
    ("final_output", "last block through the final modules vs the model's output", OKABE_ITO[5], "*"),
)
FLOAT32_COLOURS = {"resid_pre": "#000000", "attn_out": OKABE_ITO[0], "mlp_out": OKABE_ITO[1],
                   "resid_post": OKABE_ITO[2]}


def plot_fidelity(rows: Sequence[Mapping[str, Any]], subtitle: str) -> plt.Figure:
    """One panel: the must-hold checks (markers) and, for a 16-bit model, the float32 comparison
    per site (thin lines), each check's tolerance dashed; the verdict and the top-1 agreement in
    the title."""
    fig, ax = plt.subplots(figsize=(7.0, 4.8))

    def series(check: str, site: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        chosen = [r for r in rows if r["check"] == check and (site is None or r["site"] == site)]
        layers = np.array([int(r["layer"]) for r in chosen])
        errors = np.array([max(float(r["max_rel_error"]), FLOOR) for r in chosen])
        return layers, errors

    tolerances: set[float] = set()
    for check, label, colour, marker in CHECKS:
        layers, errors = series(check)
        if layers.size:
            hollow = check == "chain"      # drawn over the sum's markers where both are exact
            ax.plot(layers, errors, color=colour, marker=marker, markersize={"*": 9, "o": 8}.get(marker, 4),
                    markerfacecolor="none" if hollow else colour, linewidth=1.0,
                    linestyle="-" if layers.size > 1 else "none", label=label)
            tolerances.add(float(next(r["tolerance"] for r in rows if r["check"] == check)))
    for site, colour in FLOAT32_COLOURS.items():
        layers, errors = series("float32", site)
        if layers.size:
            ax.plot(layers, errors, color=colour, linewidth=0.9, alpha=0.8, linestyle="-.",
                    label=f"{site} vs the same input in float32")
            tolerances.add(float(next(r["tolerance"] for r in rows if r["check"] == "float32")))
    for tolerance in sorted(tolerances):
        ax.axhline(tolerance, color=NEUTRAL, linestyle="--", linewidth=1.0)
        ax.annotate(f"tolerance {tolerance:g}", (1.0, tolerance), xycoords=("axes fraction", "data"), fontsize=7,
                    color=NEUTRAL, ha="right", va="bottom")
    ax.set_yscale("log")
    ax.set(xlabel="layer", ylabel="max |captured - reference| / max |reference|")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.annotate("exactly equal", (0.5, FLOOR), xycoords=("axes fraction", "data"), fontsize=7, color=NEUTRAL,
                ha="center", va="bottom", xytext=(0, 4), textcoords="offset points")
    ax.set_ylim(bottom=FLOOR / 3)
    fig.legend(loc="outside lower center", ncol=2, fontsize=7)
    must = [r for r in rows if str(r["must_hold"]) == "True"]
    failed = [r for r in must if str(r["passed"]) != "True"]
    verdict = (f"all {len(must)} must-hold checks pass" if not failed
               else f"{len(failed)} of {len(must)} must-hold checks FAIL")
    top1 = [r for r in rows if r["check"] == "float32_top1"]
    if top1:
        verdict += f"\nthe top-1 next token differs from float32's on {100 * float(top1[0]['max_rel_error']):.1f}% of tokens"
    fig.suptitle(f"Fidelity of the extraction (its first batch): {verdict}\n{subtitle}", fontsize=9)
    return fig
