"""Find the experiments a config can enable: the built-in ones (`laminae.experiments.*`) and
those of `experiment_packages`, and check each declaration before anything runs.

    >>> registry = discover(["labs/experiments", "my_lab.laminar"], project_root=Path("."))
    >>> sorted(registry)
    ['adjustments', 'norms', 'pathlength', 'qkv', 'rotations']
    >>> registry["norms"].folder
    PosixPath('/home/me/project/labs/experiments/norms')

An entry of `experiment_packages` is a folder (relative to the project root, or absolute) or an
importable module name. It is one experiment when it defines `EXPERIMENT` itself; otherwise
each of its sub-packages is one. A folder needs no installation: its packages are imported
from their files, so an experiment may split its code into modules (`from .metrics import ...`).

A declaration that breaks the contract stops the run with one line naming the experiment:

    laminae: experiment 'norms' (labs/experiments/norms): figure 'norms': caption file caption.rst not found
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import pkgutil
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from laminae.errors import ConfigError, ExperimentError, LaminaeError
from laminae.experiment import INPUT_KINDS, MEASURE_KINDS, NEEDS, Across, Experiment, Figure, Measure, Variant
from laminae.sites import SITES

BUILTIN_PACKAGE = "laminae.experiments"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: Top-level config keys of the core: an experiment's config group may not take their names.
RESERVED_NAMES = frozenset({"model", "stimuli", "template", "corpus", "extract", "plot", "experiments",
                            "experiment_packages", "device", "batch_size", "results_dir", "models_dir",
                            "sweeps", "hydra"})
HOOKS = ("plot", "analyse", "reducer", "compare", "validate", "resources", "measure")
MEASURE_PATTERN = re.compile(r"^[a-z][a-z0-9_]*(:[a-z0-9][a-z0-9_.-]*)*$")


Registry = Mapping[str, Experiment]


def discover(packages: Sequence[str] = (), project_root: str | Path = ".") -> dict[str, Experiment]:
    """Every experiment by name: built-in first, then each entry of `packages` in order."""
    return dict(_discover(tuple(packages), Path(project_root).resolve()))


@functools.lru_cache(maxsize=32)
def _discover(packages: tuple[str, ...], root: Path) -> tuple[tuple[str, Experiment], ...]:
    found: dict[str, Experiment] = {}
    for experiment in (*_from_module(BUILTIN_PACKAGE, root), *(e for p in packages for e in _from_entry(p, root))):
        if experiment.name in found:
            raise ExperimentError(experiment.name, _where(experiment, root),
                                  f"a second experiment of this name (the first is in {_where(found[experiment.name], root)})")
        found[experiment.name] = experiment
    return tuple(found.items())


def _from_entry(entry: str, root: Path) -> list[Experiment]:
    if not isinstance(entry, str) or not entry:
        raise ConfigError("experiment_packages", "folders or module names of experiments", entry)
    folder = Path(entry) if Path(entry).is_absolute() else root / entry
    if folder.is_dir():
        return _from_folder(folder, root)
    if "/" in entry or entry.startswith("."):
        raise ConfigError("experiment_packages", "existing folders (relative to the project root) or importable "
                                                 "module names", entry)
    return _from_module(entry, root)


def _from_folder(folder: Path, root: Path) -> list[Experiment]:
    """A folder that is an experiment package (its `__init__.py` defines EXPERIMENT, or it has no
    sub-packages), or a folder of experiment packages."""
    children = sorted(child for child in folder.iterdir() if (child / "__init__.py").is_file())
    if (folder / "__init__.py").is_file():
        module = _import_folder(folder, root)
        if hasattr(module, "EXPERIMENT") or not children:
            return [_checked(module, folder.name, root)]
    if not children:
        raise ConfigError("experiment_packages", f"a folder of experiment packages ({folder} holds no folder "
                                                 "with an __init__.py)", str(folder))
    return [_checked(_import_folder(child, root), child.name, root) for child in children]


def _import_folder(folder: Path, root: Path) -> ModuleType:
    """Import the package in `folder` from its files, as `laminae_plugin_<folder name>`."""
    module_name = f"laminae_plugin_{folder.name}"
    loaded = sys.modules.get(module_name)
    if loaded is not None and Path(loaded.__file__ or "").parent == folder:
        return loaded
    try:
        spec = importlib.util.spec_from_file_location(module_name, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except LaminaeError:
        sys.modules.pop(module_name, None)
        raise
    except Exception as error:
        sys.modules.pop(module_name, None)
        raise ExperimentError(folder.name, _relative(folder, root),
                              f"importing it failed: {type(error).__name__}: {error}") from None
    return module


def _from_module(name: str, root: Path) -> list[Experiment]:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and name.startswith(error.name):
            raise ConfigError("experiment_packages", "existing folders (relative to the project root) or importable "
                                                     "module names", name) from None
        raise ExperimentError(name.rsplit(".", 1)[-1], name, f"importing it failed: {error}") from None
    except LaminaeError:
        raise
    except Exception as error:
        raise ExperimentError(name.rsplit(".", 1)[-1], name, f"importing it failed: {type(error).__name__}: {error}") from None
    if hasattr(module, "EXPERIMENT"):
        return [_checked(module, name.rsplit(".", 1)[-1], root)]
    experiments = []
    for info in sorted(pkgutil.iter_modules(getattr(module, "__path__", [])), key=lambda i: i.name):
        if info.ispkg:
            experiments.extend(_from_module(f"{name}.{info.name}", root))
    return experiments


def _checked(module: ModuleType, package_name: str, root: Path) -> Experiment:
    folder = Path(module.__file__ or ".").resolve().parent
    where = _relative(folder, root)
    declared = getattr(module, "EXPERIMENT", None)
    if not isinstance(declared, Experiment):
        raise ExperimentError(package_name, where, "defines no EXPERIMENT = laminae.experiment.Experiment(...)"
                              if declared is None else f"EXPERIMENT is a {type(declared).__name__}, not an Experiment")
    experiment = replace(declared, module=module.__name__, folder=folder)
    check_declaration(experiment, where, package_name)
    return experiment


def check_declaration(experiment: Experiment, where: str, package_name: str | None = None) -> None:
    """Raise ExperimentError for the first way `experiment` breaks the contract."""
    name = experiment.name

    def fail(problem: str) -> None:
        raise ExperimentError(name if isinstance(name, str) else str(name), where, problem)

    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        fail("name must be lower case letters, digits and _ (it names a config group and folders)")
    if name in RESERVED_NAMES:
        fail(f"name {name!r} is a core config key; choose another")
    if package_name is not None and package_name != name:
        fail(f"name must equal its package's folder name {package_name!r}, so a reader finds it")
    if not isinstance(experiment.title, str) or not experiment.title.strip():
        fail("title must be a non-empty string (the report's category)")
    kinds = experiment.input_kinds
    if not kinds or any(kind not in INPUT_KINDS for kind in kinds) or len(set(kinds)) != len(kinds):
        shown = kinds[0] if len(kinds) == 1 else kinds
        fail(f"inputs must be one of {', '.join(INPUT_KINDS)}, or a tuple of distinct ones; got {shown!r}")
    sites = experiment.sites
    if isinstance(sites, str) or not sites or any(site not in SITES for site in sites) or len(set(sites)) != len(sites):
        fail(f"sites must be a non-empty tuple of distinct sites from {', '.join(SITES)}; got {sites!r}")
    if experiment.site_key is not None and (not isinstance(experiment.site_key, str)
                                            or not NAME_PATTERN.match(experiment.site_key)):
        fail(f"site_key must be the name of a key of its config group; got {experiment.site_key!r}")
    needs = experiment.needs
    if isinstance(needs, str) or any(need not in NEEDS for need in needs):
        fail(f"needs must be a tuple of names from {', '.join(NEEDS)}; got {needs!r}")
    if (experiment.analyse is None) == (experiment.reducer is None):
        fail("declare exactly one of analyse (the whole store) and reducer (streamed chunks)")
    files = experiment.metrics
    if isinstance(files, str) or not files or any(not isinstance(f, str) or not FILE_PATTERN.match(f) for f in files):
        fail(f"metrics must be a non-empty tuple of file names (no folders); got {files!r}")
    if len(set(files)) != len(files) or "config.yaml" in files:
        fail("metrics names must be distinct and not config.yaml (laminae writes that)")
    if isinstance(experiment.figures, (str, bytes)) or not experiment.figures:
        fail("figures must be a non-empty tuple of Figure(name, caption, label)")
    _check_figures(experiment, experiment.figures, fail)
    variant_names = []
    for variant in experiment.variants:
        if not isinstance(variant, Variant) or not callable(variant.when):
            fail(f"variants must hold Variant(name, when=callable, metrics, figures); got {variant!r}")
        if not NAME_PATTERN.match(variant.name) or variant.name in ("analysis", "figures", "compare"):
            fail(f"variant name {variant.name!r} must be lower case letters, digits and _, not a stage name")
        variant_names.append(variant.name)
        if any(not isinstance(f, str) or not FILE_PATTERN.match(f) for f in variant.metrics):
            fail(f"variant {variant.name!r}: metrics must be file names; got {variant.metrics!r}")
        _check_figures(experiment, variant.figures, fail)
    every_file = experiment.metrics_for(tuple(variant_names))
    every_figure = [figure.name for figure in experiment.figures_for(tuple(variant_names))]
    if len(set(variant_names)) != len(variant_names) or len(set(every_file)) != len(every_file) \
            or len(set(every_figure)) != len(every_figure) or "config.yaml" in every_file:
        fail("variant names, metrics files and figure names must all be distinct (and no file is config.yaml)")
    if experiment.compare_caption is not None:
        _check_file(experiment, experiment.compare_caption, "compare_caption file", fail)
    for hook in HOOKS:
        target = getattr(experiment, hook)
        if target is None or callable(target):
            continue
        if not isinstance(target, str) or target.count(":") != 1:
            fail(f"hook {hook} must be a callable or a 'module:function' string; got {target!r}")
        module_name = target.split(":")[0]
        try:
            spec = importlib.util.find_spec(module_name, package=experiment.module or None)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            fail(f"hook {hook} = {target!r}: no module {module_name!r}")
    _check_measures(experiment, fail)
    _check_across(experiment, fail)
    if not isinstance(experiment.version, int) or experiment.version < 1:
        fail(f"version must be an integer >= 1; got {experiment.version!r}")
    load_schema(experiment, where)


def _check_measures(experiment: Experiment, fail) -> None:
    """`measures` is a tuple of distinct Measure(name, what, kind), declared exactly when the
    `measure` hook is."""
    measures = experiment.measures
    if isinstance(measures, (str, bytes)) or not isinstance(measures, (tuple, list)):
        fail(f"measures must be a tuple of Measure(name, what, kind); got {measures!r}")
    if (experiment.measure is None) != (not measures):
        fail("declare measures together with the measure hook (its names), or neither")
    for measure in measures:
        if not isinstance(measure, Measure):
            fail(f"measures must hold Measure(name, what, kind); got {measure!r}")
        if not isinstance(measure.name, str) or not MEASURE_PATTERN.match(measure.name):
            fail(f"measure name {measure.name!r} must be lower case letters, digits and _, with optional "
                 "':'-separated qualifiers (e.g. 'rsa:q-k')")
        if measure.kind not in MEASURE_KINDS:
            fail(f"measure {measure.name!r}: kind must be one of {', '.join(MEASURE_KINDS)}; got {measure.kind!r}")
        if not isinstance(measure.what, str) or not measure.what.strip():
            fail(f"measure {measure.name!r}: what must say what it is (a non-empty string)")
    names = [measure.name for measure in measures]
    if len(set(names)) != len(names):
        fail("measure names must be distinct")


def _check_across(experiment: Experiment, fail) -> None:
    """`across`: None or an Across whose metrics are file names and whose figures have captions,
    none clashing with the experiment's own; its hooks 'module:function' strings or callables."""
    across = experiment.across
    if across is None:
        return
    if not isinstance(across, Across):
        fail(f"across must be Across(analyse, plot, metrics, figures); got {across!r}")
    files = across.metrics
    if isinstance(files, str) or not files or any(not isinstance(f, str) or not FILE_PATTERN.match(f) for f in files):
        fail(f"across metrics must be a non-empty tuple of file names; got {files!r}")
    if isinstance(across.figures, (str, bytes)) or not across.figures:
        fail("across figures must be a non-empty tuple of Figure(name, caption, label)")
    _check_figures(experiment, across.figures, fail)
    for name in ("analyse", "plot"):
        target = getattr(across, name)
        if not callable(target) and (not isinstance(target, str) or target.count(":") != 1):
            fail(f"across {name} must be a callable or a 'module:function' string; got {target!r}")


