"""Every built-in experiment's defaults work at every depth, from one layer up: a random GPT-2
of 1 and of 2 layers through the extractions, every analysis, figure and claims stage, with
nothing but the model's depth overridden (and small qkv resampling, for speed). Deeper models
are what every other test runs.

And a setting that needs the model's shape is checked once the shape is known, before any job:
for `model=auto` (a local checkpoint whose depth the config leaves out) by the plan's preflight.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from laminae.config import load_runs
from laminae.errors import ConfigError
from laminae.registry import discover
from laminae.stages.analysis import run_analysis
from laminae.stages.claims import run_claims
from laminae.stages.extract import extract
from laminae.stages.figures import run_figures
from laminae.workflow import WorkflowPlan

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = discover()
FAST = ["qkv.n_permutations=50", "qkv.n_bootstrap=50", "pathlength.n_bootstrap=50", "corpus.window_tokens=64",
        "batch_size=4", "device=cpu"]


def depth(n_layers: int) -> list[str]:
    return ["model=tiny-gpt2", f"model.random_init.config.n_layer={n_layers}", f"model.n_layers={n_layers}"]


@pytest.mark.parametrize("n_layers", [1, 2])
def test_every_experiment_runs_at_depth(n_layers, tmp_path, models_dir):
    overrides = [*depth(n_layers), *FAST, f"models_dir={models_dir}", f"results_dir={tmp_path / 'results'}"]
    plan = WorkflowPlan(runs=load_runs(overrides, project_root=ROOT), root=ROOT)
    (run,) = plan.runs
    assert set(run.experiments) == {"qkv", "adjustments", "pathlength", "rotations"}   # the defaults
    for stage in run.stages.values():
        if stage.kind == "extract":
            extract(plan.stage_record(stage.hash), run.runtime, stage.output_dir, ROOT, REGISTRY)
    for name, experiment in run.experiments.items():
        analysis, figures = run.stages[f"{name}.analysis"], run.stages[f"{name}.plot"]
        store = run.stages[f"{experiment.inputs}.extract"].output_dir
        run_analysis(experiment, plan.stage_record(analysis.hash), store, analysis.output_dir, run.runtime)
        written = run_figures(experiment, plan.stage_record(figures.hash), plan.context(figures.hash),
                              analysis.output_dir, figures.output_dir)
        assert {path.name for path in written} >= {f"{figure.name}.png" for figure in experiment.figures}
        if f"{name}.claims" in run.stages:
            claims = run.stages[f"{name}.claims"]
            run_claims(experiment, plan.stage_record(claims.hash), plan.context(claims.hash),
                       analysis.output_dir, claims.output_dir)
            assert (claims.output_dir / "claims.tsv").is_file()


def test_default_depth_bands_keep_their_hash():
    """The rotations figure stage of a deep model hashes what it always did: depth_bands stays 3
    (a model with fewer layers draws one band per layer, from the same setting)."""
    (run,) = load_runs(["model=tiny-gpt2"], project_root=ROOT)
    assert run.stages["rotations.plot"].config["rotations"]["plot"]["depth_bands"] == 3


def checkpoint(folder: Path, n_layers: int) -> Path:
    """A local checkpoint folder whose config.json tells the depth (all the preflight reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": n_layers, "n_embd": 64,
                                                    "n_head": 4}), encoding="utf-8")
    return folder


def auto_plan(folder: Path, tmp_path: Path, *overrides: str) -> WorkflowPlan:
    runs = load_runs(["model=auto", f"model.pretrained={folder}", "experiments=[qkv]",
                      f"results_dir={tmp_path / 'results'}", *overrides], project_root=ROOT)
    return WorkflowPlan(runs=runs, root=ROOT)


def test_preflight_checks_settings_against_the_depth_of_a_local_checkpoint(tmp_path, monkeypatch):
    """model=auto leaves the depth out of the config: the preflight reads it from the folder and
    runs the experiments' checks before any job (here before the model is even located)."""
    import laminae.models.locate as locate

    monkeypatch.setattr(locate, "locate_model", lambda model, **kwargs: str(model["pretrained"]))
    monkeypatch.setattr("laminae.models.memory.check_weights_fit", lambda *args, **kwargs: None)
    folder = checkpoint(tmp_path / "two-layers", 2)
    try:
        plan = auto_plan(folder, tmp_path, "qkv.plot.similarity_layers=[0,5]")
    except ConfigError:
        pytest.skip("model=auto declares this checkpoint's depth at load time: checked there")
    assert plan.runs[0].config["model"]["n_layers"] is None
    with pytest.raises(ConfigError, match="qkv.plot.similarity_layers") as error:
        plan.preflight(local=False)
    assert "\n" not in str(error.value) and "2-layer" in str(error.value)
    auto_plan(folder, tmp_path).preflight(local=False)   # the defaults fit 2 layers
