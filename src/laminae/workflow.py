"""What the Snakefile asks of laminae: the runs of a config, their targets, and per-job lookups.

Rules match output paths with wildcards that end in a stage hash; `WorkflowPlan` maps the hash
back to the stage's config, inputs and resources:

    >>> plan = WorkflowPlan.from_snakemake_config({"overrides": ["model=tiny-gpt2"]}, Path("."))
    >>> plan.targets()[:1]
    ['results/tiny-gpt2/qkv/space_furniture_fruit.next_word-f1b84d50bc/analysis-.../plot-.../figures/qkv_laminar.png']
    >>> plan.stage_record(wildcards)      # {"stage": "qkv.extract", "hash": ..., "config": {...}}

Nothing here imports torch: parsing the Snakefile stays fast (a no-op rerun takes seconds).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from laminae.config import Run, Stage, load_runs, stable_hash
from laminae.errors import ConfigError
from laminae.stage_runner import WORKFLOW_CONFIG_KEY

CONFIG_KEYS = ("overrides", "sweep")
# Files each stage writes inside its output folder (besides config.yaml).
STAGE_FILES = {
    "qkv.analysis": ("qkv_laminar.tsv", "similarity.h5"),
    "qkv.plot": ("qkv_laminar.png", "qkv_laminar.pdf", "qkv_similarity.png", "qkv_similarity.pdf"),
    "adjustments.analysis": ("adjustments.tsv", "adjustment_cosine.h5"),
    "adjustments.plot": ("adjustments_laminar.png", "adjustments_laminar.pdf", "adjustments_hist.png",
                         "adjustments_hist.pdf", "adjustments_norms.png", "adjustments_norms.pdf"),
}


def export_source_path(root: Path) -> None:
    """Put `<root>/src` on PYTHONPATH for job processes, so rule scripts import this checkout's
    laminae even in a conda env or on a cluster node where it is not installed."""
    paths = [str(root / "src"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


@dataclass(frozen=True)
class Comparison:
    """The overlay of one experiment's runs in a sweep: `<results>/sweeps/<experiment>-<hash>/`."""

    experiment: str
    hash: str
    config: dict[str, Any]       # experiment, runs [{label, analysis hash}], plot settings
    tables: list[str]            # each run's metrics table, in `config["runs"]` order
    dir: Path

    @property
    def files(self) -> list[str]:
        return [str(self.dir / f"compare_{self.experiment}.{ext}") for ext in ("png", "pdf")] + [str(self.dir / "sweep.yaml")]


