"""The key reference: every config key with its type, default and description, read from the
schemas (the core's `schema.yaml` and each experiment's, with what laminae adds to them) and the
defaults composed from `conf/`. docs/CONFIG.md is this module's Markdown; `python -m
laminae.config` prints it as text (`--markdown` as the page), for the default config or for
overrides (`python -m laminae.config model=tiny-gpt2 experiment_packages=[examples]`).

    >>> sections = key_reference(project_root=".")
    >>> row = next(r for s in sections for r in s.rows if r.key == "qkv.n_permutations")
    >>> row.type, row.default
    ('integer >= 0', '1000')
    >>> render_markdown(project_root=".") == Path("docs/CONFIG.md").read_text()   # tests/test_config_docs.py
    True

The descriptions live in the schemas, so a key and its documentation change together; an
experiment's schema documents its own keys the same way (`description:` beside each key).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: The page's own instructions (kept out of the tables): how to regenerate it.
REGENERATE = ".venv/bin/python -m laminae.config --markdown > docs/CONFIG.md"
#: Top-level keys that are config groups with presets in conf/<group>/ (`model=<preset>`).
PRESET_GROUPS = ("model", "stimuli", "template", "corpus")
_MISSING = object()


@dataclass(frozen=True)
class KeyDoc:
    """One config key: its dotted name, what it takes, its default in conf/, what it means."""

    key: str
    type: str
    default: str
    description: str
    runtime: bool = False   # in no stage hash (laminae.config.stages.RUNTIME_KEYS)


@dataclass(frozen=True)
class Section:
    """The keys of one part of the config: the top level, a core group, or an experiment's group."""

    title: str
    intro: str
    rows: list[KeyDoc] = field(default_factory=list)


def key_reference(project_root: str | Path = ".", config_dir: str | Path | None = None,
                  overrides: Sequence[str] = ()) -> list[Section]:
    """The reference for the config composed from `config_dir` (default `<root>/conf`) with
    `overrides`: its experiments are those of the built-in package and its `experiment_packages`."""
    from laminae.config.compose import compose_config, experiment_packages, group_files
    from laminae.config.stages import RUNTIME_KEYS
    from laminae.config.validate import config_schema
    from laminae.registry import discover

    root = Path(project_root).resolve()
    config_dir = Path(config_dir) if config_dir is not None else root / "conf"
    registry = discover(experiment_packages(overrides, config_dir), root)
    cfg = compose_config(list(overrides), config_dir, registry)
    schema = config_schema(registry)
    defs = schema.get("$defs", {})
    runtime = set(RUNTIME_KEYS)
    properties = schema["properties"]

    def rows(prefix: str, node: Mapping[str, Any], value: Any) -> list[KeyDoc]:
        return _rows(prefix, node, value, defs, runtime)

    top = [name for name in properties if name not in registry and not _is_group(properties[name], defs)]
    sections = [Section("Top-level keys", "Set as `<key>=<value>`.",
                        [row for name in top for row in rows(name, properties[name], cfg.get(name, _MISSING))])]
    chosen = _chosen_presets(overrides, config_dir)
    for name, node in properties.items():
        if name in registry or name in top:
            continue
        node = _resolved(node, defs)
        intro = _escaped(_sentence(node.get("description", "")))
        if name in PRESET_GROUPS:
            presets = sorted(path.stem for path in (config_dir / name).glob("*.yaml"))
            intro += (f" Defaults below: `conf/{name}/{chosen.get(name, '?')}.yaml`; presets: "
                      f"{', '.join(f'`{p}`' for p in presets)}. Set a preset's keys as `{name}.<key>=<value>`.")
        else:
            intro += f" Defaults: `conf/{name}/{chosen.get(name, 'default')}.yaml`. Set as `{name}.<key>=<value>`."
        sections.append(Section(f"`{name}`", intro.strip(), _children(name, node, cfg.get(name), defs, runtime)))
    files = group_files(overrides, config_dir, registry)
    for name, experiment in registry.items():
        where = [f"defaults: `{_shown(files[name], root)}`"] if name in files else []
        if isinstance(experiment.schema, str):
            where.append(f"schema: `{_shown(experiment.path(experiment.schema), root)}`")
        else:
            where.append(f"schema: the `schema` of its declaration (`{experiment.module}`)")
        about = _escaped(_sentence(str(properties[name].get("description", ""))))
        intro = (f"{_escaped(experiment.title)}.{' ' + about if about else ''} Enabled by `experiments=[..., {name}]`; set as `{name}.<key>=<value>` "
                 f"({'; '.join(where)}).")
        sections.append(Section(f"`{name}` (experiment)", intro,
                                _children(name, properties[name], cfg.get(name), defs, runtime)))
    return sections


