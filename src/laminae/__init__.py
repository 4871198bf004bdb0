"""laminae: layer-by-layer analysis of transformer language models (docs/ARCHITECTURE.md).

From Python (docs/API.md), imported on first use so that `import laminae` (every Snakemake job,
every DAG build) stays light:

    >>> import laminae
    >>> laminae.results("results")                       # every run on disk: a pandas DataFrame
    >>> laminae.load("af339e", results="results")        # one run: config, activations, metrics, claims
    >>> laminae.plan(overrides=["model=tiny-gpt2"])      # a config's outputs, and .run() through Snakemake
"""

from __future__ import annotations

from typing import Any

#: Names served by laminae.api, imported when first asked for.
_API = ("results", "load", "plan", "find_runs", "Run", "Plan", "Output", "Activations", "RunNotFoundError")
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        import laminae.api

        return getattr(laminae.api, name)
    raise AttributeError(f"module 'laminae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
