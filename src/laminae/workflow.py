"""What the Snakefile asks of laminae: the runs of a config, their targets, and per-job lookups.

Rules match output paths with wildcards that end in a stage hash; `WorkflowPlan` maps the hash
back to the stage's config, inputs and resources, and lists the experiments the rules are
made for:

    >>> plan = WorkflowPlan.from_snakemake_config({"overrides": ["model=tiny-gpt2"]}, Path("."))
    >>> list(plan.experiments)                  # one analysis, figure (and compare) rule each
    ['qkv', 'adjustments']
    >>> plan.targets()[:1]
    ['results/tiny-gpt2/stimuli/space_furniture_fruit.next_word-f1b84d50bc/qkv/analysis-.../metrics/qkv_laminar.tsv']
    >>> plan.stage_record(digest)      # {"stage": "qkv.analysis", "hash": ..., "config": {...}}: params.stage
    ...                                # (the job parses it into its typed record, laminae.stages.records)
    >>> plan.claims_matrix.files       # a sweep whose runs judge claims: results/sweeps/claims-<h>/...

Nothing here imports torch: parsing the Snakefile stays fast (a no-op rerun takes seconds).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from laminae.config import Run, Stage, analysis_settings, load_runs, stable_hash
from laminae.config.across import CrossRun, plan_across
from laminae.config.reuse import reused_stores
from laminae.errors import ConfigError
from laminae.experiment import Experiment
from laminae.sites import QKV
from laminae.stages.records import PROJECT_ROOT_VARIABLE, SAME_WEIGHTS, ExtractionRecord
from laminae.stages.runner import WORKFLOW_CONFIG_KEY

CONFIG_KEYS = ("overrides", "sweep")
EXTRACT_THREADS = 4     # threads of an extraction job (a forward pass), sharded or not
FIGURE_FORMATS = ("png", "pdf")


def export_source_path(root: Path) -> None:
    """Put `<root>/src` on PYTHONPATH for job processes, so rule scripts import this checkout's
    laminae even in a conda env or on a cluster node where it is not installed; and the root
    itself in `LAMINAE_PROJECT_ROOT`, where jobs find models named relative to it."""
    paths = [str(root / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ[PROJECT_ROOT_VARIABLE] = str(root)


@dataclass(frozen=True)
class Comparison:
    """The overlay of one experiment's runs in a sweep: `<results>/sweeps/<experiment>-<hash>/`."""

    experiment: str
    hash: str
    config: dict[str, Any]       # experiment, runs [{label, analysis hash, settings}], plot settings
    metrics: list[str]           # each run's metrics folder, in `config["runs"]` order
    dir: Path

    @property
    def across_training(self) -> bool:
        """The runs are checkpoints of one model (`config["steps"]`): its headline metrics get a
        figure across training too."""
        return "steps" in self.config

    @property
    def files(self) -> list[str]:
        names = [f"compare_{self.experiment}.{ext}" for ext in FIGURE_FORMATS] + ["sweep.yaml"]
        if self.across_training:
            names += [f"training_{self.experiment}.{ext}" for ext in FIGURE_FORMATS]
        return [str(self.dir / name) for name in names]


def training_steps(distinguishing: list[list[str]]) -> list[int] | None:
    """The training steps of a sweep's runs when each is told apart by one override
    `model.revision=<...step N...>` (Pythia's `step1000`, OLMo's `stage1-step1000-tokens...`),
    with distinct N; else None.

        >>> training_steps([["model.revision=step1000"], ["model.revision=step143000"]])
        [1000, 143000]
    """
    steps = []
    for overrides in distinguishing:
        match = re.fullmatch(r"model\.revision=\S*?step(\d+)\S*", overrides[0]) if len(overrides) == 1 else None
        if match is None:
            return None
        steps.append(int(match.group(1)))
    return steps if len(set(steps)) == len(steps) else None


@dataclass(frozen=True)
class ClaimsMatrix:
    """A sweep's claims matrix (runs x claims): `<results>/sweeps/claims-<hash>/`."""

    hash: str
    config: dict[str, Any]       # runs [{label, claims: {experiment: claims stage hash}}], dpi
    tables: list[str]            # each run's claims.tsv per experiment, in `config["runs"]` order
    dir: Path

    @property
    def files(self) -> list[str]:
        return [str(self.dir / f"claims_matrix.{ext}") for ext in (*FIGURE_FORMATS, "tsv")] + [str(self.dir / "sweep.yaml")]


