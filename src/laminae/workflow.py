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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from laminae.config import Run, Stage, load_runs
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


@dataclass
class WorkflowPlan:
    runs: list[Run]
    root: Path
    stages: dict[str, Stage] = field(default_factory=dict)
    run_of: dict[str, Run] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for run in self.runs:
            for stage in run.stages.values():
                self.stages.setdefault(stage.hash, stage)
                self.run_of.setdefault(stage.hash, run)

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
        """Every run's metrics and figures, without duplicates, in run order."""
        seen: dict[str, None] = {}
        for run in self.runs:
            for stage in run.stages.values():
                if stage.kind != "extract":
                    seen.update(dict.fromkeys(self.stage_files(stage)))
        return list(seen)

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
        from laminae.models.random_models import random_model_dir

        return random_model_dir(model_cfg, self.models_dir)

    def random_model_config(self, folder_name: str) -> dict[str, Any]:
        for run in self.runs:
            model = run.config["model"]
            if model["random_init"] is not None and self.random_model_dir(model).name == folder_name:
                return model
        raise KeyError(folder_name)

    def extraction_resources(self, digest: str) -> dict[str, int]:
        from laminae.resources import extraction_resources

        stage = self.stages[digest]
        corpus_bytes = sum(Path(p).stat().st_size for p in self.extract_inputs(digest).get("corpus", []))
        return extraction_resources(self.run_of[digest].config, stage.experiment, corpus_bytes)

    def wants_gpu(self, digest: str) -> int:
        """Extraction asks for a GPU unless the run pins device=cpu (auto uses one if present)."""
        return 0 if self.run_of[digest].config["device"] == "cpu" else 1

    def preflight(self) -> None:
        """Before any job: every model whose activations are still missing must be reachable."""
        from laminae.models.loading import check_model_reachable

        checked = set()
        for digest, stage in self.stages.items():
            model = self.run_of[digest].config["model"]
            key = (model["pretrained"], model["revision"])
            if stage.kind != "extract" or model["random_init"] is not None or key in checked:
                continue
            if not stage.output_dir.exists():
                check_model_reachable(model, self.root)
                checked.add(key)
