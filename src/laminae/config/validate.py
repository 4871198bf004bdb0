"""Validate a composed config before any job runs; the first problem becomes a one-line error.

    >>> validate_config(cfg, project_root=".", registry=registry)   # returns None or raises ConfigError
    >>> cfg["qkv"]["n_permutations"] = -5
    >>> validate_config(cfg, ".", registry)
    ConfigError: config key 'qkv.n_permutations': expected an integer >= 0, got -5

Five layers: every key of an experiment's config group declared by its schema (whether or not
the schema sets `additionalProperties: false`; the error names the group's file when the key is
in it); the JSON schema (the core's `schema.yaml` with each experiment's own schema under its
name: types, ranges, allowed values, unknown keys; `laminae.config.schema_check`); the claims of each enabled experiment
(`<name>.claims`: each against its predicate kind's schema, and naming measurements the
experiment declares; `laminae.claims.config`); the checks of each input kind that an enabled
experiment reads (a template with exactly one `{word}`, an existing non-empty corpus); and each
enabled experiment's own `validate` hook (plot layers inside the model, ...).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from laminae.config.schema_check import check_against_schema, first_undeclared
from laminae.errors import ConfigError
from laminae.experiment import Experiment

__all__ = ["check_against_schema", "config_schema", "core_schema", "resolve_layer", "validate_config"]


@functools.lru_cache(maxsize=1)
def core_schema() -> dict[str, Any]:
    from laminae.models.adapters import FAMILIES  # torch-free

    schema = yaml.safe_load(resources.files("laminae.config").joinpath("schema.yaml").read_text())
    schema["properties"]["model"]["properties"]["family"]["enum"] = ["auto", *FAMILIES]  # one per adapter
    return schema


def config_schema(registry: Mapping[str, Experiment]) -> dict[str, Any]:
    """The core schema, with each experiment's schema as the property of its name (a reducer
    experiment's group also takes `during_extraction`, every group `claims`) and `experiments`
    limited to the names."""
    from laminae.claims.config import CLAIMS_SCHEMA
    from laminae.registry import load_schema

    schema = copy.deepcopy(core_schema())
    schema["properties"]["experiments"]["items"] = {"enum": list(registry)}
    for name, experiment in registry.items():
        group = copy.deepcopy(load_schema(experiment))
        properties = group.setdefault("properties", {})
        if experiment.streams:
            properties["during_extraction"] = {**DURING_EXTRACTION_SCHEMA,
                                               **_description(properties.get("during_extraction"))}
        if len(experiment.input_kinds) > 1:
            properties["inputs"] = {"enum": list(experiment.input_kinds), "default": experiment.input_kinds[0],
                                    **({"description": INPUTS_DESCRIPTION} | _description(properties.get("inputs")))}
        properties["claims"] = {**CLAIMS_SCHEMA, **_description(properties.get("claims"))}
        schema["properties"][name] = group
        schema["required"].append(name)
    return schema


#: What laminae adds to the group of every experiment whose analysis is a reducer.
DURING_EXTRACTION_SCHEMA = {
    "type": "boolean",
    "description": "run the reducer inside the extraction job, on the model's batches, and store only its results, "
                   "not the activations (unless another enabled experiment on the same inputs reads them); the "
                   "extraction stage then hashes this group's analysis keys too",
}

#: What laminae says of `<name>.inputs`, added to the group of an experiment that reads several kinds.
INPUTS_DESCRIPTION = ("which inputs the experiment reads (its extraction; each kind has its own analysis folder and "
                      "rules, `<name>_analysis_<kind>` for a kind other than the first)")


def _description(schema: Any) -> dict[str, Any]:
    """An experiment's own description of a key laminae adds, which then wins over laminae's."""
    return {"description": schema["description"]} if isinstance(schema, Mapping) and "description" in schema else {}


def validate_config(cfg: dict[str, Any], project_root: str | Path, registry: Mapping[str, Experiment],
                    group_files: Mapping[str, Path] | None = None) -> None:
    """Raise ConfigError for the first problem in `cfg`; paths are relative to `project_root`.
    `group_files` (experiment name -> the file its config group was composed from, see
    `laminae.config.compose.group_files`) lets an undeclared key's error name its file."""
    from laminae.claims.config import check_claims
    from laminae.inputs import input_kind

    if isinstance(cfg.get("model"), dict):
        _check_model(cfg["model"])  # first: model=auto without model.pretrained has no name either
    checked = _checked_schema(registry)
    _check_declared(cfg, checked.schema, registry, Path(project_root), {} if group_files is None else group_files)
    checked.check(cfg)
    enabled = [registry[name].for_config(cfg) for name in cfg["experiments"]]
    for experiment in enabled:
        key = (id(experiment), _canonical(cfg.get(experiment.name, {}).get("claims")))
        if _CLAIMS_PASSED.get(key) is not experiment:   # the same claims of the same experiment: checked once
            check_claims(cfg, experiment)
            _CLAIMS_PASSED[key] = experiment
    for kind in dict.fromkeys(experiment.inputs for experiment in enabled):
        input_kind(kind).validate(cfg, project_root)
    _check_shards(cfg, enabled)
    for experiment in enabled:
        if experiment.validate is not None:
            experiment.hook("validate")(cfg)


