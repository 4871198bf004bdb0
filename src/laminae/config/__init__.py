"""The config system: Hydra composition, validation, per-stage hashing and sweeps.

    >>> runs = load_runs(overrides=["model=tiny-gpt2"], sweep=["template=next_word,mid_sentence"],
    ...                  project_root=".")
    >>> [run.stages["qkv.extract"].hash for run in runs]   # two templates, two extractions
    ['3fa9c2d1e0', '81bd0e77a2']
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from laminae.config.compose import compose_config, expand_sweep
from laminae.config.stages import RUNTIME_KEYS, STAGE_KEYS, Run, Stage, plan_run, stable_hash
from laminae.config.validate import corpus_documents, resolve_layer, validate_config
from laminae.errors import ConfigError

__all__ = [
    "RUNTIME_KEYS", "STAGE_KEYS", "Run", "Stage", "compose_config", "corpus_documents", "expand_sweep",
    "load_runs", "plan_run", "resolve_layer", "stable_hash", "validate_config",
]


def load_runs(overrides: Sequence[str] = (), sweep: Sequence[str] = (), project_root: str | Path = ".",
              config_dir: str | Path | None = None) -> list[Run]:
    """Compose, validate and plan every run: one per combination of `sweep`, each with
    `overrides` applied first (sweep values win on a shared key)."""
    for name, value in (("overrides", overrides), ("sweep", sweep)):
        if isinstance(value, str) or not all(isinstance(item, str) for item in value):
            raise ConfigError(name, "a list of strings, e.g. --config 'overrides=[\"model=tiny-gpt2\"]'", value)
    root = Path(project_root)
    config_dir = Path(config_dir) if config_dir is not None else root / "conf"
    runs = []
    for combination in expand_sweep(sweep) if sweep else [()]:
        run_overrides = (*overrides, *combination)
        cfg = compose_config(run_overrides, config_dir)
        validate_config(cfg, root)
        runs.append(plan_run(cfg, root, combination))
    if len({run.config["results_dir"] for run in runs}) > 1:
        raise ConfigError("results_dir", "one value for every run of a sweep", sorted({r.config["results_dir"] for r in runs}))
    return runs
