"""Split a composed config into stages, hash each, and derive output folders.

Each stage hashes only the keys it reads plus its upstream stage's hash, so a change reruns
exactly the stages downstream of it: a plot setting reruns figures, a template reruns the
stimuli extraction and every analysis of it, and the corpus experiments are untouched by both.

An extraction is named by what determines its activations (model, inputs, position policy,
storage dtype) and stores the union of the sites its enabled experiments read, so experiments
on the same inputs share one forward pass; an experiment whose reducer runs during extraction
adds its analysis settings to the extraction's hash instead of sites. A store on disk of the
same model, weights and inputs that already holds every site and reduction a run needs is read
instead, and stores that hold some of them are linked by a store that computes the rest
(`laminae.config.reuse`): the run's analyses name the store they read as their upstream.

    >>> run = plan_run(cfg, project_root=".", registry=discover())
    >>> run.stages["corpus.extract"].dir
    PosixPath('results/tiny-gpt2/corpus/nietzsche-3fa9c2d1e0')
    >>> run.extraction("adjustments") is run.stages["corpus.extract"]
    True
    >>> run.stages["adjustments.analysis"].upstream == run.stages["corpus.extract"].hash
    True

Layout (one folder per stage, nested under its upstream):

    results/<model>/stimuli/<stimuli>.<template>-<h>/activations/      layer_NN.h5, rows.tsv, config.yaml
                                    .../qkv/analysis-<h>/metrics/       the experiment's metrics files
                                    .../qkv+heads/analysis-<h>/...      (a run whose settings enable variant heads)
                                    .../qkv/analysis-<h>/plot-<h>/figures/
                                    .../qkv/analysis-<h>/claims-<h>/claims/   claims.tsv, claims.png|pdf
    results/<model>/corpus/<corpus>-<h>/activations/
                                    .../adjustments/analysis-<h>/...   (and every other corpus experiment)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laminae.config.keys import get_key, select_keys, stable_hash
from laminae.experiment import Experiment
from laminae.sites import SITES

if TYPE_CHECKING:
    from laminae.config.reuse import StoreChoices

# Bump a stage's version when the core's computation changes, so cached outputs are not
# reused (an experiment bumps its own `version` for its analysis).
STAGE_VERSIONS = {"extract": 1, "analysis": 1, "plot": 1, "claims": 1}
# Keys that change how a stage runs or lays out bytes, never a stored value: recorded, not hashed.
RUNTIME_KEYS = ("device", "batch_size", "models_dir", "extract.compression", "extract.chunk_rows",
                "extract.overlap", "model.device_map", "model.gpus", "corpus.shards")
OUTPUT_FOLDERS = {"extract": "activations", "analysis": "metrics", "plot": "figures", "claims": "claims"}
#: Keys of an experiment's config group that its analysis does not hash: figure settings, the
#: claims judged on its results (each has a stage of its own), and which inputs it reads (its
#: extraction's, upstream of it already).
NOT_ANALYSED = ("plot", "claims", "inputs")


@dataclass(frozen=True)
class Stage:
    """One cached step: its hashed config and where its outputs live.

    `name` is `<inputs kind>.extract` for an extraction (`corpus.extract`) and
    `<experiment>.analysis` / `<experiment>.plot` / `<experiment>.claims` for the rest."""

    name: str
    config: dict[str, Any]         # the hashed keys, plus "stage", "version" and "upstream"
    hash: str
    dir: Path                      # the stage's folder; outputs go in a fixed subfolder of it
    variants: tuple[str, ...] = ()   # the experiment's variants its settings enable (analysis, plot)

    @property
    def group(self) -> str:
        """The inputs kind of an extraction, the experiment of an analysis or figure stage."""
        return self.name.split(".")[0]

    @property
    def kind(self) -> str:
        return self.name.split(".")[1]

    @property
    def upstream(self) -> str | None:
        return self.config["upstream"]

    @property
    def output_dir(self) -> Path:
        return self.dir / OUTPUT_FOLDERS[self.kind]


@dataclass(frozen=True)
class Run:
    """One composed config (one point of a sweep) and its stages."""

    config: dict[str, Any]
    overrides: tuple[str, ...]
    stages: dict[str, Stage] = field(default_factory=dict)
    experiments: dict[str, Experiment] = field(default_factory=dict)   # the enabled ones, in config order
    notes: tuple[str, ...] = ()   # experiments skipped because the model cannot run them (laminae.config.needs)

    @property
    def runtime(self) -> dict[str, Any]:
        """The unhashed settings, flat: {"device": ..., "batch_size": ..., "compression": ...}."""
        return {dotted.rsplit(".", 1)[-1]: get_key(self.config, dotted) for dotted in RUNTIME_KEYS}

    @property
    def label(self) -> str:
        """Short human label: the overrides that define this run, or 'default'."""
        return " ".join(self.overrides) or "default"

    def extraction(self, experiment: str) -> Stage:
        """The extraction stage an enabled experiment reads."""
        return self.stages[f"{self.experiments[experiment].inputs}.extract"]


def analysis_settings(cfg: Mapping[str, Any], experiment: Experiment) -> dict[str, Any]:
    """The experiment's config group without its `plot` keys and `claims`: what its analysis hashes."""
    return {key: value for key, value in cfg[experiment.name].items() if key not in NOT_ANALYSED}


