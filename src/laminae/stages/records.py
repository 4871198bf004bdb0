"""The record each stage is handed, typed: its name, hash and hashed config (what the Snakefile
passes as `params.stage`), parsed once at the stage's entry into a frozen dataclass of the
stage's kind; and the runtime settings of an extraction (`Runtime`), which are recorded but not
hashed.

    >>> record = ExtractionRecord.parse({"stage": "corpus.extract", "hash": "3fa9c2d1e0", "config": {
    ...     "model": {"name": "tiny-gpt2"}, "extract": {"storage_dtype": "float32"}, "inputs": "corpus",
    ...     "sites": ["attn_out", "mlp_out"], "reductions": {}, "upstream": None}})
    >>> record.inputs, record.sites, record.storage_dtype
    ('corpus', ('attn_out', 'mlp_out'), 'float32')
    >>> record.as_dict()["stage"]       # the dict again, as config.yaml and the HDF5 attributes record it
    'corpus.extract'

Every kind keeps the whole hashed `config` (provenance writes it verbatim) and lifts the keys its
stage reads into fields, so no stage reads its config by string keys:

    extract   ExtractionRecord   inputs, model, sites, storage_dtype, reductions {name: Reduction}
    analysis  AnalysisRecord     experiment, settings, upstream (the extraction's hash)
    plot      FigureRecord       experiment, plot, dpi, references (the claims' reference marks)
    claims    ClaimsRecord       experiment, claims, dpi
    compare   CompareRecord      experiment, runs, plot, dpi, steps (checkpoints of one model)
    across    AcrossRecord       experiment, settings, runs, inputs, match, plot, dpi, steps
    matrix    ClaimsMatrixRecord runs, dpi
    build     ModelBuildRecord   random_init

`record_of(params.stage)` picks the kind from the stage's name (`<group>.<kind>`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from laminae.models.readout import ModelSource

R = TypeVar("R", bound="StageRecord")
#: Where a workflow's jobs find its project root (set by the Snakefile: laminae.workflow).
PROJECT_ROOT_VARIABLE = "LAMINAE_PROJECT_ROOT"
#: in a sweep comparison's run label: this run's weights are those of an earlier run (named after it)
SAME_WEIGHTS = " [same weights as "


@dataclass(frozen=True)
class StageRecord:
    """Name (`<group>.<kind>`, e.g. `qkv.analysis`), hash and hashed config of one stage."""

    name: str
    hash: str
    config: Mapping[str, Any]
    #: The fingerprint of the weights its results come from (laminae.models.fingerprint), given by
    #: the workflow; recorded in provenance, not hashed (a change reruns the extraction in place).
    weights: str | None = field(default=None, kw_only=True)

    KIND: ClassVar[str] = ""

    @classmethod
    def parse(cls: type[R], record: StageRecord | Mapping[str, Any]) -> R:
        """The typed record of `record` (a `{"stage", "hash", "config"}` dict or another record)."""
        if isinstance(record, cls):
            return record
        weights = record.weights if isinstance(record, StageRecord) else None
        if isinstance(record, StageRecord):
            record = record.as_dict()
        try:
            name, digest, config = record["stage"], record["hash"], record["config"]
            return cls(name=name, hash=digest, config=config, weights=weights, **cls._fields(name, config))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a {cls.KIND or 'stage'} record ({error!r} missing): {dict(record)!r:.200}") from None

    @classmethod
    def _fields(cls, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        """The kind's own fields, read from its config."""
        return {}

    @property
    def group(self) -> str:
        """The inputs kind of an extraction; the experiment of every other stage."""
        return self.name.split(".")[0]

    @property
    def upstream(self) -> str | None:
        """The hash of the stage this one reads (None for an extraction or a sweep's stages)."""
        return self.config.get("upstream")

    def as_dict(self) -> dict[str, Any]:
        """`{"stage", "hash", "config"}`: what provenance records."""
        return {"stage": self.name, "hash": self.hash, "config": self.config}


