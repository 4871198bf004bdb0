"""Compose the Hydra config tree in `conf/` into plain dicts, one per run of a sweep.

Composition uses Hydra's compose API (never `@hydra.main`), so it is deterministic and cheap
enough to repeat in every cluster job that re-parses the Snakefile:

    >>> registry = discover(experiment_packages(overrides, "conf"), project_root=".")
    >>> cfg = compose_config(["model=tiny-gpt2", "qkv.n_permutations=200"], "conf", registry)
    >>> cfg["model"]["name"], cfg["qkv"]["n_permutations"]
    ('tiny-gpt2', 200)

Every experiment of the registry contributes its config group (`conf/<name>/default.yaml`, or
the `default.yaml` in its folder), added to the defaults list here, so adding an experiment
never means editing `conf/config.yaml`; `experiments=[...]` chooses which run.
    >>> [o for o in expand_sweep(["model=gpt2,minilm-l6", "template=next_word"])]
    [('model=gpt2', 'template=next_word'), ('model=minilm-l6', 'template=next_word')]

Hydra's multi-line errors (unknown group option, unknown key, bad syntax) become one-line
`ConfigError`s that name the key.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from laminae.errors import ConfigError
from laminae.experiment import Experiment

# Resolvers whose value changes between calls or needs a running Hydra app: never in a hash.
_FORBIDDEN_INTERPOLATIONS = re.compile(r"\$\{\s*(now|hydra)\s*:")


def compose_config(overrides: Sequence[str], config_dir: str | Path,
                   registry: Mapping[str, Experiment] | None = None) -> dict[str, Any]:
    """The fully resolved config for one run: `conf/config.yaml`, the config group of every
    experiment in `registry`, then `overrides`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config_dir = Path(config_dir).resolve()
    if not (config_dir / "config.yaml").is_file():
        raise ConfigError("config_dir", "a folder with config.yaml", str(config_dir))
    overrides = [str(o) for o in overrides]
    _check_override_syntax(overrides)
    overrides = _with_experiment_groups(overrides, config_dir, registry or {})
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="laminae"):
            cfg = compose(config_name="config", overrides=overrides)
        _reject_volatile_interpolations(OmegaConf.to_container(cfg, resolve=False))
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise _one_line_error(error, overrides, config_dir) from None
    finally:
        GlobalHydra.instance().clear()


def experiment_packages(overrides: Sequence[str], config_dir: str | Path) -> list[str]:
    """`experiment_packages` as `conf/config.yaml` and `overrides` set it, read before
    composition: it decides which experiments, hence which config groups, exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [str(o) for o in overrides]
    _check_override_syntax(overrides)
    path = Path(config_dir) / "config.yaml"
    root = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    value: Any = (root or {}).get("experiment_packages", [])
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group == "experiment_packages":
            value = override.value()
    if value is None:
        value = []
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError("experiment_packages", "a list of folders or module names, e.g. [labs/experiments]", value)
    return list(value)


def _with_experiment_groups(overrides: list[str], config_dir: Path, registry: Mapping[str, Experiment]) -> list[str]:
    """`overrides` with `+<name>=<option>` for every experiment's config group (option `default`
    unless an override picks another), and groups found only in an experiment's folder
    registered with Hydra."""
    from hydra.core.config_store import ConfigStore

    from laminae.registry import default_config

    chosen, kept = _chosen_options(overrides, registry)
    for experiment in registry.values():
        path = default_config(experiment, config_dir)
        if path is not None:
            node = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            ConfigStore.instance().store(group=experiment.name, name="default", node=node)
    return [*(f"+{name}={chosen.get(name, 'default')}" for name in registry), *kept]


def _chosen_options(overrides: Sequence[str], registry: Mapping[str, Experiment]) -> tuple[dict[str, str], list[str]]:
    """The option each `<experiment>=<option>` override picks, and the other overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    chosen: dict[str, str] = {}
    kept = []
    for text, override in zip(overrides, OverridesParser.create().parse_overrides(list(overrides))):
        name = override.key_or_group
        if name in registry and not override.is_delete() and isinstance(override.value(), str):
            chosen[name] = override.value()
        else:
            kept.append(text)
    return chosen, kept


