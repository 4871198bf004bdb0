"""Cluster resource requests (laminae.resources through WorkflowPlan) and the execution
profiles in profiles/. The end-to-end SLURM run is tests/test_slurm.py."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from laminae import resources
from laminae.models.random_models import random_model_dir
from laminae.registry import discover
from laminae.workflow import WorkflowPlan

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROFILES = PROJECT_ROOT / "profiles"
EXPERIMENTS = discover()


def plan_for(*overrides: str) -> WorkflowPlan:
    return WorkflowPlan.from_snakemake_config({"overrides": list(overrides)}, PROJECT_ROOT)


def stage_digest(plan: WorkflowPlan, name: str) -> str:
    (digest,) = [h for h, stage in plan.stages.items() if stage.name == name]
    return digest


@pytest.fixture(scope="module")
def default_cfg():
    return plan_for().runs[0].config  # GPT-2 Large, the seed experiments


def test_small_runs_ask_for_the_floors(default_cfg):
    """The seed experiments on any GPT-2 size fit the fixed minimum of analysis and figure jobs."""
    plan = plan_for("model=gpt2-xl")
    for experiment in ("qkv", "adjustments"):
        assert plan.resources(stage_digest(plan, f"{experiment}.analysis")) == resources.ANALYSIS_FLOOR
        assert plan.resources(stage_digest(plan, f"{experiment}.plot")) == resources.PLOT_FLOOR


def analysis(cfg: dict, experiment: str, input_bytes: int = 0) -> dict[str, int]:
    return resources.stage_resources("analysis", EXPERIMENTS[experiment], cfg, input_bytes)


def figures(cfg: dict, experiment: str, input_bytes: int = 0) -> dict[str, int]:
    return resources.stage_resources("plot", EXPERIMENTS[experiment], cfg, input_bytes)


def test_adjustment_requests_grow_with_layers_times_tokens(default_cfg):
    small = analysis(default_cfg, "adjustments", input_bytes=4_000)
    tokens = analysis(default_cfg, "adjustments", input_bytes=400_000_000)   # 100M tokens
    deeper = copy.deepcopy(default_cfg)
    deeper["model"]["n_layers"] *= 4
    both = analysis(deeper, "adjustments", input_bytes=400_000_000)
    assert small == resources.ANALYSIS_FLOOR
    assert small["mem_mb"] < tokens["mem_mb"] < both["mem_mb"] and small["runtime"] < tokens["runtime"] < both["runtime"]
    # The per-token cosines (float64 + mask, three copies) dominate: 36 layers x 100M tokens x 27 B.
    assert tokens["mem_mb"] == pytest.approx(36 * 100e6 * 27 / 2**20, rel=0.05)
    drawn = figures(default_cfg, "adjustments", input_bytes=400_000_000)
    assert drawn["mem_mb"] > resources.PLOT_FLOOR["mem_mb"] and drawn["runtime"] >= resources.PLOT_FLOOR["runtime"]


def test_qkv_requests_grow_with_words_and_resamples(default_cfg):
    many = copy.deepcopy(default_cfg)
    many["stimuli"]["categories"] = {c: [f"{c}{i}" for i in range(400)] for c in ("a", "b", "c")}
    many["qkv"]["n_bootstrap"] = many["qkv"]["n_permutations"] = 10_000
    request = analysis(many, "qkv")
    assert request["mem_mb"] > resources.ANALYSIS_FLOOR["mem_mb"] and request["runtime"] > resources.ANALYSIS_FLOOR["runtime"]
    assert figures(many, "qkv")["mem_mb"] > resources.PLOT_FLOOR["mem_mb"]
    assert analysis(default_cfg, "qkv") == resources.ANALYSIS_FLOOR


def test_extraction_requests_grow_with_the_sites_it_captures(default_cfg):
    three = resources.extraction_resources(default_cfg, "corpus", n_sites=3, input_bytes=4_000_000)
    seven = resources.extraction_resources(default_cfg, "corpus", n_sites=7, input_bytes=4_000_000)
    assert three["mem_mb"] < seven["mem_mb"] and three["runtime"] == seven["runtime"]


def test_an_analysis_run_during_extraction_lengthens_the_extraction_job():
    stored, during = plan_for("model=tiny-gpt2"), plan_for("model=tiny-gpt2", "adjustments.during_extraction=true")
    extra = resources.stage_resources("analysis", EXPERIMENTS["adjustments"], during.runs[0].config,
                                      during.input_bytes(stage_digest(during, "corpus.extract")))["runtime"]
    assert (during.resources(stage_digest(during, "corpus.extract"))["runtime"]
            == stored.resources(stage_digest(stored, "corpus.extract"))["runtime"] + extra)


def test_plan_resources_dispatch_on_the_stage_and_read_the_corpus_size():
    plan = plan_for("model=tiny-gpt2")
    cfg = plan.runs[0].config
    corpus = PROJECT_ROOT / "data" / "corpora" / "nietzsche.txt"
    assert plan.resources(stage_digest(plan, "stimuli.extract")) == resources.extraction_resources(cfg, "stimuli", 3)
    assert plan.resources(stage_digest(plan, "corpus.extract")) == resources.extraction_resources(
        cfg, "corpus", 4, corpus.stat().st_size)
    for name in ("stimuli.extract", "corpus.extract"):
        assert plan.wants_gpu(stage_digest(plan, name)) == 1
    assert plan.input_bytes(stage_digest(plan, "qkv.analysis")) == 0
    for name in ("corpus.extract", "adjustments.analysis", "adjustments.plot"):
        assert plan.input_bytes(stage_digest(plan, name)) == corpus.stat().st_size
    cpu = plan_for("model=tiny-gpt2", "device=cpu")
    assert cpu.wants_gpu(stage_digest(cpu, "stimuli.extract")) == 0


def test_the_plan_names_random_model_folders_like_the_model_module():
    plan = plan_for("model=tiny-llama")
    model = plan.runs[0].config["model"]
    assert plan.random_model_dir(model) == random_model_dir(model, plan.models_dir)


def test_building_the_dag_imports_no_torch():
    """Every job on a cluster re-parses the Snakefile (twice: sbatch, then srun): keep it light."""
    code = (
        "import sys; from pathlib import Path; from laminae.workflow import WorkflowPlan\n"
        f"plan = WorkflowPlan.from_snakemake_config({{'overrides': ['model=tiny-gpt2']}}, Path({str(PROJECT_ROOT)!r}))\n"
        "plan.targets(); [plan.source_inputs(h) for h, s in plan.stages.items() if s.kind == 'extract']\n"
        "plan.extraction_hashes(gathered=True); plan.extraction_hashes(gathered=False)\n"
        "[plan.resources(h) for h in plan.stages]\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_preflight_imports_no_torch(tmp_path):
    """The preflight locates every model still to extract before the first job: it must not pay
    for importing torch and transformers (seconds) to do so."""
    code = (
        "import sys; from pathlib import Path; from laminae.workflow import WorkflowPlan\n"
        f"config = {{'overrides': ['model=minilm-l6', 'results_dir={tmp_path / 'results'}']}}\n"
        f"plan = WorkflowPlan.from_snakemake_config(config, Path({str(PROJECT_ROOT)!r}))\n"
        "assert any(s.kind == 'extract' and not s.output_dir.exists() for s in plan.stages.values())\n"
        "plan.preflight()\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_no_default_profile():
    """Snakemake applies profiles/default/ to every run, tests included: cluster settings must
    live in a named profile."""
    assert not (PROFILES / "default").exists()


def test_the_slurm_profile_holds_no_site_settings():
    profile = yaml.safe_load((PROFILES / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    defaults = profile["default-resources"]
    assert {"mem_mb", "runtime"} <= set(defaults)
    assert not {"slurm_account", "slurm_partition"} & set(defaults)
    assert profile["rerun-incomplete"] is True and profile["retries"] >= 1 and profile["latency-wait"] >= 30


def test_the_local_profile_runs_one_gpu_job_at_a_time():
    profile = yaml.safe_load((PROFILES / "local" / "config.yaml").read_text())
    assert profile["resources"] == {"gpu": 1} and profile["cores"] == "all"
    assert "executor" not in profile