def render_text(sections: Sequence[Section]) -> str:
    """The reference as aligned plain text: one line per key."""
    lines = []
    for section in sections:
        lines += [section.title.replace("`", ""), ""]
        width = max((len(row.key) for row in section.rows), default=0)
        type_width = min(max((len(row.type) for row in section.rows), default=0), 36)
        for row in section.rows:
            description = row.description + (" [runtime: in no hash]" if row.runtime else "")
            default = f"= {row.default}" if row.default else ""
            lines.append(f"  {row.key:<{width}}  {row.type:<{type_width}}  {default:<18}  {description}".rstrip())
        lines.append("")
    return "\n".join(lines)


def render_markdown(project_root: str | Path = ".", config_dir: str | Path | None = None,
                    overrides: Sequence[str] = ()) -> str:
    """docs/CONFIG.md: the reference of the default config as Markdown tables."""
    sections = key_reference(project_root, config_dir, overrides)
    out = [
        "# Config keys",
        "",
        f"<!-- Generated from the schemas and conf/ by `{REGENERATE}`; do not edit by hand:",
        "     edit the `description` of a key in its schema (src/laminae/config/schema.yaml, an experiment's",
        "     schema), then regenerate. tests/test_config_docs.py fails while this page is out of date. -->",
        "",
        "Every key of the composed config, with the type its schema accepts, its default in `conf/` and",
        "what it does. Set keys as Hydra overrides, e.g. `snakemake --cores 2 --config",
        "'overrides=[\"model=tiny-gpt2\", \"qkv.n_permutations=200\"]'`, or sweep them with",
        "`sweep=[\"key=a,b\"]` (docs/GUIDE.md, \"Ablations and sweeps\"). A key no schema declares stops the run",
        "before any job with one line naming it. Keys marked *runtime* are in no stage hash: they change",
        "where and how fast a stage runs, not what it computes, so changing them reruns nothing.",
        "`python -m laminae.config [overrides...]` prints this reference for any composition (an",
        "experiment of `experiment_packages` included; `--markdown` for this page's form).",
        "",
    ]
    for section in sections:
        level = "###" if section.title.endswith("(experiment)") else "##"
        if section.title.endswith("(experiment)") and not any(s.startswith("## Experiments") for s in out):
            out += ["## Experiments", "",
                    "Each experiment's config group: its analysis keys are hashed by its analysis stage, "
                    "`plot.*` by its figures, `claims` by its claims stage (docs/WRITING_AN_EXPERIMENT.md, "
                    "\"What is cached\").", ""]
        out += [f"{level} {section.title.removesuffix(' (experiment)')}", "", section.intro, "",
                "| key | type | default | description |", "|---|---|---|---|"]
        for row in section.rows:
            description = row.description + (" *(runtime)*" if row.runtime else "")
            cells = [f"`{row.key}`", _cell(row.type), f"`{_cell(row.default)}`" if row.default else "",
                     _cell(description)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------ helpers
def _children(prefix: str, node: Mapping[str, Any], value: Any, defs: Mapping[str, Any],
              runtime: set[str]) -> list[KeyDoc]:
    """The rows of the keys under `prefix` (not `prefix` itself), in the order of the defaults,
    then those the schema declares that the defaults lack."""
    node = _resolved(node, defs)
    properties = dict(node.get("properties") or {})
    for branch in node.get("anyOf", ()):   # e.g. model.random_init: null or a mapping
        branch = _resolved(branch, defs)
        if branch.get("properties"):
            properties.update(branch["properties"])
    order = [key for key in (value if isinstance(value, Mapping) else {}) if key in properties]
    order += [key for key in properties if key not in order]
    found = []
    for key in order:
        child_value = value.get(key, _MISSING) if isinstance(value, Mapping) else _MISSING
        found += _rows(f"{prefix}.{key}", properties[key], child_value, defs, runtime)
    return found


def _rows(key: str, node: Mapping[str, Any], value: Any, defs: Mapping[str, Any], runtime: set[str]) -> list[KeyDoc]:
    resolved = _resolved(node, defs)
    kind = type_text({name: rule for name, rule in node.items() if name != "description"}, defs)
    children = _children(key, resolved, None if value is _MISSING else value, defs, runtime)
    default = "" if children and isinstance(value, Mapping) else _default_text(value)   # its keys have rows
    return [KeyDoc(key, kind, default, str(resolved.get("description", "")).strip(), key in runtime), *children]


def _is_group(node: Mapping[str, Any], defs: Mapping[str, Any]) -> bool:
    return bool(_resolved(node, defs).get("properties"))


def _resolved(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """`node` with a local `$ref` ("#/$defs/<name>") merged in; the node's own keys win, except
    that the referenced schema's description is kept when the node has none."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if isinstance(ref, str) and ref.startswith("#/$defs/") and ref.split("/")[-1] in defs:
        return {**_resolved(defs[ref.split("/")[-1]], defs), **node}
    return node


def type_text(node: Mapping[str, Any], defs: Mapping[str, Any] | None = None) -> str:
    """What a schema accepts, in a few words: `integer >= 0`, `pearson | spearman`, `list of q | k | v`."""
    defs = defs or {}
    node = _resolved(node, defs)
    if "enum" in node:
        return " | ".join(_scalar(value) for value in node["enum"])
    if "const" in node:
        return _scalar(node["const"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in node:
            parts = [type_text(branch, defs) for branch in node[combinator]]
            return " or ".join(dict.fromkeys(parts))
    kind = node.get("type")
    if isinstance(kind, list):
        return " or ".join(type_text({**node, "type": k}, defs) for k in kind)
    if kind in ("integer", "number"):
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        if low is not None and high is not None:
            left = "(" if "exclusiveMinimum" in node else "["
            right = ")" if "exclusiveMaximum" in node else "]"
            return f"{kind} in {left}{low}, {high}{right}"
        if low is not None:
            return f"{kind} {'>' if 'exclusiveMinimum' in node else '>='} {low}"
        if high is not None:
            return f"{kind} {'<' if 'exclusiveMaximum' in node else '<='} {high}"
        return str(kind)
    if kind == "string":
        if "pattern" in node and "description" in node:   # the description says what the pattern takes
            return f"string: {node['description']}"
        return "non-empty string" if node.get("minLength", 0) >= 1 else "string"
    if kind == "boolean":
        return "true | false"
    if kind == "null":
        return "null"
    if kind == "array":
        items = _resolved(node.get("items") or {}, defs)
        if not items:
            text = "list"
        elif items.get("type") == "object" or "properties" in items:
            text = "list of mappings"
        else:
            text = f"list of {type_text(items, defs)}"
        if node.get("minItems"):
            text += f" (at least {node['minItems']})"
        return text
    if kind == "object" or "properties" in node:
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            return f"mapping of name -> {type_text(extra, defs)}"
        return "mapping"
    return "any"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _default_text(value: Any) -> str:
    """A default as it would be written in an override (long values summarised)."""
    if value is _MISSING:
        return ""
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        text = _flow(value)
        if len(text) <= 48:
            return text
        return "{" + ", ".join(str(key) for key in value) + "}"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(item, Mapping) and "id" in item for item in value):
            return f"{len(value)} claim{'s' if len(value) > 1 else ''}: " + ", ".join(str(item["id"]) for item in value)
        text = _flow(value)
        return text if len(text) <= 48 else f"{len(value)} items"
    if isinstance(value, str):
        return value if value.strip() == value and value else json.dumps(value)
    return _scalar(value)


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, and `<`, which GitHub would take for the
    start of an HTML tag."""
    return _escaped(text).replace("|", "\\|").replace("\n", " ")


def _escaped(text: str) -> str:
    return text.replace("<", "&lt;")


def _sentence(text: str) -> str:
    text = text.strip()
    return f"{text[0].upper()}{text[1:]}{'' if text.endswith('.') else '.'}" if text else ""


def _chosen_presets(overrides: Sequence[str], config_dir: Path) -> dict[str, str]:
    """The option of each config group in `conf/config.yaml`'s defaults list, as overrides set it."""
    path = config_dir / "config.yaml"
    root = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    chosen: dict[str, str] = {}
    for entry in (root or {}).get("defaults", []):
        if isinstance(entry, Mapping):
            chosen.update({str(key): str(value) for key, value in entry.items()})
    for override in overrides:
        key, has_value, value = str(override).partition("=")
        if has_value and "." not in key and key.lstrip("+") in chosen:
            chosen[key.lstrip("+")] = value.strip()
    return chosen


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)
