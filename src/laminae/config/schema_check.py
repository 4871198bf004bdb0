"""JSON-schema checks that end in one-line `ConfigError`s naming the key: the helper shared by
the config's validation (`laminae.config.validate`) and the claims' (`laminae.claims.config`).
It imports neither, so neither imports the other through it.

    >>> check_against_schema({"n": -5}, {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
    ...                      prefix="qkv")
    ConfigError: config key 'qkv.n': expected an integer >= 0, got -5
    >>> first_undeclared({"plot": {"colour": "red", "colr": 1}}, schema)   # a key the schema does not declare
    (('plot', 'colr'), ['colour'])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from laminae.errors import ConfigError


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


def first_undeclared(instance: Any, schema: Mapping[str, Any],
                     path: tuple[str, ...] = ()) -> tuple[tuple[str, ...], list[str]] | None:
    """The path of the first key of `instance` that `schema` does not declare, with the keys
    declared beside it; None when every key is declared.

    A key is declared when it is in the `properties` of its mapping's schema, or when that
    schema admits other keys explicitly (`additionalProperties: true` or a schema,
    `patternProperties`): a schema that leaves `additionalProperties` out declares only its
    `properties`, whatever JSON schema would allow. The walk follows `properties` (and an
    `additionalProperties` schema) through mappings of `type: object`; it does not enter lists,
    `$ref`s or `anyOf`/`oneOf`/`allOf` (the schema check proper covers those), nor a value whose
    schema is not a mapping's (a wrong type is the schema check's to report)."""
    if not isinstance(instance, Mapping) or not isinstance(schema, Mapping):
        return None
    if schema.get("type") != "object" and "properties" not in schema:
        return None
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties", False)
    open_keys = extra is True or isinstance(extra, Mapping) or bool(schema.get("patternProperties"))
    for key, value in instance.items():
        child = properties.get(key)
        if child is None:
            if not open_keys:
                return (*path, str(key)), sorted(properties)
            child = extra if isinstance(extra, Mapping) else None
        if child is not None:
            found = first_undeclared(value, child, (*path, str(key)))
            if found is not None:
                return found
    return None


_TYPE_NAMES = {"array": "a list, e.g. [a,b]", "object": "a mapping, e.g. {key: value}", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "string": "a string"}


def _article(schema: Mapping[str, Any]) -> str:
    return "an integer" if schema.get("type") == "integer" else "a number"