class _CheckedSchema:
    """`config_schema(registry)` with its validator, and the top-level values found valid: a
    sweep's runs share most of their config, so each distinct value of a top-level key is
    checked once (`check` is `check_against_schema(cfg, schema)`: where any value is new and
    invalid, or the schema's root says more than types, required and properties, the whole
    config is checked as before, for the same error)."""

    ROOT_KEYWORDS = frozenset({"type", "additionalProperties", "required", "properties", "$defs", "$schema",
                               "title", "description"})

    def __init__(self, registry: Mapping[str, Experiment]):
        import jsonschema

        self.registry = dict(registry)   # keeps the experiments (and so their ids) alive
        self.schema = config_schema(registry)
        self.validator = jsonschema.Draft202012Validator(self.schema)
        self.by_key = set(self.schema) <= self.ROOT_KEYWORDS and self.schema.get("type") == "object" \
            and self.schema.get("additionalProperties") is False
        self.passed: set[tuple[str, Any]] = set()

    def check(self, cfg: Any) -> None:
        if self.by_key and isinstance(cfg, dict) and all(isinstance(key, str) for key in cfg) \
                and set(cfg) <= set(self.schema["properties"]) and set(self.schema.get("required", ())) <= set(cfg):
            seen = [(key, _canonical(value)) for key, value in cfg.items()]
            new = [(key, value) for (key, canonical), value in zip(seen, cfg.values()) if (key, canonical) not in self.passed]
            if all(self.validator.evolve(schema=self.schema["properties"][key]).is_valid(value) for key, value in new):
                self.passed.update(seen)
                return
        check_against_schema(cfg, self.schema)


_SCHEMAS: dict[tuple[int, ...], _CheckedSchema] = {}
_CLAIMS_PASSED: dict[tuple[int, Any], Experiment] = {}


def _checked_schema(registry: Mapping[str, Experiment]) -> _CheckedSchema:
    """One `_CheckedSchema` per registry (its experiments, by identity: `discover` returns the
    same objects for the same packages), instead of the schema files read for every run."""
    key = tuple(id(experiment) for experiment in registry.values())
    cached = _SCHEMAS.get(key)
    if cached is None or list(cached.registry) != list(registry) \
            or any(a is not b for a, b in zip(cached.registry.values(), registry.values())):
        cached = _SCHEMAS[key] = _CheckedSchema(registry)
    return cached


def _canonical(node: Any) -> tuple[str, str]:
    """A hashable form of a config value, equal only when the values are (a config holds
    plain values, whose repr says their type and value: 1, 1.0, True and '1' differ)."""
    return type(node).__name__, repr(node)


def _check_declared(cfg: Mapping[str, Any], schema: Mapping[str, Any], registry: Mapping[str, Experiment],
                    root: Path, group_files: Mapping[str, Path]) -> None:
    """Every key of every experiment's config group is one its schema declares, whether or not
    the schema sets `additionalProperties: false` (`schema_check.first_undeclared`): a typo in a
    group's yaml or a `+<name>.<key>=...` override stops here, naming the key and, when the key
    is in it, the group's file, instead of as a KeyError inside a job."""
    for name in registry:
        found = first_undeclared(cfg.get(name), schema["properties"][name])
        if found is None:
            continue
        path, declared = found
        key = ".".join((name, *path))
        where = _where_set(path, group_files.get(name), root)
        raise ConfigError(key, f"a key that experiment {name!r} declares in its schema (declared here: "
                               f"{', '.join(declared) or 'none'}){where}", has_value=False)


def _where_set(path: tuple[str, ...], file: Path | None, root: Path) -> str:
    """`; it is set in <file>` when the group's file holds the key, else that an override set it."""
    if file is None or not file.is_file():
        return ""
    try:
        node: Any = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return ""
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return f"; it comes from an override, not from {_shown(file, root)}"
        node = node[part]
    return f"; it is set in {_shown(file, root)}"


def _shown(file: Path, root: Path) -> str:
    try:
        return str(file.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(file)


def _check_shards(cfg: dict[str, Any], enabled: list[Experiment]) -> None:
    """A sharded extraction runs only reducers that merge shards (`Reducer.partial`/`absorb`)."""
    shards = cfg["corpus"]["shards"]
    if shards == 1:
        return
    for experiment in enabled:
        if experiment.inputs == "corpus" and experiment.streams and cfg[experiment.name].get("during_extraction") \
                and not experiment.merges_shards():
            raise ConfigError("corpus.shards", f"1 while {experiment.name}.during_extraction is true (its reducer "
                                               "offers no partial/absorb to merge shards)", shards)


def resolve_layer(index: int | str, n_layers: int, key: str) -> int:
    """`first`/`middle`/`last` or an index (negative counts from the end) -> 0 .. n_layers-1."""
    named = {"first": 0, "middle": (n_layers - 1) // 2, "last": n_layers - 1}
    if isinstance(index, str):
        if index not in named:
            raise ConfigError(key, "first, middle, last or a layer index", index)
        return named[index]
    if not -n_layers <= index < n_layers:
        raise ConfigError(key, f"layer indices in [{-n_layers}, {n_layers - 1}] for a {n_layers}-layer model", index)
    return index % n_layers


def _check_model(model: dict[str, Any]) -> None:
    if model.get("random_init") is None and model.get("pretrained") is None:
        raise ConfigError("model.pretrained", "a Hugging Face hub id or a local directory (or model.random_init)",
                          has_value=False)
    if model.get("random_init") is not None and model.get("pretrained") is not None:
        raise ConfigError("model.pretrained", "null when model.random_init builds the weights", model["pretrained"])
    if model.get("device_map") is None and isinstance(model.get("gpus"), int) and model["gpus"] > 1:
        raise ConfigError("model.gpus", "1 unless model.device_map spreads the blocks over several GPUs "
                          "(model.device_map=auto)", model["gpus"])
