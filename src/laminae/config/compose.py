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

import functools
import hashlib
import itertools
import json
import pickle
import os
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
    experiment in `registry`, then `overrides`. The reference: Hydra composes everything anew
    (`Composer` gives the same dicts for many runs, faster)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = _checked_config_dir(config_dir)
    overrides = [str(o) for o in overrides]
    _check_override_syntax(overrides)
    overrides = _with_experiment_groups(overrides, config_dir, registry or {})
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name="laminae"):
            return _hydra_compose(overrides, config_dir)[0]
    finally:
        GlobalHydra.instance().clear()


def _checked_config_dir(config_dir: str | Path) -> Path:
    config_dir = Path(config_dir).resolve()
    if not (config_dir / "config.yaml").is_file():
        raise ConfigError("config_dir", "a folder with config.yaml", str(config_dir))
    return config_dir


def _hydra_compose(overrides: list[str], config_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hydra's composition of `overrides` (experiment groups included), resolved and as
    written (interpolations kept); Hydra initialised on `config_dir` already."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(config_name="config", overrides=overrides)
        unresolved = OmegaConf.to_container(cfg, resolve=False)
        _reject_volatile_interpolations(unresolved)
        return OmegaConf.to_container(cfg, resolve=True), unresolved  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise _one_line_error(error, overrides, config_dir) from None


#: Where `Composer` keeps composed configs between processes, under the project root.
CACHE_DIR = Path(".snakemake") / "laminae-cache"


def cache_dir(project_root: str | os.PathLike) -> Path:
    """laminae's caches between processes (composed configs, the weights' fingerprints):
    `$LAMINAE_CACHE_DIR`, else `<project root>/.snakemake/laminae-cache`. Never results."""
    return Path(os.environ.get("LAMINAE_CACHE_DIR") or Path(project_root) / CACHE_DIR)
_CACHE_FORMAT = 1
# A resolver call (`${oc.env:HOME}`, a custom resolver): its value may change between
# processes, so a config holding one is composed anew each time, never cached on disk.
_RESOLVER_CALL = re.compile(r"\$\{\s*[^}:]*:")


class Composer:
    """Compose the configs of many runs against one `conf/` tree, with the dicts
    `compose_config` gives, faster:

    - Hydra is initialised once, and each experiment's config group stored once per registry;
    - the defaults list (the config-group overrides: `model=...`, `+qkv=default`) is composed
      once per distinct set of group overrides; each run's value overrides (`a.b=c`, `+k=v`,
      `~k`) are applied to a copy with Hydra's own function (`ConfigLoaderImpl.
      _apply_overrides_to_config`), as Hydra itself applies them after composing the defaults
      list. Anything unusual (a `hydra.*` override, a failure, a sweep) goes through Hydra whole;
    - results are kept on disk, in `<cache_dir>/compose-<key>.pkl`, the key a hash of every file
      under `conf/`, each experiment's own default.yaml, this module's source and the versions of
      Hydra and OmegaConf, each entry keyed by the run's overrides and the registry's names: a
      changed file is another key, so an entry is never stale. Configs holding a resolver call
      (`${oc.env:...}`), and trees whose config.yaml names a Hydra search path, are not cached.

        >>> with Composer("conf", cache_dir=".snakemake/laminae-cache") as composer:
        ...     cfgs = [composer.compose(run, registry) for run in runs]
    """

    def __init__(self, config_dir: str | Path, cache_dir: str | Path | None = None):
        self.config_dir = _checked_config_dir(config_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._tree_key: str | None = None
        self._disk: dict[str, dict[tuple[str, ...], bytes]] = {}   # content key -> entries
        self._new: dict[str, dict[tuple[str, ...], bytes]] = {}
        self._bases: dict[tuple, Any] = {}
        self._stored: set[tuple] = set()
        self._registry_keys: dict[tuple[int, ...], str] = {}
        self._hydra = False

    def __enter__(self) -> "Composer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Write new entries to the disk cache (atomically; a failed write is ignored) and
        leave Hydra uninitialised."""
        if self._hydra:
            from hydra.core.global_hydra import GlobalHydra

            GlobalHydra.instance().clear()
            self._hydra = False
        for key, entries in self._new.items():
            if entries and self.cache_dir is not None:
                self._write(key, entries)
        self._new = {}

    def compose(self, overrides: Sequence[str], registry: Mapping[str, Experiment] | None = None) -> dict[str, Any]:
        """What `compose_config(overrides, config_dir, registry)` returns (a fresh dict)."""
        registry = registry or {}
        overrides = tuple(str(o) for o in overrides)
        key = self._content_key(registry)
        entry = (*registry, "", *overrides)
        if key is not None:
            cached = self._entries(key).get(entry)
            if cached is not None:
                return pickle.loads(cached)
        cfg = self._compose(list(overrides), registry)
        if key is not None and not _holds_resolver_call(cfg["_unresolved"]):
            self._new.setdefault(key, {})[entry] = pickle.dumps(cfg["_resolved"], protocol=pickle.HIGHEST_PROTOCOL)
        return cfg["_resolved"]

    # ---------------------------------------------------------------- composition
    def _compose(self, overrides: list[str], registry: Mapping[str, Experiment]) -> dict[str, Any]:
        import copy

        from hydra.core.global_hydra import GlobalHydra
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from omegaconf import OmegaConf

        _check_override_syntax(overrides)
        self._initialise()
        self._store_groups(registry)
        chosen, kept = _chosen_options(overrides, registry)
        full = [*(f"+{name}={chosen.get(name, 'default')}" for name in registry), *kept]
        try:
            parsed = [_parse(text) for text in full]
            if any(o.is_sweep_override() or o.key_or_group.startswith("hydra") for o in parsed):
                raise _Whole()
            repository = GlobalHydra.instance().hydra.config_loader.repository  # type: ignore[union-attr]
            groups, values = [], []
            for text, override in zip(full, parsed):
                if isinstance(override.value(), dict) or not repository.group_exists(override.key_or_group):
                    values.append(override)
                else:
                    groups.append(text)
            base_key = (tuple(id(e) for e in registry.values()), tuple(groups))
            if base_key not in self._bases:
                from hydra import compose

                base = compose(config_name="config", overrides=groups)
                unresolved = OmegaConf.to_container(base, resolve=False)
                plain = None if _holds_interpolation(unresolved) else pickle.dumps(unresolved)
                self._bases[base_key] = (base, plain)
            base, plain = self._bases[base_key]
            if plain is not None:   # no interpolation to follow a changed value: set values in plain dicts
                cfg = pickle.loads(plain)
                if all(_set_plain(cfg, override) for override in values):
                    return {"_resolved": cfg, "_unresolved": {}}
            cfg = copy.deepcopy(base)
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
            unresolved = OmegaConf.to_container(cfg, resolve=False)
            _reject_volatile_interpolations(unresolved)
            return {"_resolved": OmegaConf.to_container(cfg, resolve=True), "_unresolved": unresolved}
        except Exception:  # Hydra whole: the same config, or the same one-line error
            resolved, unresolved = _hydra_compose(full, self.config_dir)
            return {"_resolved": resolved, "_unresolved": unresolved}

    def _initialise(self) -> None:
        if not self._hydra:
            from hydra import initialize_config_dir
            from hydra.core.global_hydra import GlobalHydra

            GlobalHydra.instance().clear()
            initialize_config_dir(config_dir=str(self.config_dir), version_base="1.3", job_name="laminae")
            self._hydra = True

    def _store_groups(self, registry: Mapping[str, Experiment]) -> None:
        key = tuple(id(e) for e in registry.values())
        if key not in self._stored:
            _with_experiment_groups([], self.config_dir, registry)
            self._stored.add(key)

    # ---------------------------------------------------------------- disk cache
    def _content_key(self, registry: Mapping[str, Experiment]) -> str | None:
        """The hash of everything a composition reads besides the overrides; None: no disk cache."""
        if self.cache_dir is None:
            return None
        if self._tree_key is None:
            digest = hashlib.sha256(f"laminae-compose {_CACHE_FORMAT}".encode())
            digest.update(_code_identity())
            for path in sorted(p for p in self.config_dir.rglob("*") if p.is_file()):
                data = path.read_bytes()
                if b"searchpath" in data:   # Hydra would read another tree too
                    self.cache_dir = None
                    return None
                digest.update(f"\0{path.relative_to(self.config_dir).as_posix()}\0{len(data)}\0".encode())
                digest.update(data)
            self._tree_key = digest.hexdigest()
        ids = tuple(id(e) for e in registry.values())
        if ids in self._registry_keys:
            return self._registry_keys[ids]
        digest = hashlib.sha256(self._tree_key.encode())
        for name, experiment in registry.items():
            path = experiment.path(experiment.config) if experiment.folder is not None else None
            data = path.read_bytes() if path is not None and path.is_file() else b""
            digest.update(f"\0{name}\0{len(data)}\0".encode())
            digest.update(data)
        self._registry_keys[ids] = digest.hexdigest()[:32]
        return self._registry_keys[ids]

    def _entries(self, key: str) -> dict[tuple[str, ...], bytes]:
        if key not in self._disk:
            entries: dict[tuple[str, ...], bytes] = {}
            try:
                assert self.cache_dir is not None
                with open(self.cache_dir / f"compose-{key}.pkl", "rb") as handle:
                    loaded = pickle.load(handle)
                if isinstance(loaded, dict):
                    entries = loaded
            except Exception:   # absent, or unreadable: compose anew
                pass
            self._disk[key] = entries
        return self._disk[key]

    def _write(self, key: str, new: dict[tuple[str, ...], bytes]) -> None:
        import os
        import tempfile

        assert self.cache_dir is not None
        self._disk.pop(key, None)
        entries = {**self._entries(key), **new}    # what another process wrote meanwhile, too
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.cache_dir, prefix=f".compose-{key}.", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as out:
                    pickle.dump(entries, out, protocol=pickle.HIGHEST_PROTOCOL)
                os.chmod(temporary, 0o644)   # mkstemp's 0600 would hide it from a shared project's other users
                os.replace(temporary, self.cache_dir / f"compose-{key}.pkl")
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        except OSError:   # a read-only project: no cache, same results
            pass
        self._disk[key] = entries


@functools.lru_cache(maxsize=1)
def _code_identity() -> bytes:
    """The versions of Hydra and OmegaConf, and this module's source: what composing depends
    on besides the config tree and the overrides (part of every disk cache's key)."""
    from importlib import metadata

    parts = []
    for package in ("hydra-core", "omegaconf"):
        try:
            parts.append(f"{package} {metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            parts.append(f"{package} ?".encode())
    return b"".join([*parts, Path(__file__).read_bytes()])


class _Whole(Exception):
    """Compose this run with Hydra whole."""


@functools.lru_cache(maxsize=8192)
def _parse(text: str) -> Any:
    """One override parsed by Hydra's grammar (a sweep repeats the same strings: parsed once)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(text)


def _parse_all(overrides: Sequence[str]) -> list[Any]:
    """`OverridesParser.parse_overrides`, each override parsed once per process."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return [_parse(text) for text in overrides]
    except HydraException:
        return OverridesParser.create().parse_overrides(list(overrides))   # its own error message


def _set_plain(cfg: dict[str, Any], override: Any) -> bool:
    """Apply a plain `key=value` override (`key` an existing leaf of mappings, `value` a
    scalar) to the plain dict of an interpolation-free config, as Hydra's
    `OmegaConf.update(cfg, key, value, merge=True)` does to its untyped nodes; False (nothing
    set) for any other override, which then goes through OmegaConf."""
    from hydra.core.override_parser.types import OverrideType

    if override.type != OverrideType.CHANGE or override.package is not None:
        return False
    value = override.value()
    if not (value is None or type(value) in (str, int, float, bool)) or (isinstance(value, str) and "${" in value):
        return False
    key = override.key_or_group
    if not key or any(char in key for char in "[]$\\'\"") or "" in key.split("."):
        return False
    *parents, leaf = key.split(".")
    node: Any = cfg
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], (dict, list)):
        return False
    node[leaf] = value
    return True


def _holds_interpolation(node: Any) -> bool:
    if isinstance(node, dict):
        return any(_holds_interpolation(key) or _holds_interpolation(child) for key, child in node.items())
    if isinstance(node, list):
        return any(_holds_interpolation(child) for child in node)
    return isinstance(node, str) and "${" in node


def _holds_resolver_call(node: Any) -> bool:
    if isinstance(node, dict):
        return any(_holds_resolver_call(child) for child in node.values())
    if isinstance(node, list):
        return any(_holds_resolver_call(child) for child in node)
    return isinstance(node, str) and bool(_RESOLVER_CALL.search(node))


def experiment_packages(overrides: Sequence[str], config_dir: str | Path) -> list[str]:
    """`experiment_packages` as `conf/config.yaml` and `overrides` set it, read before
    composition: it decides which experiments, hence which config groups, exist."""
    overrides = [str(o) for o in overrides]
    path = Path(config_dir) / "config.yaml"
    root = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    value: Any = (root or {}).get("experiment_packages", [])
    if overrides:   # none: no need to import Hydra (a cluster job of a sweep may never need it)
        from hydra.core.override_parser.overrides_parser import OverridesParser

        _check_override_syntax(overrides)
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
    chosen: dict[str, str] = {}
    kept = []
    for text, override in zip(overrides, _parse_all(overrides)):
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


def expand_sweep(sweep: Iterable[str], cache_dir: str | Path | None = None) -> list[tuple[str, ...]]:
    """Hydra comma-syntax sweep overrides -> the cartesian product of single overrides.

    `["model=a,b", "template=x,y"]` gives four tuples, in row-major order (first key slowest).
    With `cache_dir`, the product is kept in `<cache_dir>/sweep-<key>.json`, the key a hash of
    the sweep, this module's source and the versions of Hydra and OmegaConf (never stale): a
    cluster job of a large sweep neither imports Hydra nor parses the sweep again.
    """
    sweep = [str(s) for s in sweep]
    path = None if cache_dir is None else Path(cache_dir) / f"sweep-{_sweep_key(sweep)}.json"
    cached = _read_sweep(path) if path is not None else None
    if cached is not None:
        return cached
    combinations = _expand_sweep(sweep)
    if path is not None:
        _write_sweep(path, combinations)
    return combinations


def _sweep_key(sweep: list[str]) -> str:
    digest = hashlib.sha256(f"laminae-sweep {_CACHE_FORMAT}".encode())
    digest.update(_code_identity())
    digest.update(json.dumps(sweep).encode())
    return digest.hexdigest()[:32]


def _read_sweep(path: Path) -> list[tuple[str, ...]] | None:
    """The cached product, or None when absent or not a list of lists of strings."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(loaded, list) or not all(isinstance(c, list) and all(isinstance(o, str) for o in c)
                                               for c in loaded):
        return None
    return [tuple(combination) for combination in loaded]


def _write_sweep(path: Path, combinations: list[tuple[str, ...]]) -> None:
    from laminae.atomic import atomic_write_text

    try:
        atomic_write_text(path, json.dumps([list(c) for c in combinations]))
    except OSError:   # a read-only project: no cache, same results
        pass


def _expand_sweep(sweep: list[str]) -> list[tuple[str, ...]]:
    """`expand_sweep` by Hydra's parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

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
    from hydra.errors import HydraException

    for override in overrides:
        try:
            _parse(override)
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
