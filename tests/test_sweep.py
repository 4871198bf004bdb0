"""Sweeps: cartesian expansion into one DAG, per-experiment comparison figures."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from laminae.plots.overlay import depth_axis
from laminae.workflow import WorkflowPlan
from workflow_helpers import FAST, PROJECT_ROOT, scheduled_rules, snakemake

SWEEP = ["model=tiny-gpt2,minilm-l6", "template=next_word,mid_sentence"]


def plan(overrides=(), sweep=SWEEP) -> WorkflowPlan:
    return WorkflowPlan.from_snakemake_config({"overrides": list(overrides), "sweep": list(sweep)}, PROJECT_ROOT)


def test_comparison_labels_keep_only_what_distinguishes_an_analysis():
    comparisons = {c.experiment: c for c in plan().comparisons.values()}
    assert [run["label"] for run in comparisons["qkv"].config["runs"]] == [
        "model=tiny-gpt2 template=next_word", "model=tiny-gpt2 template=mid_sentence",
        "model=minilm-l6 template=next_word", "model=minilm-l6 template=mid_sentence"]
    # templates do not touch experiment 2: its runs collapse to one curve per model
    assert [run["label"] for run in comparisons["adjustments"].config["runs"]] == ["model=tiny-gpt2", "model=minilm-l6"]
    assert all(path.endswith("/metrics") and "/qkv/analysis-" in path for path in comparisons["qkv"].metrics)
    assert [run["settings"]["selectivity"] for run in comparisons["qkv"].config["runs"]] == ["ratio"] * 4


def test_no_comparison_without_a_sweep_or_when_an_experiment_does_not_vary():
    assert plan(sweep=[]).comparisons == {}
    only_templates = {c.experiment for c in plan(sweep=["template=next_word,mid_sentence"]).comparisons.values()}
    assert only_templates == {"qkv"}


def test_comparison_hash_follows_analysis_and_plot_settings_only():
    base = {c.experiment: c.hash for c in plan().comparisons.values()}
    assert {c.experiment: c.hash for c in plan(["qkv.n_permutations=10"]).comparisons.values()}["adjustments"] == base["adjustments"]
    assert {c.experiment: c.hash for c in plan(["qkv.n_permutations=10"]).comparisons.values()}["qkv"] != base["qkv"]
    assert {c.experiment: c.hash for c in plan(["batch_size=1"]).comparisons.values()} == base


def test_depth_axis_is_relative_only_when_depths_differ():
    same, label = depth_axis([4, 4])
    assert label == "layer" and np.array_equal(same[0], np.arange(4))
    mixed, label = depth_axis([4, 6])
    assert label.startswith("relative depth")
    assert np.allclose(mixed[0], [0, 1 / 3, 2 / 3, 1]) and np.allclose(mixed[1], np.linspace(0, 1, 6))


@pytest.mark.slow
def test_sweep_runs_every_combination_once_and_overlays_them(tmp_path):
    overrides = [*FAST, "experiments=[qkv]", "qkv.claims=[]"]   # claims and their sweep matrix: test_claims.py
    dry = snakemake(tmp_path, overrides, "-n", sweep=SWEEP)
    assert scheduled_rules(dry) == {"random_model": 1, "extract": 4, "qkv_analysis": 4, "qkv_figures": 4,
                                    "qkv_compare": 1, "all": 1}
    snakemake(tmp_path, overrides, "--cores", "2", sweep=SWEEP)
    (folder,) = (tmp_path / "results" / "sweeps").glob("qkv-*")
    assert (folder / "compare_qkv.png").stat().st_size > 0 and (folder / "compare_qkv.pdf").stat().st_size > 0
    record = yaml.safe_load((folder / "sweep.yaml").read_text())
    assert [run["label"] for run in record["runs"]][0] == "model=tiny-gpt2 template=next_word" and len(record["runs"]) == 4
    assert all((tmp_path / run["metrics"] / "qkv_laminar.tsv").is_file() for run in record["runs"])
    assert scheduled_rules(snakemake(tmp_path, overrides, "-n", sweep=SWEEP)) == {}
    # a plot setting reruns only figures (and the comparison, drawn at the same dpi)
    dry = snakemake(tmp_path, [*overrides, "plot.dpi=100"], "-n", sweep=SWEEP)
    assert scheduled_rules(dry) == {"qkv_figures": 4, "qkv_compare": 1, "all": 1}
