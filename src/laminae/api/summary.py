"""The few lines a person reads when a run ends (the Snakefile's `onsuccess`): per run, each
experiment's claims verdicts and where its figures are; then the sweep's comparisons and how
to build the report.

    >>> print(end_of_run(plan))                       # plan: the WorkflowPlan the Snakefile built
    laminae: 1 run done; results in 'results'
    tiny-gpt2 (default)
      qkv          4 claims: 0 hold, 1 fails, 2 undecided, 1 not applicable
                   figures: results/tiny-gpt2/stimuli/.../qkv/analysis-2d059d2549/plot-588daf4dca/figures
      ...
    report: laminae report   (or: snakemake --report report.html with the same --config)

Paths are as the run wrote them (relative to Snakemake's working directory unless
`results_dir` is absolute); nothing is computed, only read (`summary.txt` of each claims stage).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from laminae.workflow import WorkflowPlan


def end_of_run(plan: "WorkflowPlan", overrides: list[str] | None = None, sweep: list[str] | None = None) -> str:
    """The end-of-run summary of `plan` (see the module docstring); `overrides` and `sweep`
    are the run's `--config` lists, repeated in the report command it suggests."""
    lines = [f"laminae: {len(plan.runs)} run{'s' if len(plan.runs) != 1 else ''} done; results in "
             f"'{plan.results_dir}'"]
    for run in plan.runs:
        lines.append(f"{run.config['model']['name']} ({run.label})")
        width = max((len(name) for name in run.experiments), default=0)
        for name in run.experiments:
            verdicts = claims_line(run.stages.get(f"{name}.claims"))
            figures = run.stages[f"{name}.plot"].output_dir
            lines.append(f"  {name:<{width}}  {verdicts}")
            lines.append(f"  {'':<{width}}  figures: {figures}")
        lines.extend(f"  ({note})" for note in run.notes)
    for comparison in plan.comparisons.values():
        lines.append(f"sweep comparison of {comparison.experiment}: {comparison.dir}")
    for cross in plan.cross_runs.values():
        lines.append(f"{cross.experiment} across runs: {cross.dir}")
    if plan.claims_matrix is not None:
        lines.append(f"claims of every run side by side: {plan.claims_matrix.dir}")
    lines.append(f"report: {report_command(overrides or [], sweep or [])}")
    return "\n".join(lines)


def claims_line(stage) -> str:
    """'4 claims: 0 hold, 1 fails, ...' from a claims stage's summary.txt (its first line's
    count), 'no claims' without a claims stage, 'claims not judged' when it has not run."""
    if stage is None:
        return "no claims"
    summary = Path(stage.output_dir) / "summary.txt"
    if not summary.is_file():
        return "claims not judged"
    first = summary.read_text(encoding="utf-8").splitlines()[0]   # "Claims of <title>: 4 claims: 0 hold, ..."
    return ": ".join(first.rsplit(": ", 2)[-2:])


def report_command(overrides: list[str], sweep: list[str]) -> str:
    """The `laminae report` command line that reports the same config (the `laminae` beside
    this Python, as a path from here when it is below the current folder: `.venv/bin/laminae`)."""
    words = [laminae_executable(), "report", *overrides]
    for axis in sweep:
        words += ["--sweep", axis]
    return " ".join(shlex.quote(word) for word in words)



def laminae_executable() -> str:
    """`laminae` as the user would type it here: the script beside this Python, relative to the
    current folder when below it (a checkout's `.venv/bin/laminae`), else `laminae`."""
    beside = Path(sys.executable).with_name("laminae")
    if not beside.is_file():
        return "laminae"
    return str(beside.relative_to(Path.cwd())) if Path.cwd() in beside.parents else str(beside)