def group_files(overrides: Sequence[str], config_dir: str | Path, registry: Mapping[str, Experiment]) -> dict[str, Path]:
    """The file each experiment's config group is composed from: `conf/<name>/<option>.yaml`
    (option `default` unless an override picks another), else the `default.yaml` in the
    experiment's folder. Error messages name it; composition does not read it from here."""
    from laminae.registry import default_config

    config_dir = Path(config_dir)
    chosen, _ = _chosen_options([str(o) for o in overrides], registry)
    files = {}
    for name, experiment in registry.items():
        option = chosen.get(name, "default")
        path = config_dir / name / f"{option}.yaml"
        if path.is_file():
            files[name] = path
        elif option == "default":
            files[name] = default_config(experiment, config_dir) or path
    return files


def expand_sweep(sweep: Iterable[str]) -> list[tuple[str, ...]]:
    """Hydra comma-syntax sweep overrides -> the cartesian product of single overrides.

    `["model=a,b", "template=x,y"]` gives four tuples, in row-major order (first key slowest).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    sweep = [str(s) for s in sweep]
    try:
        parsed = OverridesParser.create().parse_overrides(sweep)
    except HydraException as error:
        raise ConfigError("sweep", f"Hydra sweep overrides like 'model=gpt2,minilm-l6' ({_first_line(error)})", sweep) from None
    axes = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            if override.is_range_sweep() or override.is_interval_sweep():
                raise ConfigError("sweep", "a comma list or choice(...), not a range or interval", override.input_line)
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        axes.append([f"{key}={value}" for value in values])
    return [tuple(combination) for combination in itertools.product(*axes)]


def _check_override_syntax(overrides: Sequence[str]) -> None:
    """Parse each override alone, so a syntax error names its key (Hydra's own message names
    neither the key nor the cure). The usual cause is an unquoted value holding braces, e.g.
    `template.text=a {word} b`, which Hydra's grammar reads as a dict."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as error:
            key, has_value, value = override.partition("=")
            key = key.strip().lstrip("~+")
            if not has_value or not key:
                raise ConfigError("overrides", f"overrides of the form key=value ({_first_line(error)})", override) from None
            reason = _first_line(error)
            if value.lstrip()[:1] not in ("[", "{") and any(char in value for char in "{}'\""):
                quote = '"' if "'" in value else "'"
                expected = f"the value quoted, since it holds braces or quotes: {key}={quote}{value}{quote}"
            else:
                expected = "a value in Hydra's override syntax (lists as [a,b]; quote strings holding []{}(),'\")"
            raise ConfigError(key, f"{expected} (Hydra: {reason})", value) from None


def _reject_volatile_interpolations(node: Any, key: str = "") -> None:
    if isinstance(node, dict):
        for child_key, child in node.items():
            _reject_volatile_interpolations(child, f"{key}.{child_key}" if key else str(child_key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            _reject_volatile_interpolations(child, f"{key}[{index}]")
    elif isinstance(node, str) and _FORBIDDEN_INTERPOLATIONS.search(node):
        raise ConfigError(key, "a value that is the same every time it is read (no ${now:...} or ${hydra:...})", node)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _one_line_error(error: BaseException, overrides: Sequence[str], config_dir: Path) -> ConfigError:
    """Map Hydra/OmegaConf errors to a ConfigError naming the key and what exists instead."""
    text = str(error)
    missing_group = re.search(r"Could not (?:find|load) '([^/']+)/([^']+)'", text)
    if missing_group:
        group, option = missing_group.groups()
        available = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        return ConfigError(group, f"one of {available}", option)
    if "Config group override must be" in text:  # e.g. qkv=3: a group given a non-name value
        for override in overrides:
            key, _, value = override.partition("=")
            group = key.strip().lstrip("~+")
            if (config_dir / group).is_dir() and not (config_dir / group / f"{value.strip()}.yaml").is_file():
                available = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
                return ConfigError(group, f"one of {available} (a config group; set its keys as {group}.<key>=...)", value)
    unknown_key = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if unknown_key:
        key = unknown_key.group(1)
        parent, _, leaf = key.rpartition(".")
        return ConfigError(key, f"an existing key{f' of {parent!r}' if parent else ''} (no key {leaf!r} there; "
                                "add new keys with '+key=value')", has_value=False)
    parse_error = re.search(r"Error parsing override '([^']+)'", text)
    if parse_error:
        return ConfigError("overrides", "overrides of the form key=value", parse_error.group(1))
    interpolation = re.search(r"full_key: (\S+)", text)
    if interpolation:
        return ConfigError(interpolation.group(1), f"a resolvable value ({_first_line(error)})", has_value=False)
    return ConfigError("overrides", f"a valid Hydra composition ({_first_line(error)})", list(overrides))