@dataclass
class WorkflowPlan:
    runs: list[Run]
    root: Path
    stages: dict[str, Stage] = field(default_factory=dict)
    run_of: dict[str, Run] = field(default_factory=dict)
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    _corpus_sizes: dict[str, int] = field(default_factory=dict, repr=False)  # corpus.path -> bytes

    def __post_init__(self) -> None:
        for run in self.runs:
            for stage in run.stages.values():
                self.stages.setdefault(stage.hash, stage)
                self.run_of.setdefault(stage.hash, run)
        if len(self.runs) > 1:
            for experiment in ("qkv", "adjustments"):
                comparison = self._comparison(experiment)
                if comparison is not None:
                    self.comparisons[comparison.hash] = comparison

    def _comparison(self, experiment: str) -> Comparison | None:
        """Runs whose analyses differ, each labelled by the sweep values it does not share with
        runs of the same analysis (a template sweep does not split experiment 2's curves)."""
        groups: dict[str, list[Run]] = {}
        for run in self.runs:
            if f"{experiment}.analysis" in run.stages:
                groups.setdefault(run.stages[f"{experiment}.analysis"].hash, []).append(run)
        if len(groups) < 2:
            return None
        runs = []
        for analysis_hash, members in groups.items():
            shared = [o for o in members[0].overrides if all(o in m.overrides for m in members)]
            run = {"label": " ".join(shared) or "default", "analysis": analysis_hash}
            if experiment == "qkv":
                run["selectivity"] = members[0].config["qkv"]["selectivity"]
            runs.append(run)
        config = {"stage": f"{experiment}.compare", "experiment": experiment, "runs": runs,
                  "plot": {"dpi": self.runs[0].config["plot"]["dpi"]}}
        digest = stable_hash(config)
        tables = [self.stage_files(self.stages[run["analysis"]])[0] for run in runs]
        return Comparison(experiment, digest, config, tables, Path(self.results_dir) / "sweeps" / f"{experiment}-{digest}")

    @classmethod
    def from_snakemake_config(cls, config: Mapping[str, Any], root: Path) -> "WorkflowPlan":
        unknown = sorted(set(config) - set(CONFIG_KEYS) - {WORKFLOW_CONFIG_KEY})
        if unknown:
            raise ConfigError(f"--config {unknown[0]}", "only overrides=[...] and sweep=[...], e.g. "
                              f"--config 'overrides=[\"{unknown[0]}={config[unknown[0]]}\"]'", has_value=False)
        runs = load_runs(config.get("overrides", []), config.get("sweep", []), project_root=root)
        return cls(runs=runs, root=root)

    @property
    def results_dir(self) -> str:
        return self.runs[0].config["results_dir"]

    @property
    def models_dir(self) -> str:
        return self.runs[0].config["models_dir"]

    def inject_into(self, config: dict[str, Any]) -> None:
        """Put the project root and each extraction's runtime settings into the workflow config,
        where `stage_runner` finds them (see there for why not in params)."""
        runtime = {h: self.run_of[h].runtime for h, s in self.stages.items() if s.kind == "extract"}
        config[WORKFLOW_CONFIG_KEY] = {"root": str(self.root), "runtime": runtime}

    def stage(self, digest: str) -> Stage:
        return self.stages[digest]

    def stage_record(self, digest: str) -> dict[str, Any]:
        stage = self.stages[digest]
        return {"stage": stage.name, "hash": stage.hash, "config": stage.config}

    def stage_files(self, stage: Stage) -> list[str]:
        names = STAGE_FILES.get(stage.name, ())
        return [str(stage.output_dir / name) for name in (*names, "config.yaml")] if names else [str(stage.output_dir)]

    def targets(self) -> list[str]:
        """Every run's metrics and figures, without duplicates, in run order; then the sweep's
        comparison figures."""
        seen: dict[str, None] = {}
        for run in self.runs:
            for stage in run.stages.values():
                if stage.kind != "extract":
                    seen.update(dict.fromkeys(self.stage_files(stage)))
        for comparison in self.comparisons.values():
            seen.update(dict.fromkeys(comparison.files))
        return list(seen)

    def comparison_record(self, digest: str) -> dict[str, Any]:
        comparison = self.comparisons[digest]
        return {"stage": comparison.config["stage"], "hash": digest, "config": comparison.config}

    def context(self, digest: str) -> dict[str, Any]:
        """Labels for titles and captions: model, inputs and the analysis settings."""
        stage = self.stages[digest]
        cfg = self.run_of[digest].config
        labels = {"model": cfg["model"]["name"], "random_weights": cfg["model"]["random_init"] is not None,
                  "experiment": stage.experiment}
        if stage.experiment == "qkv":
            labels.update(stimuli=cfg["stimuli"]["name"], template=cfg["template"]["text"],
                          position=cfg["extract"]["position"], analysis=cfg["qkv"])
        else:
            labels.update(corpus=cfg["corpus"]["name"], analysis=cfg["adjustments"])
        return labels

    def extract_inputs(self, digest: str) -> dict[str, Any]:
        """Files an extraction reads: corpus documents and, for random models, the built model."""
        from laminae.config import corpus_documents

        stage = self.stages[digest]
        cfg = self.run_of[digest].config
        inputs: dict[str, Any] = {}
        if stage.experiment == "adjustments":
            inputs["corpus"] = [str(p) for p in corpus_documents(cfg["corpus"]["path"], self.root)]
        if cfg["model"]["random_init"] is not None:
            inputs["model"] = str(self.random_model_dir(cfg["model"]))
        return inputs

    def random_model_dir(self, model_cfg: dict[str, Any]) -> Path:
        """`laminae.models.random_models.random_model_dir`, without importing that module: it
        imports torch and transformers (seconds), which every DAG build would pay, twice per
        cluster job (tests/test_workflow_resources.py checks that both agree)."""
        from laminae.config.stages import stable_hash as folder_hash

        name = model_cfg.get("name") or model_cfg["random_init"].get("architecture", "random")
        return Path(self.models_dir) / f"{name}-{folder_hash(model_cfg['random_init'])}"

    def random_model_config(self, folder_name: str) -> dict[str, Any]:
        for run in self.runs:
            model = run.config["model"]
            if model["random_init"] is not None and self.random_model_dir(model).name == folder_name:
                return model
        raise KeyError(folder_name)

    def extraction_resources(self, digest: str) -> dict[str, int]:
        from laminae.resources import extraction_resources

        stage = self.stages[digest]
        return extraction_resources(self.run_of[digest].config, stage.experiment, self.corpus_bytes(digest))

    def resources(self, digest: str) -> dict[str, int]:
        """mem_mb and runtime (minutes) of any stage's job: extraction, analysis or figures
        (see laminae.resources). They scale with the model and the experiment's input size."""
        from laminae import resources

        stage = self.stages[digest]
        estimate = {"extract": resources.extraction_resources, "analysis": resources.analysis_resources,
                    "plot": resources.plot_resources}[stage.kind]
        return estimate(self.run_of[digest].config, stage.experiment, self.corpus_bytes(digest))

    def corpus_bytes(self, digest: str) -> int:
        """Size of the corpus an adjustments stage reads, directly or through its extraction (0 for qkv)."""
        from laminae.config import corpus_documents

        if self.stages[digest].experiment != "adjustments":
            return 0
        path = self.run_of[digest].config["corpus"]["path"]
        if path not in self._corpus_sizes:  # asked for every job's mem_mb and runtime: read the folder once
            self._corpus_sizes[path] = sum(p.stat().st_size for p in corpus_documents(path, self.root))
        return self._corpus_sizes[path]

    def wants_gpu(self, digest: str) -> int:
        """Extraction asks for a GPU unless the run pins device=cpu (auto uses one if present)."""
        return 0 if self.run_of[digest].config["device"] == "cpu" else 1

    def preflight(self, local: bool = True) -> None:
        """Before any job: every model whose activations are still missing must be reachable,
        and, when jobs run on this machine (`local`), `device=cuda` needs CUDA here (cluster
        jobs check it on their node). Imports torch only when a check needs it."""
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
            key = (model["pretrained"], model["revision"])
            if model["random_init"] is None and key not in checked:
                from laminae.models.locate import check_model_reachable

                check_model_reachable(model, self.root)
                checked.add(key)
