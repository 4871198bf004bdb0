"""Stores on disk that already hold what a run's extraction would: the run reads them instead of
running the model again, and forwards the model only for what none of them holds.

An extraction is named by what determines its activations (model, inputs, position policy,
storage dtype) plus the sites it stores and the reductions it computes. Stores of the same model,
weights and inputs hold the same activations for the sites they share, so:

- a store that holds every site and reduction a run needs is read as it is (`covering_store`):
  `experiments=[rotations]` after the default experiments, `experiments=[qkv]` after
  `experiments=[qkv,cka]`;
- otherwise, when stores hold some of them, the run's extraction becomes a store that computes
  only the rest and links the others (`composite_store`): its layer files hold the new sites and
  HDF5 virtual datasets over the sites stored before (`laminae.store.link_stored`), and it copies
  the reductions computed before. A new site costs one forward pass that captures that site only,
  and the run still reads one store, whose `reused` key records where each reused part comes from:

    >>> stage = choices.choose(planned, registry)    # planned, a store on disk, or a composite
    >>> stage.config["reused"]                       # a composite: what it links, and from where
    {'sites': {'q': '3fa9c2d1e0', 'k': '3fa9c2d1e0', 'v': '3fa9c2d1e0'}, 'reductions': {}}

Rules (so that what a run reads stays unambiguous and bit for bit what it would compute):
- only complete stores count (`activations/config.yaml` is written last, by the atomic rename),
  whose recorded config hashes to their folder's name, whose recorded weights are the model's
  weights now (`laminae.models.fingerprint`), and whose own reused parts are still on disk;
- a store made with eager attention (one that captured `pattern`) serves only runs that capture
  `pattern` too, and no other: eager and fast attention kernels round differently (a composite's
  own forward pass runs with the kernel its run would have used);
- a covering store before a composite; among covering stores, the fewest sites and reductions,
  then the smallest hash; a composite links each part from the store that computed it (never
  through another composite), preferring the stores that hold the most of what the run needs;
- the run's own store, when it exists, is its own.

The process that builds the DAG decides; its cluster jobs, which plan the sweep again while
other jobs write stores, read its decisions back instead of deciding again (`StoreChoices`),
so that every job finds the stage it was submitted for:

    >>> choices = StoreChoices.deciding(record, weights)   # the DAG: decide, then choices.save()
    >>> choices = StoreChoices.recorded(record)            # a job: the DAG's decisions, nothing new
    >>> stage = choices.choose(planned, registry)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from laminae.config.keys import stable_hash
from laminae.experiment import Experiment

if TYPE_CHECKING:
    from laminae.config.stages import Stage

#: what may differ between the planned extraction and a store that serves it
CONTENTS = ("sites", "reductions", "reused")
#: the weights' fingerprint of a model config (laminae.models.fingerprint), None when unknown
Weights = Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class StoredExtraction:
    """A complete store on disk: its hash, its stage config and the weights it was made from."""

    hash: str
    config: dict[str, Any]
    weights: str | None = None

    def origin(self, part: str, name: str) -> str:
        """The hash of the store that computed `name` (a site: part "sites"; a reduction:
        "reductions"): this one, or the one it reused it from."""
        return self.config.get("reused", {}).get(part, {}).get(name, self.hash)


_RECORDS: dict[str, tuple[tuple[int, int], StoredExtraction | None]] = {}   # path -> (stat, parsed)


def covering_store(planned: Stage, found: list[StoredExtraction]) -> Stage | None:
    """The store among `found` (`candidates`) that holds everything the planned extraction
    would, as a Stage; None when none does."""
    sites, reductions = set(planned.config["sites"]), planned.config["reductions"]
    best = None
    for store in found:
        if sites <= set(store.config["sites"]) and all(store.config["reductions"].get(name) == reduction
                                                         for name, reduction in reductions.items()):
            key = (len(store.config["sites"]) + len(store.config["reductions"]), store.hash)
            if best is None or key < best[0]:
                best = (key, store)
    return None if best is None else _stage_of(planned, best[1].hash, best[1].config)


def composite_store(planned: Stage, found: list[StoredExtraction]) -> Stage | None:
    """The planned extraction as a store that computes only what none of `found` (`candidates`)
    holds and links the rest (module docstring); None when none holds any of it."""
    wanted = [("sites", site) for site in planned.config["sites"]] + \
             [("reductions", name) for name in planned.config["reductions"]]

    def holds(store: StoredExtraction, part: str, name: str) -> bool:
        if part == "sites":
            return name in store.config["sites"]
        return store.config["reductions"].get(name) == planned.config["reductions"][name]

    found = sorted(found, key=lambda store: (-sum(holds(store, *item) for item in wanted), store.hash))
    reused: dict[str, dict[str, str]] = {"sites": {}, "reductions": {}}
    for part, name in wanted:
        store = next((store for store in found if holds(store, part, name)), None)
        if store is not None:
            reused[part][name] = store.origin(part, name)
    if not reused["sites"] and not reused["reductions"]:
        return None
    return reusing(planned, reused)


def reusing(planned: Stage, reused: Mapping[str, Mapping[str, str]]) -> Stage:
    """The planned extraction stage, reusing `reused` ({"sites": {site: store hash},
    "reductions": {experiment: store hash}}): the same config plus `reused`, hashed again."""
    config = copy.deepcopy(planned.config)
    config["reused"] = {part: dict(sorted(reused.get(part, {}).items())) for part in ("sites", "reductions")}
    return _stage_of(planned, stable_hash(config), config)


def reused_stores(stage: Stage) -> list[Path]:
    """The store folders (`.../<label>-<hash>/activations`) a composite extraction links; [] for
    any other stage."""
    origins = {digest for part in stage.config.get("reused", {}).values() for digest in part.values()}
    return [_stage_of(stage, digest, {}).output_dir for digest in sorted(origins)]


def candidates(planned: Stage, registry: Mapping[str, Experiment], weights: Weights | None = None
               ) -> list[StoredExtraction]:
    """The complete stores beside the planned one that hold activations of the same model,
    weights and inputs, computed with the same attention kernel (module docstring)."""
    label = _label(planned)
    identity = {key: value for key, value in planned.config.items() if key not in CONTENTS}
    eager = reads_pattern(planned.config, registry)
    found = stores(planned.dir.parent, label)
    on_disk = {store.hash for store in found}
    current = weights(planned.config["model"]) if weights is not None and any(s.weights for s in found) else None
    return [store for store in found
            if {k: v for k, v in store.config.items() if k not in CONTENTS} == identity
            and reads_pattern(store.config, registry) == eager
            and all(digest in on_disk for part in store.config.get("reused", {}).values() for digest in part.values())
            and (current is None or store.weights is None or store.weights == current)]


def _label(stage: Stage) -> str:
    return stage.dir.name[: -len(stage.hash) - 1]


def _stage_of(planned: Stage, digest: str, config: dict[str, Any]) -> Stage:
    """The Stage of the store `<label>-<digest>` beside the planned one, with its config."""
    return dataclasses.replace(planned, config=copy.deepcopy(config), hash=digest,
                               dir=planned.dir.parent / f"{_label(planned)}-{digest}")


@dataclass
class StoreChoices:
    """Which stores each planned extraction reads: `{planned hash: store hash}` for a covering
    store, `{planned hash: {"sites": {...}, "reductions": {...}}}` for a composite."""

    decide: bool = True                      # False: only the recorded choices (a job)
    record: Path | None = None               # where the choices are kept between DAG and jobs
    weights: Weights | None = None           # the model's weights now: a store of other weights serves nothing
    chosen: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def deciding(cls, record: Path | None = None, weights: Weights | None = None) -> "StoreChoices":
        return cls(decide=True, record=record, weights=weights)

    @classmethod
    def recorded(cls, record: Path) -> "StoreChoices":
        """The DAG's choices; none (every run reads its own store) when it recorded none."""
        try:
            chosen = json.loads(Path(record).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            chosen = {}
        return cls(decide=False, record=record, chosen=chosen if isinstance(chosen, dict) else {})

    def choose(self, planned: Stage, registry: Mapping[str, Experiment]) -> Stage:
        """`planned`, the store on disk it reads instead, or the composite that computes what
        no store holds."""
        if self.decide:
            if not (planned.output_dir / "config.yaml").is_file():   # else its own store is its own
                found = candidates(planned, registry, self.weights)
                covering = covering_store(planned, found)
                if covering is not None:
                    self.chosen[planned.hash] = covering.hash
                    return covering
                composite = composite_store(planned, found)
                if composite is not None:
                    self.chosen[planned.hash] = composite.config["reused"]
                    return composite
            self.chosen.pop(planned.hash, None)
            return planned
        choice = self.chosen.get(planned.hash)
        if isinstance(choice, dict):
            return reusing(planned, choice)
        if choice is None:
            return planned
        recorded = _record(_stage_of(planned, choice, {}).output_dir / "config.yaml")
        return planned if recorded is None or recorded.hash != choice else _stage_of(planned, choice, recorded.config)

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


def stores(parent: Path, label: str) -> list[StoredExtraction]:
    """Every complete store `<parent>/<label>-<hash>/activations`; each record is parsed once per
    state of its file (mtime and size), so a sweep's runs read it once."""
    try:
        folders = sorted(entry.name for entry in os.scandir(parent) if entry.name.startswith(f"{label}-"))
    except OSError:
        return []
    found = []
    for name in folders:
        parsed = _record(parent / name / "activations" / "config.yaml")
        if parsed is not None and name == f"{label}-{parsed.hash}":
            found.append(parsed)
    return found


def _record(path: Path) -> StoredExtraction | None:
    """A store's config.yaml when its config hashes to its hash; else None."""
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
        parsed = StoredExtraction(digest, config, stage.get("weights")) if stable_hash(config) == digest else None
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        parsed = None
    _RECORDS[str(path)] = (stamp, parsed)
    return parsed
