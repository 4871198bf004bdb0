"""What a claims stage writes and a sweep collects: claims.tsv, the one-screen summary, the
verdict table figure, and the sweep's claims matrix (runs x claims).

    >>> write_claims_table(out / "claims.tsv", results)
    >>> read_claims_table(out / "claims.tsv")[0].verdict
    'holds'
    >>> print(summary_text(results, "qkv on gpt2-large"))
    >>> save_figure(plot_claims(results, title), out / "claims.png", dpi=150)
    >>> save_figure(plot_matrix(labels, columns, verdicts, title), sweep / "claims_matrix.png", dpi=150)
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from laminae.claims import ClaimResult
from laminae.claims.predicates import FAILS, HOLDS, NOT_APPLICABLE, UNDECIDED, VERDICTS
from laminae.errors import InputFileError
from laminae.store import read_tsv, write_tsv

#: verdict -> (fill colour, symbol); Okabe-Ito green and vermillion, orange, light grey
VERDICT_STYLE = {HOLDS: ("#009E73", "\u2713"), FAILS: ("#D55E00", "\u2717"), UNDECIDED: ("#E69F00", "?"),
                 NOT_APPLICABLE: ("#C8C8C8", "\u2013")}
SUMMARY_WIDTH = 110


def write_claims_table(path: Path, results: Sequence[ClaimResult]) -> None:
    write_tsv(path, [result.__dict__ for result in results], ClaimResult.COLUMNS)


def read_claims_table(path: str | Path) -> list[ClaimResult]:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "not found; run the experiment's claims rule first")
    rows = read_tsv(path)
    if rows and tuple(rows[0]) != ClaimResult.COLUMNS:
        raise InputFileError(path, f"is not a claims table (expected columns {', '.join(ClaimResult.COLUMNS)})")
    return [ClaimResult(**row) for row in rows]


def tally(results: Sequence[ClaimResult]) -> str:
    """`2 hold, 1 fails, 0 undecided, 1 not applicable`."""
    counts = Counter(result.verdict for result in results)
    words = {HOLDS: ("holds", "hold"), FAILS: ("fails", "fail")}
    return ", ".join(f"{counts[v]} {words.get(v, (v, v))[counts[v] != 1]}" for v in VERDICTS)


def summary_text(results: Sequence[ClaimResult], title: str) -> str:
    """The one-screen summary: a header with the tally, then per claim its verdict, id, seed,
    the layers asked and the headline numbers, and what decided it (wrapped, at most 3 lines)."""
    lines = [f"{title}: {len(results)} claims: {tally(results)}"]
    indent = " " * 18
    for r in results:
        seed_layers = f", seed layers {r.seed_layers}" if r.seed_layers else ""
        lines.append(f"  {r.verdict:<15} {r.claim} (seed {r.seed}{seed_layers}; layers {r.layers})")
        for label, text in (("says", r.says), ("expected", r.expected), ("measured", r.measured),
                            ("decided by", r.decided_by)):
            if not text:
                continue
            wrapped = textwrap.wrap(f"{label}: {text}", SUMMARY_WIDTH - len(indent), subsequent_indent="  ",
                                    max_lines=3, placeholder=" ...")
            lines += [indent + line for line in wrapped]
    return "\n".join(lines)


def _wrap(text: str, width: int, max_lines: int) -> str:
    return "\n".join(textwrap.wrap(text, width, max_lines=max_lines, placeholder=" ...")) if text else ""


LINE_IN = 0.135                 # height of one text line of the table figure, inches


def plot_claims(results: Sequence[ClaimResult], title: str):
    """The verdict table: one row per claim, its verdict as a coloured badge, what it says (black)
    and asks (grey), what this run measured and what decided it (grey)."""
    from laminae.plots.style import plt

    columns = ((0.0, 0.09), (0.095, 0.17), (0.27, 0.33), (0.605, 0.395))   # (x, width) in figure fractions
    cells = []
    for r in results:
        seed = f"seed {r.seed}" + (f"\nseed layers {r.seed_layers}" if r.seed_layers else "")
        cells.append((
            [(f"{r.claim}\n{seed}\nthis run: layers {r.layers}", "black")],
            [(_wrap(r.says, 62, 3), "black"), (_wrap(f"asks: {r.expected}", 70, 4), "#555555")],
            [(_wrap(f"measured: {r.measured}", 74, 3), "black") if r.measured else ("", "black"),
             (_wrap(f"decided by: {r.decided_by}", 80, 5), "#555555")],
        ))
    lines = [max(sum(t.count("\n") + 1 for t, _ in blocks if t) for blocks in cell) for cell in cells]
    heights = [n * LINE_IN + 0.16 for n in lines]
    header = 0.75
    total = header + sum(heights) + 0.35
    fig = plt.figure(figsize=(12.5, max(total, 2.0)), layout="none")
    y = 1 - header / total
    for x, label in zip((c[0] for c in columns), ("verdict", "claim", "says / asks", "this run")):
        fig.text(x + 0.01, y + 0.1 / total, label, fontsize=8.5, fontweight="bold", va="bottom")
    fig.text(0.01, 1 - 0.1 / total, title, fontsize=10, va="top", fontweight="bold")
    fig.add_artist(plt.Line2D([0.01, 0.99], [y, y], color="black", linewidth=0.8))
    for r, cell, height in zip(results, cells, heights):
        row = height / total
        colour, symbol = VERDICT_STYLE.get(r.verdict, ("#ffffff", ""))
        fig.add_artist(plt.Rectangle((0.012, y - row + 0.04 / total), columns[0][1] - 0.01, row - 0.08 / total,
                                     facecolor=colour, edgecolor="none", alpha=0.9))
        fig.text(0.012 + (columns[0][1] - 0.01) / 2, y - row / 2, f"{symbol}\n{r.verdict}", ha="center",
                 va="center", fontsize=8.5, fontweight="bold", color="black" if r.verdict != FAILS else "white")
        for (x, _), blocks, size in zip(columns[1:], cell, (8, 7.5, 7)):
            top = y - 0.06 / total
            for text, text_colour in blocks:
                if not text:
                    continue
                fig.text(x + 0.01, top, text, fontsize=size, va="top", color=text_colour, linespacing=1.25)
                top -= (text.count("\n") + 1) * LINE_IN / total
        y -= row
        fig.add_artist(plt.Line2D([0.01, 0.99], [y, y], color="#bbbbbb", linewidth=0.5))
    legend = "   ".join(f"{symbol} {verdict}" for verdict, (_, symbol) in VERDICT_STYLE.items())
    fig.text(0.01, 0.12 / total, f"{legend}.  Rules and tolerances: docs/EXPERIMENTS.md, 'Claims'.", fontsize=7.5,
             color="#555555", va="bottom")
    return fig


def plot_matrix(runs: Sequence[str], claims: Sequence[str], verdicts: Sequence[Sequence[str]], title: str):
    """Runs (rows, in the sweep's order) x claims (columns): each cell coloured by its verdict
    with its symbol; an empty cell: the run does not ask that claim."""
    from matplotlib.patches import Patch

    from laminae.plots.style import plt

    n_rows, n_cols = len(runs), len(claims)
    cell = 0.5                                     # inches per cell
    width = 1.0 + max(len(r) for r in runs) * 0.07 + n_cols * cell
    height = 1.0 + n_rows * cell + max(len(c) for c in claims) * 0.058   # rotated labels below
    fig, ax = plt.subplots(figsize=(max(width, 5.0), height), layout="constrained")
    for i, row in enumerate(verdicts):
        for j, verdict in enumerate(row):
            if not verdict:
                continue
            colour, symbol = VERDICT_STYLE.get(verdict, ("#ffffff", "?"))
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=colour, edgecolor="white", linewidth=1.5))
            ax.text(j + 0.5, i + 0.5, symbol, ha="center", va="center", fontsize=10, fontweight="bold",
                    color="white" if verdict == FAILS else "black")
    ax.set_xlim(0, n_cols)
    ax.set_ylim(n_rows, 0)
    ax.set_xticks([j + 0.5 for j in range(n_cols)], claims, rotation=50, ha="right", fontsize=7.5)
    ax.set_yticks([i + 0.5 for i in range(n_rows)], runs, fontsize=8)
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    handles = [Patch(facecolor=colour, label=f"{symbol} {verdict}") for verdict, (colour, symbol) in VERDICT_STYLE.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig
