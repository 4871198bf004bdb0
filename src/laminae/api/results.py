"""Every run found in a results folder, as a table, without running or importing a model.

A run is one analysis: an experiment's `analysis-<hash>/` folder (model x inputs x experiment x
settings), with the extraction it reads and its figure and claims folders beside it:

    results/<model>/<inputs kind>/<label>-<hash>/activations/              the extraction (shared)
                                  .../<experiment>/analysis-<hash>/metrics/  the run
                                  .../analysis-<hash>/plot-<hash>/figures/   its figures
                                  .../analysis-<hash>/claims-<hash>/claims/  its claims

    >>> table = results("results")                                # pandas DataFrame, one row per run
    >>> run = load(table.run[0])                                  # laminae.api.run.load: the run object
    >>> list(table.columns)[:8]
    ['run', 'model', 'revision', 'inputs', 'experiment', 'settings', 'status', 'size']
    >>> results("results", model="tiny-gpt2", experiment="qkv")   # filters: any column, or any setting
    >>> results("results", **{"qkv.n_permutations": 20})           # a key of the run's config
    >>> results("results", inputs="stimuli/*")                     # shell wildcards on text

Columns: `run` (the analysis hash: `load(run)` opens it), `model`, `revision` (the weights'
revision the extraction loaded), `inputs` (`<kind>/<label>`), `experiment`, `settings` (the
config keys in which this run differs from the other runs of its model and experiment, e.g.
`qkv.n_permutations=20`), `status` (`complete`, or `partial`: a folder still being written or
left by a crash, a stage without its `config.yaml`, an analysis without figures), `size`
(bytes of the analysis folder, figures and claims included), `store_size` (bytes of the
extraction's `activations/`, shared by the experiments on those inputs), `date` (the newest
`config.yaml` of the run), `claims` (e.g. `2 hold, 1 fail`), `holds`, `fails`, `undecided`,
`not_applicable` (counts; missing when no claims were judged), and the paths `path` (the
analysis folder), `activations`, `metrics`, `figures`, `claims_dir` (the newest complete figure
and claims folders when several settings made several). An extraction without any analysis is
listed too (`experiment` empty, `partial`).

Only `config.yaml` files, claims tables and folder listings are read: a table of a results
folder holding terabytes of activations takes well under a second per hundred runs.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laminae.errors import LaminaeError
from laminae.experiment import INPUT_KINDS
from laminae.provenance import read_stage_record

if TYPE_CHECKING:  # pandas only when a table is made
    import pandas as pd

CONFIG_FILE = "config.yaml"
#: The columns of `results()`, in order.
COLUMNS = ("run", "model", "revision", "inputs", "experiment", "settings", "status", "size", "store_size", "date",
           "claims", "holds", "fails", "undecided", "not_applicable",
           "path", "activations", "metrics", "figures", "claims_dir")
VERDICT_COLUMNS = {"holds": "hold", "fails": "fail", "undecided": "undecided", "not applicable": "n/a"}
#: Keys of a stage config that are bookkeeping, not settings.
BOOKKEEPING = ("stage", "version", "upstream", "inputs", "reductions", "files_digest")
#: Folders under the results folder that hold no model's runs.
NOT_MODELS = ("sweeps",)


class RunNotFoundError(LaminaeError):
    """No run, or several, answer to an id."""


@dataclass
class FoundRun:
    """One run on disk (one row of `results()`); `settings` holds every config key of the run,
    flat (`qkv.n_permutations` -> "20"), for filtering."""

    run: str
    model: str
    revision: str
    inputs: str
    experiment: str
    status: str
    size: int
    store_size: int
    date: datetime | None
    verdicts: dict[str, int] | None
    path: Path
    activations: Path
    metrics: Path | None
    figures: Path | None
    claims_dir: Path | None
    settings: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)   # why partial
    differing: tuple[str, ...] = ()                     # the keys in `settings` this run differs in

    @property
    def settings_text(self) -> str:
        return " ".join(f"{key}={self.settings[key]}" for key in self.differing if key in self.settings)

    @property
    def claims_text(self) -> str:
        if self.verdicts is None:
            return ""
        return ", ".join(f"{n} {VERDICT_COLUMNS[v]}" for v, n in self.verdicts.items() if n) or "none judged"

    def row(self) -> dict[str, Any]:
        counts = self.verdicts or {}
        return {
            "run": self.run, "model": self.model, "revision": self.revision, "inputs": self.inputs,
            "experiment": self.experiment, "settings": self.settings_text, "status": self.status,
            "size": self.size, "store_size": self.store_size, "date": self.date, "claims": self.claims_text,
            **{column.replace(" ", "_"): (counts.get(column) if self.verdicts is not None else None)
               for column in VERDICT_COLUMNS},
            "path": str(self.path), "activations": str(self.activations),
            "metrics": _text_path(self.metrics), "figures": _text_path(self.figures),
            "claims_dir": _text_path(self.claims_dir),
        }


def results(results_dir: str | Path = "results", **filters: Any) -> "pd.DataFrame":
    """Every run under `results_dir` as a DataFrame (columns: `COLUMNS`, see the module
    docstring), newest first; `filters` keep the runs whose column, or config key, equals the
    value (a list: any of them; text with `*`, `?` or `[`: a shell pattern).

        >>> results("results", experiment="qkv", status="complete")[["run", "model", "settings"]]
    """
    import pandas as pd

    found = select(find_runs(results_dir), filters)
    table = pd.DataFrame([run.row() for run in found], columns=list(COLUMNS))
    table["date"] = pd.to_datetime(table["date"])
    for column in VERDICT_COLUMNS:
        name = column.replace(" ", "_")
        table[name] = table[name].astype("Int64")
    table.attrs["results_dir"] = str(results_dir)
    return table


def find_runs(results_dir: str | Path = "results") -> list[FoundRun]:
    """Every run under `results_dir` (a missing folder holds none), newest first, each with the
    settings it differs in from the other runs of its model and experiment."""
    root = Path(results_dir)
    if root.exists() and not root.is_dir():
        raise LaminaeError(f"results folder '{root}' is not a folder")
    found: list[FoundRun] = []
    for model_dir in _folders(root):
        if model_dir.name in NOT_MODELS:
            continue
        for kind in INPUT_KINDS:
            for extraction in _folders(model_dir / kind):
                found += _runs_of_extraction(extraction, model_dir.name, kind)
    _mark_differences(found)
    found.sort(key=lambda run: (run.date or datetime.min, run.run), reverse=True)
    return found


def select(found: Iterable[FoundRun], filters: Mapping[str, Any]) -> list[FoundRun]:
    """The runs matching every filter (see `results`); an unknown key is a one-line error."""
    found = list(found)
    for key, wanted in filters.items():
        column = key.replace(" ", "_")
        if column not in COLUMNS and not any(key in run.settings for run in found):
            known = ", ".join(COLUMNS)
            raise LaminaeError(f"no column or config key {key!r} to filter runs by (columns: {known}; "
                               "or a config key such as qkv.n_permutations)")
        values = list(wanted) if isinstance(wanted, (list, tuple, set)) else [wanted]
        found = [run for run in found if any(_matches(_value_of(run, column, key), value) for value in values)]
    return found


# ------------------------------------------------------------------------------ discovery
def _runs_of_extraction(extraction: Path, model: str, kind: str) -> list[FoundRun]:
    activations = extraction / "activations"
    record = read_stage_record(activations / CONFIG_FILE)
    label, _, digest = extraction.name.rpartition("-")
    loaded = record.get("loaded_model") or {}
    config = record.get("config") or {}
    revision = loaded.get("revision") or (config.get("model") or {}).get("revision") or ""
    base_settings = flatten({k: v for k, v in config.items() if k not in BOOKKEEPING})
    store_problems = [] if record else [f"'{activations}' has no {CONFIG_FILE} (not finished)"]
    store_problems += [f"'{tmp}' is being written or was left by a crash" for tmp in _temporary(extraction)]
    store_size = folder_size(activations)
    runs = []
    for experiment_dir in _folders(extraction):
        if experiment_dir.name in ("activations", "shards"):
            continue
        for analysis in _folders(experiment_dir):
            if not analysis.name.startswith("analysis-"):
                continue
            runs.append(_run_of_analysis(analysis, experiment_dir.name.split("+")[0], model, kind, label,
                                         str(revision), base_settings, store_problems, store_size, activations))
    if not runs:
        dates = [p.stat().st_mtime for p in (activations / CONFIG_FILE,) if p.is_file()]
        runs.append(FoundRun(
            run=digest, model=model, revision=str(revision), inputs=f"{kind}/{label}", experiment="",
            status="partial", size=0, store_size=store_size, date=datetime.fromtimestamp(max(dates)) if dates else None,
            verdicts=None, path=extraction, activations=activations, metrics=None, figures=None, claims_dir=None,
            settings=dict(base_settings), problems=[*store_problems, "no analysis of this extraction"]))
    return runs


def _run_of_analysis(analysis: Path, experiment: str, model: str, kind: str, label: str, revision: str,
                     base_settings: dict[str, str], store_problems: list[str], store_size: int,
                     activations: Path) -> FoundRun:
    metrics = analysis / "metrics"
    record = read_stage_record(metrics / CONFIG_FILE)
    settings = dict(base_settings)
    config = record.get("config") or {}
    settings.update(flatten({k: v for k, v in config.items() if k not in BOOKKEEPING}))
    problems = list(store_problems)
    if not record:
        problems.append(f"'{metrics}' has no {CONFIG_FILE} (not finished)")
    problems += [f"'{tmp}' is being written or was left by a crash" for tmp in _temporary(analysis)]
    figures, figure_problems = newest_complete(analysis, "plot-", "figures")
    claims_dir, claims_problems = newest_complete(analysis, "claims-", "claims")
    problems += figure_problems + claims_problems
    if figures is None and not figure_problems:
        problems.append(f"'{analysis}' has no figures")
    for stage_dir, kind_name in ((figures, "plot"), (claims_dir, "claims")):
        if stage_dir is not None:   # the plot and claims keys, for filters and differences
            stage_config = read_stage_record(stage_dir / CONFIG_FILE).get("config") or {}
            extra = {k: v for k, v in stage_config.items() if k not in BOOKKEEPING and k != "experiment_version"}
            settings.update({key: value for key, value in flatten(extra).items() if key not in settings})
    verdicts = _verdicts(claims_dir / "claims.tsv") if claims_dir is not None else None
    dates = [p.stat().st_mtime for d in (metrics, figures, claims_dir) if d is not None
             for p in (d / CONFIG_FILE,) if p.is_file()]
    return FoundRun(
        run=analysis.name.split("-", 1)[1], model=model, revision=revision, inputs=f"{kind}/{label}",
        experiment=experiment, status="partial" if problems else "complete", size=folder_size(analysis),
        store_size=store_size, date=datetime.fromtimestamp(max(dates)) if dates else None, verdicts=verdicts,
        path=analysis, activations=activations, metrics=metrics if metrics.is_dir() else None, figures=figures,
        claims_dir=claims_dir, settings=settings, problems=problems)


def newest_complete(analysis: Path, prefix: str, output: str) -> tuple[Path | None, list[str]]:
    """The newest `<prefix><hash>/<output>/` under `analysis` that holds its config.yaml, and
    what is unfinished among them (a folder without config.yaml, a temporary sibling)."""
    complete: list[tuple[float, Path]] = []
    problems: list[str] = []
    for stage_dir in _folders(analysis):
        if not stage_dir.name.startswith(prefix):
            continue
        config = stage_dir / output / CONFIG_FILE
        if config.is_file():
            complete.append((config.stat().st_mtime, stage_dir / output))
        else:
            problems.append(f"'{stage_dir / output}' has no {CONFIG_FILE} (not finished)")
        problems += [f"'{tmp}' is being written or was left by a crash" for tmp in _temporary(stage_dir)]
    return (max(complete)[1] if complete else None), problems


def _verdicts(path: Path) -> dict[str, int] | None:
    from laminae.store import read_tsv

    if not path.is_file():
        return None
    counts = dict.fromkeys(VERDICT_COLUMNS, 0)
    for row in read_tsv(path):
        if row.get("verdict") in counts:
            counts[row["verdict"]] += 1
    return counts


def _mark_differences(found: list[FoundRun]) -> None:
    """Each run's `differing`: the keys whose values differ among the runs of its model and
    experiment (the keys a run lacks do not count)."""
    groups: dict[tuple[str, str], list[FoundRun]] = {}
    for run in found:
        groups.setdefault((run.model, run.experiment), []).append(run)
    for members in groups.values():
        keys: dict[str, set[str]] = {}
        for run in members:
            for key, value in run.settings.items():
                keys.setdefault(key, set()).add(value)
        differing = tuple(key for key, values in keys.items() if len(values) > 1 and key != "model.name")
        for run in members:
            run.differing = differing


# ------------------------------------------------------------------------------ helpers
def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys and text values (lists inline, as YAML writes them).

        >>> flatten({"qkv": {"n_permutations": 20, "zscore": False}, "sites": ["q", "k"]})
        {'qkv.n_permutations': '20', 'qkv.zscore': 'false', 'sites': '[q, k]'}
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value_text(value)
    return flat


def value_text(value: Any) -> str:
    """A config value as a filter compares it: YAML's spelling (`true`, `null`, `[a, b]`)."""
    import yaml

    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def folder_size(folder: Path) -> int:
    """Bytes of the files under `folder` (links not followed; 0 when missing)."""
    total = 0
    if not folder.is_dir():
        return 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _folders(parent: Path) -> list[Path]:
    """Visible subfolders, sorted (temporary `.name.tmp-<pid>` siblings are hidden)."""
    try:
        return sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _temporary(parent: Path) -> list[Path]:
    try:
        return sorted(p for p in parent.iterdir() if p.name.startswith(".") and ".tmp-" in p.name)
    except OSError:
        return []


def _value_of(run: FoundRun, column: str, key: str) -> Any:
    if column in COLUMNS:
        return run.row()[column]
    return run.settings.get(key)


def _matches(actual: Any, wanted: Any) -> bool:
    if actual is None:
        return wanted is None
    actual_text = value_text(actual) if not isinstance(actual, (datetime, str)) else str(actual)
    wanted_text = value_text(wanted) if not isinstance(wanted, str) else wanted
    if actual_text == wanted_text:
        return True
    return any(c in wanted_text for c in "*?[") and fnmatch.fnmatchcase(actual_text, wanted_text)


def _text_path(path: Path | None) -> str | None:
    return None if path is None else str(path)