def during_extraction(cfg: Mapping[str, Any], experiment: Experiment) -> bool:
    """True when the experiment's reducer runs inside the extraction (`<name>.during_extraction`)."""
    return experiment.streams and bool(cfg[experiment.name].get("during_extraction", False))


def stored_sites(experiments: list[Experiment], cfg: Mapping[str, Any]) -> list[str]:
    """The union of the sites of the experiments that read stored activations, in SITES order."""
    wanted = {site for e in experiments if not during_extraction(cfg, e) for site in e.sites}
    return [site for site in SITES if site in wanted]


def plan_run(cfg: dict[str, Any], project_root: str | Path, registry: Mapping[str, Experiment],
             overrides: tuple[str, ...] = (), notes: tuple[str, ...] = (), stores: "StoreChoices | None" = None) -> Run:
    """Stage configs, hashes and folders for every experiment in `cfg["experiments"]`.

    `cfg` must be validated already (see `validate_config`). An experiment with claims
    (`<name>.claims`, judged by its `measure` hook) gets a claims stage after its analysis, and
    its figure stage hashes the claims' reference marks it draws."""
    from laminae.claims import references
    from laminae.claims.config import claims_of
    from laminae.config.reuse import StoreChoices
    from laminae.inputs import input_kind

    results = Path(cfg["results_dir"]) / cfg["model"]["name"]
    enabled = {name: registry[name].for_config(cfg) for name in cfg["experiments"]}
    stages: dict[str, Stage] = {}
    for kind in dict.fromkeys(e.inputs for e in enabled.values()):
        readers = [e for e in enabled.values() if e.inputs == kind]
        inputs = input_kind(kind)
        extract_cfg = select_keys(cfg, ("model", "extract.storage_dtype", *inputs.CONFIG_KEYS))
        for key in RUNTIME_KEYS:  # where the blocks run (model.device_map, model.gpus) is not hashed
            if key.startswith("model."):
                extract_cfg["model"].pop(key.split(".", 1)[1], None)
        if kind == "corpus":   # corpus.shards is runtime; text_field etc. only where they matter
            extract_cfg["corpus"] = inputs.hashed(extract_cfg["corpus"], cfg, project_root)
        digest = inputs.content_digest(cfg, project_root)
        if digest is not None:
            extract_cfg["files_digest"] = digest
        extract_cfg.update(
            inputs=kind, sites=stored_sites(readers, cfg),
            reductions={e.name: {"version": e.version, "settings": analysis_settings(cfg, e)}
                        for e in readers if during_extraction(cfg, e)},
        )
        extraction = _stage(f"{kind}.extract", extract_cfg, None, results / kind, inputs.label(cfg))
        extraction = (stores or StoreChoices()).choose(extraction, registry)   # stores on disk may hold some or all
        stages[extraction.name] = extraction
        for experiment in readers:
            settings = analysis_settings(cfg, experiment)
            variants = experiment.active_variants(settings)
            analysis_cfg = {experiment.name: settings, "experiment_version": experiment.version}
            analysis = _stage(f"{experiment.name}.analysis", analysis_cfg, extraction,
                              extraction.dir / experiment.folder_name(variants), variants=variants)
            plot_cfg = {"plot": {"dpi": cfg["plot"]["dpi"]}, experiment.name: {"plot": cfg[experiment.name].get("plot", {})},
                        "experiment_version": experiment.version}
            claims = claims_of(cfg, experiment) if experiment.measure is not None else []
            marks = references(claims)
            if marks:
                plot_cfg["references"] = marks
            figures = _stage(f"{experiment.name}.plot", plot_cfg, analysis, analysis.dir, variants=variants)
            stages.update({analysis.name: analysis, figures.name: figures})
            if claims:
                claims_cfg = {"plot": {"dpi": cfg["plot"]["dpi"]}, experiment.name: {"claims": claims},
                              "experiment_version": experiment.version}
                judged = _stage(f"{experiment.name}.claims", claims_cfg, analysis, analysis.dir, variants=variants)
                stages[judged.name] = judged
    return Run(config=cfg, overrides=tuple(overrides), stages=stages, experiments=enabled, notes=tuple(notes))


def _stage(name: str, config: dict[str, Any], upstream: Stage | None, parent: Path, label: str | None = None,
           variants: tuple[str, ...] = ()) -> Stage:
    kind = name.split(".")[1]
    config.update(stage=name, version=STAGE_VERSIONS[kind], upstream=upstream.hash if upstream else None)
    digest = stable_hash(config)
    folder = parent / (f"{label}-{digest}" if kind == "extract" else f"{kind}-{digest}")
    return Stage(name=name, config=config, hash=digest, dir=folder, variants=variants)