def _check_figures(experiment: Experiment, figures, fail) -> None:
    for figure in figures:
        if not isinstance(figure, Figure):
            fail(f"figures must hold Figure(name, caption, label); got {figure!r}")
        if not FILE_PATTERN.match(figure.name) or "." in figure.name:
            fail(f"figure name {figure.name!r} must be a file stem (no folder, no extension)")
        _check_file(experiment, figure.caption, f"figure {figure.name!r}: caption file", fail)
        if not isinstance(figure.label, str) or not figure.label.strip():
            fail(f"figure {figure.name!r}: label must be a non-empty string")


def load_schema(experiment: Experiment, where: str | None = None) -> dict[str, Any]:
    """The JSON schema of the experiment's config group (a mapping, from its file or as given)."""
    where = where or str(experiment.folder)
    schema = experiment.schema
    if isinstance(schema, str):
        path = experiment.path(schema)
        if not path.is_file():
            raise ExperimentError(experiment.name, where, f"schema file {schema} not found")
        try:
            schema = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ExperimentError(experiment.name, where, f"schema file {schema} is not YAML: {error}") from None
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        raise ExperimentError(experiment.name, where, "schema must be a JSON schema of an object (type: object)")
    return dict(schema)


def default_config(experiment: Experiment, config_dir: Path) -> Path | None:
    """The file of the experiment's config group's defaults: the project's
    `conf/<name>/default.yaml` when it exists (None: Hydra finds it there), else the one in the
    experiment's folder."""
    if (config_dir / experiment.name / "default.yaml").is_file():
        return None
    path = experiment.path(experiment.config)
    if not path.is_file():
        raise ExperimentError(experiment.name, str(experiment.folder),
                              f"no config group: neither conf/{experiment.name}/default.yaml nor {experiment.config} "
                              "in its folder")
    return path


def _check_file(experiment: Experiment, relative: Any, what: str, fail) -> None:
    if not isinstance(relative, str) or not experiment.path(relative).is_file():
        fail(f"{what} {relative} not found in {experiment.folder}")


def _relative(folder: Path, root: Path) -> str:
    try:
        return str(folder.relative_to(root))
    except ValueError:
        return str(folder)


def _where(experiment: Experiment, root: Path) -> str:
    return _relative(experiment.folder, root)
