"""Validate a composed config before any job runs; the first problem becomes a one-line error.

    >>> validate_config(cfg, project_root=".", registry=registry)   # returns None or raises ConfigError
    >>> cfg["qkv"]["n_permutations"] = -5
    >>> validate_config(cfg, ".", registry)
    ConfigError: config key 'qkv.n_permutations': expected an integer >= 0, got -5

Four layers: the JSON schema (the core's `schema.yaml` with each experiment's own schema under
its name: types, ranges, allowed values, unknown keys); the claims of each enabled experiment
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

from laminae.errors import ConfigError
from laminae.experiment import Experiment


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
        group = load_schema(experiment)
        if experiment.streams:
            group.setdefault("properties", {})["during_extraction"] = {"type": "boolean"}
        group.setdefault("properties", {})["claims"] = CLAIMS_SCHEMA
        schema["properties"][name] = group
        schema["required"].append(name)
    return schema


def validate_config(cfg: dict[str, Any], project_root: str | Path, registry: Mapping[str, Experiment]) -> None:
    """Raise ConfigError for the first problem in `cfg`; paths are relative to `project_root`."""
    from laminae.claims.config import check_claims
    from laminae.inputs import input_kind

    if isinstance(cfg.get("model"), dict):
        _check_model(cfg["model"])  # first: model=auto without model.pretrained has no name either
    _check_schema(cfg, registry)
    enabled = [registry[name] for name in cfg["experiments"]]
    for experiment in enabled:
        check_claims(cfg, experiment)
    for kind in dict.fromkeys(experiment.inputs for experiment in enabled):
        input_kind(kind).validate(cfg, project_root)
    _check_shards(cfg, enabled)
    for experiment in enabled:
        if experiment.validate is not None:
            experiment.hook("validate")(cfg)


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


def _check_schema(cfg: dict[str, Any], registry: Mapping[str, Experiment]) -> None:
    check_against_schema(cfg, config_schema(registry))


def check_against_schema(instance: Any, schema: Mapping[str, Any], prefix: str = "") -> None:
    """Raise ConfigError for the first violation of `schema` by `instance`, naming the key as
    `<prefix>.<path>` (the path inside `instance`)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return
    # anyOf failures: report the sub-error on the deepest path, which names the real key
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    key = ".".join([*([prefix] if prefix else []), *(str(part) for part in error.absolute_path)]) or "<root>"
    kind, rule = error.validator, error.validator_value
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        name = f"{key}.{unknown[0]}" if key != "<root>" else unknown[0]
        raise ConfigError(name, f"a known key (allowed here: {', '.join(allowed)})", has_value=False)
    if kind == "required":
        missing = [name for name in rule if name not in error.instance]
        name = f"{key}.{missing[0]}" if key != "<root>" else missing[0]
        raise ConfigError(name, "a value (the key is required here)", has_value=False)
    expectations = {
        "enum": lambda: f"one of {rule}",
        "type": lambda: _TYPE_NAMES.get(str(rule), f"a value of type {rule}"),
        "minimum": lambda: f"{_article(error.schema)} >= {rule}",
        "maximum": lambda: f"{_article(error.schema)} <= {rule}",
        "exclusiveMinimum": lambda: f"a number > {rule}",
        "exclusiveMaximum": lambda: f"a number < {rule}",
        "minItems": lambda: f"a list of at least {rule} item(s)",
        "uniqueItems": lambda: "a list without repeated items",
        "minLength": lambda: "a non-empty string",
        "pattern": lambda: error.schema.get("description", f"a string matching {rule}"),
        "const": lambda: f"{rule!r}",
        "maxItems": lambda: f"a list of at most {rule} item(s)",
    }
    expected = expectations.get(kind, lambda: error.message)()
    raise ConfigError(key, expected, error.instance)


_TYPE_NAMES = {"array": "a list, e.g. [a,b]", "object": "a mapping, e.g. {key: value}", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "string": "a string"}


def _article(schema: dict[str, Any]) -> str:
    return "an integer" if schema.get("type") == "integer" else "a number"


def _check_model(model: dict[str, Any]) -> None:
    if model.get("random_init") is None and model.get("pretrained") is None:
        raise ConfigError("model.pretrained", "a Hugging Face hub id or a local directory (or model.random_init)",
                          has_value=False)
    if model.get("random_init") is not None and model.get("pretrained") is not None:
        raise ConfigError("model.pretrained", "null when model.random_init builds the weights", model["pretrained"])
    if model.get("device_map") is None and isinstance(model.get("gpus"), int) and model["gpus"] > 1:
        raise ConfigError("model.gpus", "1 unless model.device_map spreads the blocks over several GPUs "
                          "(model.device_map=auto)", model["gpus"])
