"""The config system: Hydra composition, validation, per-stage hashing and sweeps.

    >>> runs = load_runs(overrides=["model=tiny-gpt2"], sweep=["template=next_word,mid_sentence"],
    ...                  project_root=".")
    >>> [run.stages["stimuli.extract"].hash for run in runs]   # two templates, two extractions
    ['3fa9c2d1e0', '81bd0e77a2']
    >>> runs[0].stages["corpus.extract"] == runs[1].stages["corpus.extract"]   # one corpus extraction
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from laminae.config.compose import compose_config, expand_sweep, experiment_packages, group_files
from laminae.config.keys import get_key, select_keys, stable_hash
from laminae.config.model_source import resolve_model_keys
from laminae.config.stages import RUNTIME_KEYS, Run, Stage, analysis_settings, plan_run
from laminae.config.validate import resolve_layer, validate_config
from laminae.errors import ConfigError

__all__ = [
    "RUNTIME_KEYS", "Run", "Stage", "analysis_settings", "compose_config", "expand_sweep", "experiment_packages",
    "get_key", "load_runs", "plan_run", "resolve_layer", "select_keys", "stable_hash", "validate_config",
]


def load_runs(overrides: Sequence[str] = (), sweep: Sequence[str] = (), project_root: str | Path = ".",
              config_dir: str | Path | None = None) -> list[Run]:
    """Compose, validate and plan every run: one per combination of `sweep`, each with
    `overrides` applied first (sweep values win on a shared key)."""
    from laminae.registry import discover

    for name, value in (("overrides", overrides), ("sweep", sweep)):
        if isinstance(value, str) or not all(isinstance(item, str) for item in value):
            raise ConfigError(name, "a list of strings, e.g. --config 'overrides=[\"model=tiny-gpt2\"]'", value)
    root = Path(project_root)
    config_dir = Path(config_dir) if config_dir is not None else root / "conf"
    runs = []
    for combination in expand_sweep(sweep) if sweep else [()]:
        run_overrides = (*overrides, *combination)
        registry = discover(experiment_packages(run_overrides, config_dir), root)
        cfg = compose_config(run_overrides, config_dir, registry)
        if isinstance(cfg.get("model"), dict):  # model=auto, or a preset pointed at another checkpoint
            cfg["model"] = resolve_model_keys(cfg["model"], run_overrides, config_dir, root)
        validate_config(cfg, root, registry, group_files(run_overrides, config_dir, registry))
        runs.append(plan_run(cfg, root, registry, combination))
    if len({run.config["results_dir"] for run in runs}) > 1:
        raise ConfigError("results_dir", "one value for every run of a sweep", sorted({r.config["results_dir"] for r in runs}))
    return runs