def fidelity_figure(extraction: Stage) -> str:
    """The fidelity figure of an extraction's store (rule `fidelity_figure`), beside the store."""
    return f"{extraction.dir}/fidelity.png"


@dataclass
class WorkflowPlan:
    runs: list[Run]
    root: Path
    stages: dict[str, Stage] = field(default_factory=dict)
    run_of: dict[str, Run] = field(default_factory=dict)
    experiments: dict[str, Experiment] = field(default_factory=dict)   # enabled in some run, in order
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    cross_runs: dict[str, CrossRun] = field(default_factory=dict)      # Experiment.across stages of a sweep
    claims_matrix: ClaimsMatrix | None = None
    notes: list[str] = field(default_factory=list)   # said once before the jobs (the Snakefile's onstart)
    _input_sizes: dict[str, int] = field(default_factory=dict, repr=False)  # extraction hash -> bytes
    _store_shards: dict[str, list[Any]] = field(default_factory=dict, repr=False)  # extraction hash -> shards
    _fingerprints: "_Fingerprints | None" = field(default=None, repr=False)       # the weights of each model

    def __post_init__(self) -> None:
        for run in self.runs:
            self.experiments.update(run.experiments)
            self.notes.extend(note for note in run.notes if note not in self.notes)
            for stage in run.stages.values():
                self.stages.setdefault(stage.hash, stage)
                self.run_of.setdefault(stage.hash, run)
        if len(self.runs) > 1:
            for experiment in self.experiments.values():
                comparison = self._comparison(experiment)
                if comparison is not None:
                    self.comparisons[comparison.hash] = comparison
                if experiment.across is not None:
                    for cross in plan_across(self.runs, experiment, self.results_dir, steps=training_steps):
                        self.cross_runs[cross.hash] = cross
            self.claims_matrix = self._claims_matrix()

    def _claims_matrix(self) -> ClaimsMatrix | None:
        """Every run's verdicts side by side, when some run of the sweep judges claims and the
        runs' claims stages differ (a sweep over another experiment's setting has nothing to show)."""
        runs, tables = [], []
        for run in self.runs:
            judged = {stage.group: stage for stage in run.stages.values() if stage.kind == "claims"}
            runs.append({"label": run.label, "claims": {name: stage.hash for name, stage in judged.items()}})
            tables += [str(stage.output_dir / "claims.tsv") for stage in judged.values()]
        if not tables or all(run["claims"] == runs[0]["claims"] for run in runs):
            return None
        config = {"stage": "claims.matrix", "runs": runs, "dpi": self.runs[0].config["plot"]["dpi"]}
        digest = stable_hash(config)
        return ClaimsMatrix(digest, config, tables, Path(self.results_dir) / "sweeps" / f"claims-{digest}")

    def _comparison(self, experiment: Experiment) -> Comparison | None:
        """Runs whose analyses differ, each labelled by the sweep values it does not share with
        runs of the same analysis (a template sweep does not split the corpus experiments)."""
        groups: dict[str, list[Run]] = {}
        for run in self.runs:
            if f"{experiment.name}.analysis" in run.stages:
                groups.setdefault(run.stages[f"{experiment.name}.analysis"].hash, []).append(run)
        if len(groups) < 2:
            return None
        if experiment.compare is None:
            self.notes.append(f"experiment {experiment.name!r} declares no compare hook: the sweep makes no "
                              f"comparison figure of its {len(groups)} analyses (each run's own figures are made)")
            return None
        from laminae.models.locate import weights_note

        runs, distinguishing = [], []
        for analysis_hash, members in groups.items():
            shared = [o for o in members[0].overrides if all(o in m.overrides for m in members)]
            # a quantized GGUF says so where the label names the model; else once for all runs (below)
            names_model = any(o.split("=", 1)[0] == "model" or o.startswith("model.") for o in shared)
            weights = weights_note(members[0].config["model"], self.root) if names_model else ""
            runs.append({"label": (" ".join(shared) or "default") + (f" ({weights})" if weights else ""),
                         "analysis": analysis_hash,
                         "settings": analysis_settings(members[0].config, experiment)})
            distinguishing.append(shared)
        first_of: dict[str, tuple[str, str]] = {}   # weights -> (model config, label) of the first run with them
        for run in runs:   # other model configs, identical weights: one model, not two checkpoints
            fingerprint = self.weights(run["analysis"])
            model = _model_key(self.run_of[run["analysis"]].config["model"])
            if fingerprint is not None and first_of.setdefault(fingerprint, (model, run["label"]))[0] != model:
                run["label"] += f"{SAME_WEIGHTS}{first_of[fingerprint][1]}]"
        first = self.run_of[runs[0]["analysis"]].config
        config = {"stage": f"{experiment.name}.compare", "experiment": experiment.name, "runs": runs,
                  "plot": {"dpi": first["plot"]["dpi"], experiment.name: first[experiment.name].get("plot", {})}}
        models = {_model_key(self.run_of[run["analysis"]].config["model"]) for run in runs}
        if len(models) == 1:   # one model for every run: named once, in the overlay's title
            weights = weights_note(first["model"], self.root)
            config["model"] = first["model"]["name"] + (f" ({weights})" if weights else "")
        steps = training_steps(distinguishing)
        if steps is not None and any(measure.headline for measure in experiment.measures):
            config["steps"] = steps
        digest = stable_hash(config)
        metrics = [str(self.stages[run["analysis"]].output_dir) for run in runs]
        return Comparison(experiment.name, digest, config, metrics,
                          Path(self.results_dir) / "sweeps" / f"{experiment.name}-{digest}")

    @classmethod
    def from_snakemake_config(cls, config: Mapping[str, Any], root: Path, job: bool = False) -> "WorkflowPlan":
        """The plan of `--config overrides=[...] sweep=[...]`. The process that builds the DAG
        decides which existing stores the runs read and records it; a job (`job`: Snakemake's
        remote or subprocess mode, which parses the Snakefile again while other jobs write
        stores) reads that record, so it plans the stages it was submitted for, and skips the
        config checks the DAG's process made (a cluster job of a large sweep starts sooner)."""
        from laminae.config.compose import cache_dir
        from laminae.config.reuse import StoreChoices

        unknown = sorted(set(config) - set(CONFIG_KEYS) - {WORKFLOW_CONFIG_KEY})
        if unknown:
            raise ConfigError(f"--config {unknown[0]}", "only overrides=[...] and sweep=[...], e.g. "
                              f"--config 'overrides=[\"{unknown[0]}={config[unknown[0]]}\"]'", has_value=False)
        overrides, sweep = config.get("overrides", []), config.get("sweep", [])
        record = cache_dir(root) / f"stores-{stable_hash([overrides, sweep, str(Path.cwd().resolve())])}.json"
        fingerprints = _Fingerprints(root)
        stores = StoreChoices.recorded(record) if job else StoreChoices.deciding(record, fingerprints)
        runs = load_runs(overrides, sweep, project_root=root, stores=stores, validate=not job)
        stores.save()
        return cls(runs=runs, root=root, _fingerprints=fingerprints)

    @property
    def results_dir(self) -> str:
        return self.runs[0].config["results_dir"]

    @property
    def models_dir(self) -> str:
        return self.runs[0].config["models_dir"]

    @property
    def experiment_packages(self) -> list[str]:
        """Every run's `experiment_packages`, in order, once each."""
        return list(dict.fromkeys(p for run in self.runs for p in run.config["experiment_packages"]))

    def rule_variants(self) -> list[tuple[Experiment, tuple[str, ...]]]:
        """(experiment, variants) for every analysis in the plan, once each per inputs kind: the
        rules to make (one analysis and figure rule per pair; `()` is the experiment's plain outputs)."""
        pairs = {(stage.group, self.experiment_of(stage.hash).inputs, stage.variants): stage.hash
                 for stage in self.stages.values() if stage.kind == "analysis"}
        return [(self.experiment_of(digest), variants) for (_, _, variants), digest in pairs.items()]

    def experiment_of(self, digest: str) -> Experiment:
        """The experiment of an analysis, figure or claims stage, on the inputs its run reads."""
        return self.run_of[digest].experiments[self.stages[digest].group]

    def judges_claims(self, experiment: Experiment, variants: tuple[str, ...] = ()) -> bool:
        """Whether some run judges the experiment's claims (with these variants): its claims rule."""
        return any(stage.kind == "claims" and stage.group == experiment.name and stage.variants == variants
                   and self.experiment_of(stage.hash).inputs == experiment.inputs for stage in self.stages.values())

    def inject_into(self, config: dict[str, Any]) -> None:
        """Put the project root, each extraction's runtime settings and where the experiments
        live into the workflow config, where `laminae.stages.runner` finds them (see there for
        why not in params)."""
        runtime = {h: self.run_of[h].runtime for h, s in self.stages.items() if s.kind == "extract"}
        weights = {digest: self.weights(digest) for digest in self.stages}
        config[WORKFLOW_CONFIG_KEY] = {"root": str(self.root), "runtime": runtime,
                                       "weights": {h: w for h, w in weights.items() if w is not None},
                                       "experiment_packages": self.experiment_packages}

    def weights(self, digest: str) -> str | None:
        """The fingerprint of the weights a stage's results come from (laminae.models.fingerprint:
        a checkpoint's files hashed once per path, size and mtime; a hub revision's commit), once
        per model config; None for a random model. An extraction's rules take it as a param, so
        changed weights rerun it in place. A model that cannot be had now gives the fingerprint its
        existing store recorded (the store still holds what those weights made)."""
        model = self.run_of[digest].config["model"]
        if self._fingerprints is None:
            self._fingerprints = _Fingerprints(self.root)
        found = self._fingerprints(model)
        stage = self.stages[digest]
        while found is None and model["random_init"] is None and stage.kind != "extract":
            stage = self.stages[stage.upstream]
        if found is None and model["random_init"] is None and stage.kind == "extract":
            from laminae.provenance import read_stage_record

            found = read_stage_record(stage.output_dir / "config.yaml").get("weights")
        return found

    def identical_weights(self) -> list[str]:
        """One line per set of runs whose configs differ but whose weights are identical (e.g. two
        checkpoint revisions that serve the same files): their results are not two checkpoints."""
        models: dict[str, dict[str, str]] = {}   # fingerprint -> {model config: the label of its first run}
        for run in self.runs:
            extraction = next((stage.hash for stage in run.stages.values() if stage.kind == "extract"), None)
            fingerprint = self.weights(extraction) if extraction else None
            if fingerprint is not None:
                models.setdefault(fingerprint, {}).setdefault(_model_key(run.config["model"]), run.label)
        return [f"runs {', '.join(labels.values())} have identical weights ({fingerprint[:24]}...): their results "
                "are those of one model, not of different checkpoints"
                for fingerprint, labels in models.items() if len(labels) > 1]

    def stage_record(self, digest: str) -> dict[str, Any]:
        stage = self.stages[digest]
        return {"stage": stage.name, "hash": stage.hash, "config": stage.config}

    def stage_files(self, stage: Stage) -> list[str]:
        """The files a stage writes (its output folder for an extraction)."""
        if stage.kind == "extract":
            return [str(stage.output_dir)]
        experiment = self.experiment_of(stage.hash)
        if stage.kind == "analysis":
            names = list(experiment.metrics_for(stage.variants))
        elif stage.kind == "claims":
            from laminae.claims import CLAIMS_FILES

            names = list(CLAIMS_FILES)
        else:
            names = [f"{figure.name}.{ext}" for figure in experiment.figures_for(stage.variants) for ext in FIGURE_FORMATS]
        folder = str(stage.output_dir)   # a string join: called for every stage of every run
        return [f"{folder}/{name}" for name in (*names, "config.yaml")]

    def targets(self) -> list[str]:
        """Every run's metrics and figures and its stores' fidelity figures, without duplicates, in
        run order; then the sweep's comparison figures."""
        seen: dict[str, None] = {}
        done: set[str] = set()   # a stage shared by runs (most, in a sweep) adds nothing the second time
        for run in self.runs:
            for stage in run.stages.values():
                if stage.hash not in done:
                    done.add(stage.hash)
                    seen.update(dict.fromkeys([fidelity_figure(stage)] if stage.kind == "extract"
                                              else self.stage_files(stage)))
        for comparison in self.comparisons.values():
            seen.update(dict.fromkeys(comparison.files))
        for cross in self.cross_runs.values():
            seen.update(dict.fromkeys(cross.files))
        if self.claims_matrix is not None:
            seen.update(dict.fromkeys(self.claims_matrix.files))
        return list(seen)

    def claims_matrix_record(self) -> dict[str, Any]:
        matrix = self.claims_matrix
        assert matrix is not None
        return {"stage": matrix.config["stage"], "hash": matrix.hash, "config": matrix.config}

    def comparison_record(self, digest: str) -> dict[str, Any]:
        comparison = self.comparisons[digest]
        return {"stage": comparison.config["stage"], "hash": digest, "config": comparison.config}

    def context(self, digest: str) -> dict[str, Any]:
        """Labels for titles and captions: model, inputs and the analysis settings. A model whose
        weights were stored quantized (a GGUF file) is named with how, e.g. "smollm2-135m (4-bit
        quantized weights (Q4_1), dequantized)", read from the file's header (pure Python)."""
        from laminae.inputs import input_kind
        from laminae.models.locate import weights_note

        cfg = self.run_of[digest].config
        experiment = self.experiment_of(digest)
        weights = weights_note(cfg["model"], self.root)
        return {"model": cfg["model"]["name"] + (f" ({weights})" if weights else ""), "weights": weights,
                "random_weights": cfg["model"]["random_init"] is not None,
                "experiment": experiment.name, **input_kind(experiment.inputs).describe(cfg),
                "analysis": analysis_settings(cfg, experiment)}

    def shards(self, digest: str) -> list[Any]:
        """The shards (`laminae.shards.Shard`) of an extraction run with `corpus.shards` > 1, in
        order; [] for one that runs as one job."""
        from laminae.shards import Shard

        stage = self.stages[digest]
        runtime = self.run_of[digest].runtime
        count = runtime.get("shards") or 1
        if stage.group != "corpus" or count == 1 or not self.runs_model(digest):   # linking alone is one quick job
            return []
        return [Shard(index, count, runtime["batch_size"]) for index in range(count)]

    def shard_dirs(self, digest: str) -> list[str]:
        """The folders of the shards an extraction's store is gathered from (rule `gather`'s
        inputs): `<extraction>/shards/shard-K-of-N-bB` (laminae.shards)."""
        from laminae.shards import SHARDS_FOLDER, shard_name

        stage = self.stages[digest]
        return [str(stage.dir / SHARDS_FOLDER / shard_name(shard)) for shard in self.store_shards(digest)]

    def store_shards(self, digest: str) -> list[Any]:
        """The shards an extraction's store is gathered from; [] for a store one job makes (rule
        `extract`). A store that exists keeps the split it was made from (its config.yaml says
        how many shards): its values do not depend on the split, so another `corpus.shards`
        reruns nothing (Snakemake reruns a job whose rule or inputs change). Only a corpus is
        sharded: a stimuli store records `corpus.shards` too, as a runtime setting it ignores."""
        if digest not in self._store_shards:
            stage = self.stages[digest]
            shards = self.shards(digest)
            record = stage.output_dir / "config.yaml"
            if stage.group == "corpus" and stage.output_dir.is_dir() and record.is_file():
                from laminae.shards import Shard
                from laminae.provenance import read_stage_record

                runtime = read_stage_record(record).get("runtime") or {}
                count, batch = runtime.get("shards") or 1, runtime.get("batch_size")
                shards = [Shard(index, count, batch) for index in range(count)] if count > 1 and batch else []
            self._store_shards[digest] = shards
        return self._store_shards[digest]

    def extraction_hashes(self, gathered: bool) -> str:
        """A wildcard constraint matching the hashes of the extractions whose store rule `gather`
        makes (`gathered`) or rule `extract` does (the rest), so each store has one rule."""
        hashes = [digest for digest, stage in self.stages.items()
                  if stage.kind == "extract" and bool(self.store_shards(digest)) == gathered]
        return "|".join(hashes) or "(?!)"   # (?!) matches nothing

    def source_inputs(self, digest: str) -> dict[str, Any]:
        """Files an extraction (or one of its shards) reads: its input documents (relative to
        the project when inside it, so a moved project schedules nothing) and, for random
        models, the built model."""
        from laminae.inputs import input_kind

        stage = self.stages[digest]
        cfg = self.run_of[digest].config
        inputs: dict[str, Any] = {}
        documents = input_kind(stage.group).documents(cfg, self.root)
        if documents:
            inputs[stage.group] = [str(path) for path in documents]
        if cfg["model"]["random_init"] is not None:
            inputs["model"] = str(self.random_model_dir(cfg["model"]))
        reused = reused_stores(stage)
        if reused:   # a composite store links them: rebuilt, they make it rebuild too
            inputs["reused"] = [str(folder) for folder in reused]
        return inputs

    def random_model_dir(self, model_cfg: dict[str, Any]) -> Path:
        """`laminae.models.random_models.random_model_dir`, without importing that module: it
        imports torch and transformers (seconds), which every DAG build would pay, twice per
        cluster job (tests/test_workflow_resources.py checks that both agree)."""
        name = model_cfg.get("name") or model_cfg["random_init"].get("architecture", "random")
        return Path(self.models_dir) / f"{name}-{stable_hash(model_cfg['random_init'])}"

    def random_model_config(self, folder_name: str) -> dict[str, Any]:
        for run in self.runs:
            model = run.config["model"]
            if model["random_init"] is not None and self.random_model_dir(model).name == folder_name:
                return model
        raise KeyError(folder_name)

    def resources(self, digest: str) -> dict[str, int]:
        """mem_mb and runtime (minutes) of any stage's job: extraction, analysis or figures
        (see laminae.resources). They scale with the model and the input's size."""
        from laminae import resources

        stage = self.stages[digest]
        cfg = self._with_checkpoint_shape(self.run_of[digest].config)
        if stage.kind == "extract":
            return self.shard_resources(digest, 1)
        experiment = self.experiment_of(digest)
        # a claims job reads back what the figures read (the metrics), and does less with it
        kind = "plot" if stage.kind == "claims" else stage.kind
        return resources.stage_resources(kind, experiment, cfg, self.input_bytes(digest))

    def across_resources(self, digest: str) -> dict[str, int]:
        """mem_mb and runtime of an analysis across runs (`Experiment.across`): each run's
        analysis job's, summed (every store is read, and the matched items of all runs held)."""
        cross = self.cross_runs[digest]
        each = [self.resources(self._analysis_of(cross.experiment, run["extraction"])) for run in cross.config["runs"]]
        return {key: sum(job[key] for job in each) for key in ("mem_mb", "runtime")}

    def _analysis_of(self, experiment: str, extraction: str) -> str:
        """The hash of `experiment`'s analysis of the extraction `extraction` (in some run)."""
        return next(stage.hash for stage in self.stages.values()
                    if stage.name == f"{experiment}.analysis" and stage.upstream == extraction)

    def gather_resources(self, digest: str) -> dict[str, int]:
        """mem_mb and runtime of the gather of a sharded extraction: no model; the finish of the
        reductions run during extraction happens here."""
        from laminae import resources

        stage = self.stages[digest]
        cfg = self._with_checkpoint_shape(self.run_of[digest].config)
        request = {"mem_mb": resources.ANALYSIS_FLOOR["mem_mb"], "runtime": 10}
        for name in stage.config["reductions"]:
            analysis = resources.stage_resources("analysis", self.run_of[digest].experiments[name], cfg,
                                                 self.input_bytes(digest))
            request = {"mem_mb": max(request["mem_mb"], analysis["mem_mb"]),
                       "runtime": request["runtime"] + analysis["runtime"]}
        return request

    def shard_resources(self, digest: str, count: int | None = None) -> dict[str, int]:
        """mem_mb and runtime of one of `count` (default: the configured number of) jobs that
        forward an extraction's inputs: the model, 1/count of the inputs, and the reductions
        run during extraction (their whole cost: a generous bound for a shard)."""
        from laminae import resources

        stage = self.stages[digest]
        cfg = self._with_checkpoint_shape(self.run_of[digest].config)
        count = count or max(1, len(self.shards(digest)))
        readers = [e for e in self.run_of[digest].experiments.values() if e.inputs == stage.group]
        n_sites = len({site for e in readers for site in e.sites})
        part = -(-self.input_bytes(digest) // count)
        request = resources.extraction_resources(cfg, stage.group, n_sites, part)
        for name in stage.config["reductions"]:  # these analyses run inside the extraction job
            analysis = resources.stage_resources("analysis", self.run_of[digest].experiments[name], cfg, part)
            request["runtime"] += analysis["runtime"]
        return request

    def _with_checkpoint_shape(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """`cfg` with the model's undeclared n_layers / d_model / n_params read from its local
        checkpoint folder (model=auto, a preset pointed elsewhere), for job sizes; unchanged
        for hub ids and random models (resources then falls back to generous defaults)."""
        from laminae.models.checkpoint import checkpoint_facts

        model = cfg["model"]
        keys = ("n_layers", "d_model", "n_params")
        pretrained = model["pretrained"]
        if all(model[key] is not None for key in keys) or not pretrained or pretrained.startswith("pkg://"):
            return cfg
        folder = self.root / Path(pretrained).expanduser()
        if not folder.is_dir():
            return cfg
        facts = checkpoint_facts(str(folder))
        return {**cfg, "model": {**model, **{key: model[key] or getattr(facts, key) for key in keys}}}

    def input_bytes(self, digest: str) -> int:
        """Size of the input files a stage reads, directly or through its extraction (0 for stimuli)."""
        from laminae.inputs import input_kind

        stage = self.stages[digest]
        while stage.kind != "extract":
            stage = self.stages[stage.upstream]
        if stage.hash not in self._input_sizes:  # asked for every job's mem_mb and runtime: read the folder once
            documents = input_kind(stage.group).documents(self.run_of[stage.hash].config, self.root)
            self._input_sizes[stage.hash] = sum(path.stat().st_size for path in documents)
        return self._input_sizes[stage.hash]

    def runs_model(self, digest: str) -> bool:
        """False for an extraction that only links and copies what stores made before hold
        (laminae.config.reuse): one quick job, no model."""
        return ExtractionRecord.parse(self.stage_record(digest)).runs_model

    def wants_gpu(self, digest: str) -> int:
        """GPUs a job forwarding an extraction's inputs (or a shard of them) asks for:
        `model.gpus` (1 unless `model.device_map` spreads the blocks over several), none when the
        run pins device=cpu (auto uses one if present). A gather asks for none."""
        config = self.run_of[digest].config
        if config["device"] == "cpu" or not self.runs_model(digest):
            return 0
        return int(config["model"]["gpus"])

    def preflight(self, local: bool = True) -> None:
        """Before any job: every model whose activations are still missing must be reachable,
        and, when jobs run on this machine (`local`), `device=cuda` needs CUDA here and the
        configured devices must hold the weights (cluster jobs check both on their node).
        Before those: the checks that need the model's shape, for runs whose config does not
        declare it (`_check_model_shapes`); after them: the disk space the stores still to
        extract need (`_check_disk_space`). Imports torch only when a check needs it."""
        self._check_model_shapes()
        checked = set()
        for digest, stage in self.stages.items():
            if stage.kind != "extract" or stage.output_dir.exists():
                continue
            config = self.run_of[digest].config
            if local and config["device"].startswith("cuda") and "device" not in checked:
                from laminae.models.loading import resolve_device

                resolve_device(config["device"])
                checked.add("device")
            model = config["model"]
            key = (model["pretrained"], model["revision"], model["dtype"], model["device_map"], model["gpus"],
                   config["device"])
            if model["random_init"] is None and key not in checked:
                from laminae.models.locate import locate_model
                from laminae.models.memory import check_weights_fit

                location = locate_model(model, project_root=self.root)  # or a one-line failure
                if local:
                    check_weights_fit(model, config["device"], location)
                checked.add(key)
        self._check_disk_space()

    def _check_model_shapes(self) -> None:
        """The experiments' `validate` hooks again, for runs whose model's depth the config left
        out (`model=auto`, a preset pointed at another checkpoint) but its local checkpoint
        folder tells (`_with_checkpoint_shape`): a setting that does not fit the model's layers
        (`qkv.plot.similarity_layers`, ...) stops the run here, not at its figure job."""
        for run in self.runs:
            if run.config["model"]["n_layers"] is not None:
                continue  # validated with the declared shape when the config was loaded
            cfg = self._with_checkpoint_shape(run.config)
            if cfg["model"]["n_layers"] is None:
                continue  # a hub id: the shape is known once downloaded (the jobs check then)
            for experiment in run.experiments.values():
                if experiment.validate is not None:
                    experiment.hook("validate")(cfg)

    def _head_widths(self, cfg: dict[str, Any], d_model: int) -> dict[str, int]:
        """Lower bounds of the q, k, v and pattern widths from the model's config read as a plain
        dict (no transformers): q = heads x head width, k and v one head each, pattern one key per
        head; {} when it does not say. (mlp_post counts d_model: no family's MLP is narrower.)"""
        import json

        model = cfg["model"]
        config: Any = {}
        if model["random_init"] is not None:
            config = model["random_init"].get("config") or {}
        elif model["pretrained"] and not model["pretrained"].startswith("pkg://"):
            path = self.root / Path(model["pretrained"]).expanduser() / "config.json"
            try:
                config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            except (OSError, ValueError):
                config = {}
        config = config if isinstance(config, Mapping) else {}
        n_heads = next((config[key] for key in ("num_attention_heads", "n_head", "num_heads")
                        if isinstance(config.get(key), int) and config[key] > 0), None)
        if n_heads is None:
            return {}
        head_dim = config["head_dim"] if isinstance(config.get("head_dim"), int) else d_model // n_heads
        return {"q": n_heads * head_dim, "k": head_dim, "v": head_dim, "pattern": n_heads}   # pattern: one key each

    def _check_disk_space(self) -> None:
        """The activation stores still to extract must fit on their disks, summed per
        filesystem, where the config tells their size (laminae.disk): the model's depth and width
        declared or read from its local checkpoint, the stored values uncompressed
        (`extract.compression` unset), and the rows known without tokenising (stimuli: one per
        word). The widths of q, k and v depend on the attention's heads: q's is read from the
        model's config (random_init.config, or a local checkpoint's config.json), k and v count
        one head each (grouped-query attention may have as few), all three none when the config
        does not say; so the sum is a lower bound: no run that fits is stopped. A corpus's rows are known once it
        is tokenised: its extraction job checks then, before it loads the weights."""
        from laminae import disk
        from laminae.inputs import input_kind

        needed: dict[int, list[Any]] = {}   # filesystem -> [folder named, bytes, stores]
        for digest, stage in self.stages.items():
            if stage.kind != "extract" or stage.group != "stimuli" or stage.output_dir.exists():
                continue
            run = self.run_of[digest]
            cfg = self._with_checkpoint_shape(run.config)
            n_layers, d_model = cfg["model"]["n_layers"], cfg["model"]["d_model"]
            if n_layers is None or d_model is None or run.runtime.get("compression"):
                continue
            rows, _, _ = input_kind(stage.group).estimate(cfg)
            heads = self._head_widths(cfg, d_model)
            new_sites = [site for site in stage.config["sites"] if site not in stage.config.get("reused", {}).get("sites", {})]
            widths = [heads.get(site, 0) if site in (*QKV, "pattern") else d_model for site in new_sites]
            size = disk.store_bytes(n_layers, rows, widths, stage.config["extract"]["storage_dtype"])
            if size:
                results = Path(run.config["results_dir"])
                device = disk.filesystem(stage.output_dir)
                named = results if disk.filesystem(results) == device else disk.existing_folder(stage.output_dir)
                entry = needed.setdefault(device, [named, 0, 0])
                entry[1] += size
                entry[2] += 1
        for folder, size, stores in needed.values():
            disk.require_space(folder, size, f"the {stores} activation store{'s' if stores > 1 else ''} still to "
                                             "extract")


class _Fingerprints:
    """The weights' fingerprint of a model config, once per model (laminae.models.fingerprint),
    with files' hashes remembered in the project's cache."""

    def __init__(self, root: Path) -> None:
        from laminae.config.compose import cache_dir
        from laminae.models.fingerprint import FingerprintCache

        self.root = root
        self.cache = FingerprintCache(cache_dir(root) / "fingerprints.json")
        self.known: dict[str, str | None] = {}

    def __call__(self, model: Mapping[str, Any]) -> str | None:
        from laminae.models.fingerprint import weights_fingerprint

        key = _model_key(model)
        if key not in self.known:
            self.known[key] = weights_fingerprint(model, self.root, self.cache)
        return self.known[key]


def _model_key(model: Mapping[str, Any]) -> str:
    """What names a model's weights in its config: where they are and which revision."""
    return stable_hash({key: model[key] for key in ("pretrained", "revision", "random_init")})
