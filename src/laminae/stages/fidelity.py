"""Rule `fidelity_figure`: a store's fidelity checks (`fidelity.tsv`, laminae.capture.fidelity)
drawn beside it for the report, in a job of its own so the extraction pays for the checks only.

    >>> draw_fidelity(Path(".../activations"), Path(".../fidelity.png"), "gpt2-large, corpus nietzsche")
"""

from __future__ import annotations

import logging
from pathlib import Path

from laminae.store import FIDELITY_FILE, read_tsv

log = logging.getLogger(__name__)
DPI = 120


def draw_fidelity(activations_dir: Path, png_path: Path, subtitle: str) -> list[Path]:
    """fidelity.png and .pdf; a store made before laminae checked fidelity gets a figure saying so."""
    from laminae.plots.fidelity import plot_fidelity
    from laminae.plots.style import plt, save_figure

    table = Path(activations_dir) / FIDELITY_FILE
    if table.is_file():
        fig = plot_fidelity(read_tsv(table), subtitle)
    else:
        log.warning("%s has no %s: it was made before laminae checked fidelity", activations_dir, FIDELITY_FILE)
        fig, ax = plt.subplots(figsize=(7.0, 2.0))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no fidelity checks recorded: this store was made before laminae checked fidelity\n"
                          f"(delete {Path(activations_dir).name}/ and rerun to check it)\n{subtitle}",
                ha="center", va="center", fontsize=9)
    return save_figure(fig, Path(png_path), dpi=DPI)
