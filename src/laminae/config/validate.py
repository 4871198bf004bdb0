"""Validate a composed config before any job runs; the first problem becomes a one-line error.

    >>> validate_config(cfg, project_root=".")      # returns None or raises ConfigError
    >>> cfg["qkv"]["n_permutations"] = -5
    >>> validate_config(cfg, ".")
    ConfigError: config key 'qkv.n_permutations': expected an integer >= 0, got -5

Two layers: the JSON schema (`schema.yaml`: types, ranges, allowed values, unknown keys) and
the checks no schema can express (a template with exactly one `{word}`, no duplicated words,
an existing non-empty corpus, plot layers inside the model).
"""

from __future__ import annotations

import functools
import string
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from laminae.errors import ConfigError

SITES_NEEDED = {"adjustments": ("attn_out", "mlp_out")}
CORPUS_SUFFIXES = (".txt",)


@functools.lru_cache(maxsize=1)
def config_schema() -> dict[str, Any]:
    return yaml.safe_load(resources.files("laminae.config").joinpath("schema.yaml").read_text())


def validate_config(cfg: dict[str, Any], project_root: str | Path) -> None:
    """Raise ConfigError for the first problem in `cfg`; paths are relative to `project_root`."""
    _check_schema(cfg)
    _check_template(cfg["template"]["text"])
    _check_stimuli(cfg["stimuli"]["categories"])
    _check_model(cfg["model"])
    missing = set(cfg["qkv"]["components"]) - set(cfg["extract"]["sites"]["qkv"])
    if "qkv" in cfg["experiments"] and missing:
        raise ConfigError("extract.sites.qkv", f"to include the analysed components {cfg['qkv']['components']}",
                          cfg["extract"]["sites"]["qkv"])
    missing = set(SITES_NEEDED["adjustments"]) - set(cfg["extract"]["sites"]["adjustments"])
    if "adjustments" in cfg["experiments"] and missing:
        raise ConfigError("extract.sites.adjustments", f"to include {list(SITES_NEEDED['adjustments'])}",
                          cfg["extract"]["sites"]["adjustments"])
    if "adjustments" in cfg["experiments"]:
        corpus_documents(cfg["corpus"]["path"], project_root)
    n_layers = cfg["model"]["n_layers"]
    if n_layers is not None:
        for index in cfg["plot"]["qkv"]["similarity_layers"]:
            resolve_layer(index, n_layers, key="plot.qkv.similarity_layers")


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


def corpus_documents(path: str | Path, project_root: str | Path = ".") -> list[Path]:
    """The documents of a corpus: the file itself, or the sorted .txt files of a folder.

    Raises ConfigError naming `corpus.path` when it is missing, empty or has no text."""
    resolved = Path(project_root, path) if not Path(path).is_absolute() else Path(path)
    if resolved.is_file():
        documents = [resolved]
    elif resolved.is_dir():
        documents = sorted(p for p in resolved.rglob("*") if p.is_file() and p.suffix in CORPUS_SUFFIXES)
        if not documents:
            raise ConfigError("corpus.path", f"a folder holding {'/'.join(CORPUS_SUFFIXES)} files", str(path))
    else:
        raise ConfigError("corpus.path", "an existing text file or folder", str(path))
    for document in documents:
        try:
            text = document.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError("corpus.path", f"UTF-8 text files ({document} is not)", str(path)) from None
        if not text.strip():
            raise ConfigError("corpus.path", f"non-empty text files ({document} is empty)", str(path))
    return documents


def _check_schema(cfg: dict[str, Any]) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(config_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(cfg))
    if error is None:
        return
    # anyOf failures: report the sub-error on the deepest path, which names the real key
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    key = ".".join(str(part) for part in error.absolute_path) or "<root>"
    kind, rule = error.validator, error.validator_value
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        name = f"{key}.{unknown[0]}" if key != "<root>" else unknown[0]
        raise ConfigError(name, f"a known key (allowed here: {', '.join(allowed)})", has_value=False)
    expectations = {
        "required": lambda: f"the key(s) {rule}",
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
    }
    expected = expectations.get(kind, lambda: error.message)()
    raise ConfigError(key, expected, error.instance)


_TYPE_NAMES = {"array": "a list, e.g. [a,b]", "object": "a mapping, e.g. {key: value}", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "string": "a string"}


def _article(schema: dict[str, Any]) -> str:
    return "an integer" if schema.get("type") == "integer" else "a number"


def _check_template(text: str) -> None:
    fields = [field for _, field, _, _ in _parse_format(text) if field is not None]
    if fields != ["word"]:
        raise ConfigError("template.text", "a string with exactly one '{word}' placeholder and no other "
                                           "braces (write literal braces as '{{' and '}}')", text)


def _parse_format(text: str) -> list[tuple[Any, ...]]:
    try:
        return list(string.Formatter().parse(text))
    except ValueError:
        raise ConfigError("template.text", "balanced braces around '{word}'", text) from None


def _check_stimuli(categories: dict[str, list[str]]) -> None:
    if len(categories) < 2:
        raise ConfigError("stimuli.categories", "at least 2 categories (selectivity compares them)", list(categories))
    seen: dict[str, str] = {}
    for category, words in categories.items():
        key = f"stimuli.categories.{category}"
        if len(words) < 2:
            raise ConfigError(key, "at least 2 words (within-category similarity needs a pair)", words)
        for word in words:
            if not word.strip():
                raise ConfigError(key, "non-empty words", word)
            if not any(char.isprintable() for char in word):
                raise ConfigError(key, "words with at least one visible character", word)
            if word != word.strip():
                raise ConfigError(key, "words without leading or trailing spaces", word)
            if word in seen:
                where = "twice here" if seen[word] == category else f"also in {seen[word]!r}"
                raise ConfigError(key, f"each word once across all categories ({word!r} is {where})", word)
            seen[word] = category


def _check_model(model: dict[str, Any]) -> None:
    if model["random_init"] is None and model["pretrained"] is None:
        raise ConfigError("model.pretrained", "a Hugging Face hub id or a local directory (or model.random_init)",
                          has_value=False)
    if model["random_init"] is not None and model["pretrained"] is not None:
        raise ConfigError("model.pretrained", "null when model.random_init builds the weights", model["pretrained"])
