"""The config system: Hydra composition, validation, per-stage hashing and sweeps.

    >>> runs = load_runs(overrides=["model=tiny-gpt2"], sweep=["template=next_word,mid_sentence"],
    ...                  project_root=".")
    >>> [run.stages["stimuli.extract"].hash for run in runs]   # two templates, two extractions
    ['3fa9c2d1e0', '81bd0e77a2']
    >>> runs[0].stages["corpus.extract"] == runs[1].stages["corpus.extract"]   # one corpus extraction
    True
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from laminae.config.compose import Composer, cache_dir, compose_config, expand_sweep, experiment_packages, group_files
from laminae.config.keys import get_key, plain_copy, select_keys, stable_hash
from laminae.config.model_source import resolve_model_keys
from laminae.config.needs import drop_inapplicable, names_experiments
from laminae.config.stages import RUNTIME_KEYS, Run, Stage, analysis_settings, plan_run
from laminae.config.validate import resolve_layer, validate_config
from laminae.errors import ConfigError

if TYPE_CHECKING:
    from laminae.config.reuse import StoreChoices

__all__ = [
    "RUNTIME_KEYS", "Composer", "Run", "Stage", "analysis_settings", "compose_config", "expand_sweep", "experiment_packages",
    "get_key", "load_runs", "plan_run", "resolve_layer", "select_keys", "stable_hash", "validate_config",
]


def load_runs(overrides: Sequence[str] = (), sweep: Sequence[str] = (), project_root: str | Path = ".",
              config_dir: str | Path | None = None, cache: bool = True,
              stores: "StoreChoices | None" = None, validate: bool = True) -> list[Run]:
    """Compose, validate and plan every run: one per combination of `sweep`, each with
    `overrides` applied first (sweep values win on a shared key).

    Composition goes through `Composer` (the same dicts as `compose_config`, each distinct set of
    config-group overrides composed by Hydra once), which with `cache` keeps composed configs in
    `<project_root>/.snakemake/laminae-cache/` (or `$LAMINAE_CACHE_DIR`), keyed by the overrides
    and the content of `conf/`:
    every cluster job re-parsing the Snakefile of a sweep reads them instead of composing again.
    `stores` decides which existing stores the runs read (default: decide now, record nothing;
    `laminae.config.reuse`). `validate=False` skips the checks, for a cluster job planning what
    the DAG's process validated already."""
    from laminae.registry import discover

    for name, value in (("overrides", overrides), ("sweep", sweep)):
        if isinstance(value, str) or not all(isinstance(item, str) for item in value):
            raise ConfigError(name, "a list of strings, e.g. --config 'overrides=[\"model=tiny-gpt2\"]'", value)
    root = Path(project_root)
    config_dir = Path(config_dir) if config_dir is not None else root / "conf"
    runs = []
    combinations = expand_sweep(sweep, cache_dir(root) if cache else None) if sweep else [()]
    default_registry: dict[str, Any] | None = None
    models: dict[tuple, dict[str, Any]] = {}
    from laminae.inputs.corpus import listing_once

    with Composer(config_dir, cache_dir=cache_dir(root) if cache else None) as composer, listing_once():
        for combination in combinations:
            run_overrides = (*overrides, *combination)
            if any("experiment_packages" in o for o in run_overrides):
                registry = discover(experiment_packages(run_overrides, config_dir), root)
            else:   # conf/config.yaml's value: read once, its experiments found once
                if default_registry is None:
                    default_registry = discover(experiment_packages([], config_dir), root)
                registry = default_registry
            cfg = composer.compose(run_overrides, registry)
            if isinstance(cfg.get("model"), dict):  # model=auto, or a preset pointed at another checkpoint
                # depends on the model group and the overrides naming it only: once per distinct pair
                key = (json.dumps(cfg["model"], sort_keys=True, default=repr), tuple(o for o in run_overrides if "model" in o))
                if key not in models:
                    models[key] = resolve_model_keys(cfg["model"], run_overrides, config_dir, root)
                cfg["model"] = plain_copy(models[key])
            if validate:
                validate_config(cfg, root, registry, _GroupFiles(run_overrides, config_dir, registry))
            explicit = len(combinations) == 1 and names_experiments(run_overrides)
            notes = drop_inapplicable(cfg, registry, root, explicit)
            runs.append(plan_run(cfg, root, registry, combination, tuple(notes), stores=stores))
    if len({run.config["results_dir"] for run in runs}) > 1:
        raise ConfigError("results_dir", "one value for every run of a sweep", sorted({r.config["results_dir"] for r in runs}))
    return runs


class _GroupFiles(Mapping):
    """`group_files(...)`, worked out when an error message asks for it."""

    def __init__(self, overrides: Sequence[str], config_dir: Path, registry: Mapping[str, Any]):
        self._args = (overrides, config_dir, registry)
        self._files: dict[str, Path] | None = None

    def _all(self) -> dict[str, Path]:
        if self._files is None:
            self._files = group_files(*self._args)
        return self._files

    def __getitem__(self, name: str) -> Path:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())
