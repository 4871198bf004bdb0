"""What every laminae figure shares: a colour-blind-safe palette, titles that carry the run's
identity, and atomic saving of the .png and .pdf pair.

    >>> fig, ax = plt.subplots()
    >>> ax.plot(layers, values, color=COMPONENT_COLOURS["q"])
    >>> fig.suptitle(run_title(context, "Selectivity of Q, K, V"))
    >>> save_figure(fig, Path("figures/qkv_laminar.png"), dpi=150)   # writes .png and .pdf
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from laminae.atomic import atomic_file  # noqa: E402

# Okabe & Ito (2008), distinguishable under the common colour-vision deficiencies.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
COMPONENT_COLOURS = {"q": "#0072B2", "k": "#E69F00", "v": "#009E73",
                     "q-k": "#CC79A7", "q-v": "#56B4E9", "k-v": "#D55E00",
                     "attn_out": "#0072B2", "mlp_out": "#E69F00", "resid_pre": "#000000", "resid_post": "#009E73"}
DIVERGING_CMAP = "RdBu_r"   # similarity matrices, centred on 0
NEUTRAL = "#7f7f7f"


def apply_style() -> None:
    plt.rcParams.update({
        "figure.constrained_layout.use": True,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO),
        "font.size": 9,
        "axes.titlesize": 10,
        "legend.frameon": False,
        "pdf.fonttype": 42,       # editable text in vector editors
        "svg.fonttype": "none",
    })


def run_title(context: Mapping[str, Any], what: str) -> str:
    """`"<what> - gpt2-large (RANDOM WEIGHTS) - 'The next word is {word}'"`: the model, and the
    template or corpus, so a figure is identifiable out of context."""
    model = context.get("model", "?") + (" (RANDOM WEIGHTS)" if context.get("random_weights") else "")
    inputs = f"template '{context['template']}'" if "template" in context else f"corpus {context.get('corpus', '?')}"
    return f"{what}\n{model}, {inputs}"


def save_figure(fig: plt.Figure, png_path: Path, dpi: int) -> list[Path]:
    """Save `fig` as png_path (.png, raster at `dpi`) and its .pdf sibling, each atomically,
    with fixed metadata so reruns give the same bytes where the backend allows."""
    png_path = Path(png_path)
    written = []
    for path, metadata in ((png_path, {"Software": None}),
                           (png_path.with_suffix(".pdf"), {"CreationDate": None, "Producer": None, "Creator": None})):
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=dpi, metadata=metadata)
        written.append(path)
    plt.close(fig)
    return written


apply_style()
