"""laminae from Python: the results on disk as a table, one run's files as arrays and
DataFrames, and a config's outputs before (or instead of) running it.

    >>> import laminae
    >>> table = laminae.results("results")                   # pandas DataFrame, one row per run
    >>> run = laminae.load(table.run[0], results="results")  # a run by id (or a path, or a table row)
    >>> run.activations("q").shape                           # (n_layers, n_rows, width), read lazily
    >>> plan = laminae.plan(overrides=["model=tiny-gpt2"])   # where its outputs are or would be
    >>> plan.missing                                         # what a run would make; plan.run() makes it

The modules: `results` (discovery and the table), `run` (one run's files), `plan` (a config's
outputs, run through Snakemake). Walk-through: docs/API.md. The same from a shell: `laminae`
(laminae.cli).
"""

from __future__ import annotations

from laminae.api.plan import Output, Plan, plan
from laminae.api.results import RunNotFoundError, find_runs, results
from laminae.api.run import Activations, Run, load

__all__ = ["Activations", "Output", "Plan", "Run", "RunNotFoundError", "find_runs", "load", "plan", "results"]
