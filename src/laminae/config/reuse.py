"""A store on disk that already holds what a run's extraction would: the run reads it instead of
running the model again.

An extraction is named by what determines its activations (model, inputs, position policy,
storage dtype) plus the sites it stores and the reductions it computes. A store of the same
model and inputs that holds every site a run needs (and every reduction, with the same
settings) has the same activations: running `experiments=[rotations]` after the default
experiments, or `experiments=[qkv]` after `experiments=[qkv,cka]`, reads the store they made.

    >>> stage = covering_store(planned, registry)   # a Stage on disk, or None: run `planned`
    >>> stage.hash                                  # what every analysis of the run records as upstream

Rules (so that what a run reads stays unambiguous and bit for bit what it would compute):
- only complete stores count (`activations/config.yaml` is written last, by the atomic rename),
  whose recorded config hashes to their folder's name;
- a store made with eager attention (one that captured `pattern`) serves only runs that capture
  `pattern` too, and no other: eager and fast attention kernels round differently;
- among several, the one with the fewest sites and reductions, then the smallest hash;
- the run's own store, when it exists, is its own.

The process that builds the DAG decides; its cluster jobs, which plan the sweep again while
other jobs write stores, read its decisions back instead of deciding again (`StoreChoices`),
so that every job finds the stage it was submitted for:

    >>> choices = StoreChoices.deciding(record)      # the DAG: decide, then choices.save()
    >>> choices = StoreChoices.recorded(record)      # a job: the DAG's decisions, nothing new
    >>> stage = choices.choose(planned, registry)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from laminae.config.keys import stable_hash
from laminae.experiment import Experiment

if TYPE_CHECKING:
    from laminae.config.stages import Stage

#: what may differ between the planned extraction and a store that covers it
CONTENTS = ("sites", "reductions")
_RECORDS: dict[str, tuple[tuple[int, int], tuple[str, dict[str, Any]] | None]] = {}   # path -> (stat, parsed)


def covering_store(planned: Stage, registry: Mapping[str, Experiment]) -> Stage | None:
    """An existing store that covers the planned extraction stage, as a Stage; None when its own
    store exists or none covers it."""
    if (planned.output_dir / "config.yaml").is_file():
        return None
    label = planned.dir.name[: -len(planned.hash) - 1]
    config = planned.config
    identity = {key: value for key, value in config.items() if key not in CONTENTS}
    sites, reductions = set(config["sites"]), config["reductions"]
    eager = reads_pattern(config, registry)
    best: tuple[tuple[int, str], str, dict[str, Any]] | None = None
    for digest, stored in stores(planned.dir.parent, label):
        if {k: v for k, v in stored.items() if k not in CONTENTS} != identity \
                or not sites <= set(stored.get("sites", ())) \
                or any(stored.get("reductions", {}).get(name) != reduction for name, reduction in reductions.items()) \
                or reads_pattern(stored, registry) != eager:
            continue
        key = (len(stored["sites"]) + len(stored["reductions"]), digest)
        if best is None or key < best[0]:
            best = (key, digest, stored)
    return None if best is None else _stage_of(planned, best[1], best[2])


def _stage_of(planned: Stage, digest: str, config: dict[str, Any]) -> Stage:
    """The Stage of the store `<label>-<digest>` beside the planned one, with its recorded config."""
    label = planned.dir.name[: -len(planned.hash) - 1]
    return dataclasses.replace(planned, config=copy.deepcopy(config), hash=digest,
                               dir=planned.dir.parent / f"{label}-{digest}")


@dataclass
class StoreChoices:
    """Which existing store each planned extraction reads: `{planned hash: store hash}`."""

    decide: bool = True                      # False: only the recorded choices (a job)
    record: Path | None = None               # where the choices are kept between DAG and jobs
    chosen: dict[str, str] = field(default_factory=dict)

    @classmethod
    def deciding(cls, record: Path | None = None) -> "StoreChoices":
        return cls(decide=True, record=record)

    @classmethod
    def recorded(cls, record: Path) -> "StoreChoices":
        """The DAG's choices; none (every run reads its own store) when it recorded none."""
        try:
            chosen = json.loads(Path(record).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            chosen = {}
        return cls(decide=False, record=record, chosen=chosen if isinstance(chosen, dict) else {})

    def choose(self, planned: Stage, registry: Mapping[str, Experiment]) -> Stage:
        """`planned`, or the store on disk it reads instead."""
        if self.decide:
            found = covering_store(planned, registry)
            if found is None:
                self.chosen.pop(planned.hash, None)
                return planned
            self.chosen[planned.hash] = found.hash
            return found
        digest = self.chosen.get(planned.hash)
        if digest is None:
            return planned
        store = _stage_of(planned, digest, {})
        recorded = _record(store.output_dir / "config.yaml")
        return planned if recorded is None or recorded[0] != digest else _stage_of(planned, digest, recorded[1])

    def save(self) -> None:
        """Write the choices for the jobs (atomically), when deciding with a record."""
        if self.decide and self.record is not None:
            from laminae.atomic import atomic_write_text

            Path(self.record).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(self.record), json.dumps(self.chosen, sort_keys=True))


def reads_pattern(config: Mapping[str, Any], registry: Mapping[str, Experiment]) -> bool:
    """Whether an extraction captures `pattern` (and so runs with eager attention): stored, or
    read by a reduction computed during it."""
    if "pattern" in config.get("sites", ()):
        return True
    for name, reduction in config.get("reductions", {}).items():
        experiment = registry.get(name)
        if experiment is None or "pattern" in experiment.for_config({name: reduction.get("settings", {})}).sites:
            return True   # an experiment no longer known: counted as eager, so never reused for others
    return False


def stores(parent: Path, label: str) -> list[tuple[str, dict[str, Any]]]:
    """(hash, stage config) of every complete store `<parent>/<label>-<hash>/activations`; each
    record is parsed once per state of its file (mtime and size), so a sweep's runs read it once."""
    try:
        folders = sorted(entry.name for entry in os.scandir(parent) if entry.name.startswith(f"{label}-"))
    except OSError:
        return []
    found = []
    for name in folders:
        parsed = _record(parent / name / "activations" / "config.yaml")
        if parsed is not None and name == f"{label}-{parsed[0]}":
            found.append(parsed)
    return found


def _record(path: Path) -> tuple[str, dict[str, Any]] | None:
    """(hash, config) of a store's config.yaml when its config hashes to its hash; else None."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    stamp = (status.st_mtime_ns, status.st_size)
    cached = _RECORDS.get(str(path))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        stage = yaml.safe_load(path.read_text(encoding="utf-8"))
        digest, config = stage["hash"], stage["config"]
        parsed = (digest, config) if stable_hash(config) == digest else None
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        parsed = None
    _RECORDS[str(path)] = (stamp, parsed)
    return parsed