@dataclass(frozen=True)
class Reduction:
    """An experiment computed during extraction: its reducer's version and analysis settings."""

    version: int
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class ExtractionRecord(StageRecord):
    """`<inputs>.extract`: the model over one set of inputs (or the gather of its shards)."""

    inputs: str                                # stimuli | corpus
    model: Mapping[str, Any]                   # the hashed model keys (no device_map, gpus)
    sites: tuple[str, ...]                     # stored: the union of the reading experiments' sites
    storage_dtype: str                         # float32 | float16
    reductions: Mapping[str, Reduction]        # experiment -> its reducer, run during extraction
    #: what a composite store takes from stores made before (laminae.config.reuse), by their hash:
    #: {site: hash} linked, {experiment: hash} copied; the rest it computes
    reused_sites: Mapping[str, str] = field(default_factory=dict)
    reused_reductions: Mapping[str, str] = field(default_factory=dict)

    KIND: ClassVar[str] = "extract"

    @classmethod
    def _fields(cls, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        reused = config.get("reused") or {}
        return {"inputs": config["inputs"], "model": config["model"], "sites": tuple(config["sites"]),
                "storage_dtype": config["extract"]["storage_dtype"],
                "reductions": {experiment: Reduction(int(spec["version"]), spec["settings"])
                               for experiment, spec in config["reductions"].items()},
                "reused_sites": dict(reused.get("sites", {})), "reused_reductions": dict(reused.get("reductions", {}))}

    @property
    def new_sites(self) -> tuple[str, ...]:
        """The sites this extraction's forward pass stores (those it does not link)."""
        return tuple(site for site in self.sites if site not in self.reused_sites)

    @property
    def new_reductions(self) -> dict[str, Reduction]:
        """The experiments its forward pass computes (those it does not copy)."""
        return {name: spec for name, spec in self.reductions.items() if name not in self.reused_reductions}

    def reused_from(self, out_dir: Path) -> dict[str, Path]:
        """{site or experiment: the activations folder it is reused from}, for this store's own
        folder `out_dir` (`<results>/<model>/<inputs>/<label>-<hash>/activations`): its siblings."""
        folder = Path(out_dir).parent
        label = folder.name[: -len(self.hash) - 1]
        return {name: folder.parent / f"{label}-{digest}" / "activations"
                for name, digest in {**self.reused_sites, **self.reused_reductions}.items()}

    @property
    def runs_model(self) -> bool:
        """False for a composite that computes nothing new: it only links and copies."""
        return bool(self.new_sites or self.new_reductions)


def model_source(record: ExtractionRecord | Mapping[str, Any], runtime: Runtime | Mapping[str, Any] | None,
                 project_root: str | Path | None = None, device: str = "cpu") -> ModelSource | None:
    """Where an extraction's model is (its model config, models_dir and the project root), for
    the readout of the jobs built on it; None when `record` is not an extraction's record (a
    store without its config.yaml). `project_root` None: the workflow's (`LAMINAE_PROJECT_ROOT`,
    which the Snakefile sets for its jobs), else the working directory.

        >>> model_source(read_stage_record(activations / "config.yaml"), None).config["name"]   # doctest: +SKIP
        'tiny-gpt2'
    """
    try:
        record = ExtractionRecord.parse(record)
    except ValueError:
        return None
    models_dir = Runtime.parse(runtime).models_dir
    return ModelSource(config=dict(record.model), models_dir=models_dir,
                       project_root=Path(project_root or os.environ.get(PROJECT_ROOT_VARIABLE) or Path.cwd()),
                       device=device)


@dataclass(frozen=True)
class AnalysisRecord(StageRecord):
    """`<experiment>.analysis`: an extraction's activations -> the experiment's metrics."""

    experiment: str
    settings: Mapping[str, Any]                # the experiment's config group (no plot, claims)

    KIND: ClassVar[str] = "analysis"

    @classmethod
    def _fields(cls, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        experiment = name.split(".")[0]
        return {"experiment": experiment, "settings": config[experiment]}


@dataclass(frozen=True)
class FigureRecord(StageRecord):
    """`<experiment>.plot`: metrics -> the experiment's figures."""

    experiment: str
    plot: Mapping[str, Any]                    # the experiment's `plot` keys
    dpi: int
    references: tuple[Mapping[str, Any], ...]  # the claims' reference marks the figures draw

    KIND: ClassVar[str] = "plot"

    @classmethod
    def _fields(cls, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        experiment = name.split(".")[0]
        return {"experiment": experiment, "plot": config[experiment]["plot"], "dpi": int(config["plot"]["dpi"]),
                "references": tuple(config.get("references", ()))}


@dataclass(frozen=True)
class ClaimsRecord(StageRecord):
    """`<experiment>.claims`: metrics -> the verdicts of the experiment's claims."""

    experiment: str
    claims: tuple[Mapping[str, Any], ...]
    dpi: int

    KIND: ClassVar[str] = "claims"

    @classmethod
    def _fields(cls, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        experiment = name.split(".")[0]
        return {"experiment": experiment, "claims": tuple(config[experiment]["claims"]),
                "dpi": int(config["plot"]["dpi"])}


@dataclass(frozen=True)
class CompareRecord(StageRecord):
    """`<experiment>.compare`: one experiment's runs of a sweep, overlaid (and across training)."""

    experiment: str
    runs: tuple[Mapping[str, Any], ...]        # {label, analysis (hash), settings} per run, in order
    plot: Mapping[str, Any]                    # the experiment's `plot` keys of the first run
    dpi: int
    steps: tuple[int, ...] | None              # the runs' training steps, when they are checkpoints
    model: str | None                          # the one model of every run (with its weights note), else None

    KIND: ClassVar[str] = "compare"

    @classmethod
    def _fields(cls, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        experiment = config["experiment"]
        steps = config.get("steps")
        return {"experiment": experiment, "runs": tuple(config["runs"]), "plot": config["plot"][experiment],
                "dpi": int(config["plot"]["dpi"]), "steps": None if steps is None else tuple(steps),
                "model": config.get("model")}


@dataclass(frozen=True)
class AcrossRecord(StageRecord):
    """`<experiment>.across`: one experiment's analysis over several runs' stores (a sweep)."""

    experiment: str
    settings: Mapping[str, Any]
    runs: tuple[Mapping[str, Any], ...]        # {label, model, extraction (hash)} per run, in order
    inputs: str
    match: str                                 # how rows are matched across the runs
    plot: Mapping[str, Any]
    dpi: int
    steps: tuple[int, ...] | None

    KIND: ClassVar[str] = "across"

    @classmethod
    def _fields(cls, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        experiment = config["experiment"]
        steps = config.get("steps")
        return {"experiment": experiment, "settings": config["settings"], "runs": tuple(config["runs"]),
                "inputs": config["inputs"], "match": config["match"], "plot": config["plot"][experiment],
                "dpi": int(config["plot"]["dpi"]), "steps": None if steps is None else tuple(steps)}


@dataclass(frozen=True)
class ClaimsMatrixRecord(StageRecord):
    """`claims.matrix`: every run's verdicts of a sweep side by side."""

    runs: tuple[Mapping[str, Any], ...]        # {label, claims: {experiment: claims stage hash}}
    dpi: int

    KIND: ClassVar[str] = "matrix"

    @classmethod
    def _fields(cls, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"runs": tuple(config["runs"]), "dpi": int(config["dpi"])}


@dataclass(frozen=True)
class ModelBuildRecord(StageRecord):
    """`model.build`: a random-init model, built once from its seed."""

    random_init: Mapping[str, Any]

    KIND: ClassVar[str] = "build"

    @classmethod
    def _fields(cls, name: str, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"random_init": config["random_init"]}


RECORD_KINDS: dict[str, type[StageRecord]] = {
    kind.KIND: kind for kind in (ExtractionRecord, AnalysisRecord, FigureRecord, ClaimsRecord, CompareRecord, AcrossRecord,
                                 ClaimsMatrixRecord, ModelBuildRecord)}


def record_of(record: Mapping[str, Any], weights: str | None = None) -> StageRecord:
    """The typed record of a `{"stage", "hash", "config"}` dict, by its stage's kind, with the
    fingerprint of the weights its results come from.

        >>> record_of({"stage": "qkv.analysis", "hash": "2d059d2549", "config": {"qkv": {}, "upstream": "f1"}}).upstream
        'f1'
    """
    kind = str(record["stage"]).rsplit(".", 1)[-1]
    return replace(RECORD_KINDS.get(kind, StageRecord).parse(record), weights=weights)


@dataclass(frozen=True)
class Runtime:
    """An extraction's unhashed settings (laminae.config.stages.RUNTIME_KEYS): where and how it
    runs, never what it computes beyond float round-off. Recorded in every output it writes.

        >>> Runtime.parse({"device": "cpu", "batch_size": 4}).batch_size
        4
    """

    device: str = "auto"
    batch_size: int = 8
    models_dir: str = "models"
    compression: str | None = None
    chunk_rows: int = 1024
    overlap: bool | str = "auto"
    device_map: str | None = None
    gpus: int | None = 1
    shards: int | None = 1

    @classmethod
    def parse(cls, runtime: Runtime | Mapping[str, Any] | None) -> Runtime:
        """From the flat dict the Snakefile injects (`Run.runtime`); missing keys take the defaults."""
        if isinstance(runtime, Runtime):
            return runtime
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in (runtime or {}).items() if key in known})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
