"""A store on disk that holds every site (and reduction) a run needs is read instead of running
the model again (laminae.config.reuse), and only then."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from laminae.config import load_runs

ROOT = Path(__file__).resolve().parents[1]


def plan(results: Path, *overrides: str):
    (run,) = load_runs(["model=tiny-gpt2", f"results_dir={results}", *overrides], project_root=ROOT)
    return run


def make_store(stage) -> None:
    """What a finished extraction leaves for the planner: its stage record, last."""
    stage.output_dir.mkdir(parents=True)
    (stage.output_dir / "config.yaml").write_text(
        yaml.safe_dump({"stage": stage.name, "hash": stage.hash, "config": stage.config}), encoding="utf-8")


def test_a_run_whose_sites_are_stored_reads_that_store(tmp_path):
    wide = plan(tmp_path, "experiments=[qkv,cka]").stages["stimuli.extract"]
    assert wide.config["sites"] == ["q", "k", "v", "resid_post"]
    own = plan(tmp_path, "experiments=[qkv]").stages["stimuli.extract"]
    make_store(wide)
    run = plan(tmp_path, "experiments=[qkv]")
    assert run.stages["stimuli.extract"].hash == wide.hash != own.hash
    assert run.stages["qkv.analysis"].upstream == wide.hash
    assert run.stages["qkv.analysis"].dir.parent.parent == wide.dir
    make_store(own)   # its own store, once it exists, is its own
    assert plan(tmp_path, "experiments=[qkv]").stages["stimuli.extract"].hash == own.hash


def test_a_missing_site_or_another_model_or_input_is_not_covered(tmp_path):
    make_store(plan(tmp_path, "experiments=[qkv]").stages["stimuli.extract"])
    for overrides in (["experiments=[cka]"], ["experiments=[neurons]"], ["experiments=[qkv]", "template=mid_sentence"],
                      ["experiments=[qkv]", "extract.storage_dtype=float16"]):
        run = plan(tmp_path, *overrides)
        assert not run.stages["stimuli.extract"].output_dir.exists(), overrides


def test_eager_attention_stores_serve_only_runs_that_capture_patterns(tmp_path):
    """Eager and fast attention kernels round differently: a store with `pattern` is never read
    for resid_post by a run that would have computed it with the fast kernel."""
    eager = plan(tmp_path, "experiments=[attention]", "attention.inputs=stimuli",
                 "attention.during_extraction=false").stages["stimuli.extract"]
    assert eager.config["sites"] == ["resid_post", "pattern"]
    make_store(eager)
    assert plan(tmp_path, "experiments=[cka]").stages["stimuli.extract"].hash != eager.hash
    reduced = plan(tmp_path, "experiments=[attention,cka]", "attention.inputs=stimuli").stages["stimuli.extract"]
    assert reduced.hash != eager.hash        # attention's reduction is not in the stored store


def test_the_fewest_sites_win_and_a_foreign_record_is_ignored(tmp_path):
    widest = plan(tmp_path, "experiments=[qkv,cka,neurons]").stages["stimuli.extract"]
    wide = plan(tmp_path, "experiments=[qkv,cka]").stages["stimuli.extract"]
    make_store(widest)
    make_store(wide)
    assert plan(tmp_path, "experiments=[cka]").stages["stimuli.extract"].hash == wide.hash
    record = wide.output_dir / "config.yaml"
    stage = yaml.safe_load(record.read_text())
    stage["config"]["sites"].append("mlp_out")       # no longer what its folder's hash says
    record.write_text(yaml.safe_dump(stage))
    assert plan(tmp_path, "experiments=[cka]").stages["stimuli.extract"].hash == widest.hash


def test_a_job_plans_with_the_stores_the_dag_chose(tmp_path, monkeypatch):
    """A cluster job parses the Snakefile again while other jobs write stores: it must plan the
    stage it was submitted for, so it reads the DAG's choices instead of choosing again."""
    from laminae.config.compose import CACHE_DIR
    from laminae.workflow import WorkflowPlan

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAMINAE_CACHE_DIR", str(tmp_path / CACHE_DIR))
    config = {"overrides": ["model=tiny-gpt2", "experiments=[qkv]", f"results_dir={tmp_path}"]}

    def extraction(job: bool) -> str:
        return WorkflowPlan.from_snakemake_config(config, ROOT, job=job).runs[0].stages["stimuli.extract"].hash

    own = extraction(job=False)                   # nothing on disk: the run's own store
    wide = plan(tmp_path, "experiments=[qkv,cka]").stages["stimuli.extract"]
    make_store(wide)                              # another job finishes a store that covers it
    assert extraction(job=True) == own            # the job still plans what the DAG planned
    assert extraction(job=False) == wide.hash     # a new DAG reads the covering store...
    assert extraction(job=True) == wide.hash      # ...and so do its jobs


@pytest.mark.slow
def test_through_snakemake_an_experiment_on_stored_sites_reruns_no_model(tmp_path):
    """After qkv and cka ran, qkv alone has nothing to do; neurons (mlp_post) needs the model."""
    from workflow_helpers import FAST, scheduled_rules, snakemake

    base = ["model=tiny-gpt2", *FAST, "cka.n_bootstrap=20", "cka.n_permutations=20"]
    snakemake(tmp_path, [*base, "experiments=[qkv,cka]"], "--cores", "2")
    assert scheduled_rules(snakemake(tmp_path, [*base, "experiments=[qkv]"], "-n")) == {}
    jobs = scheduled_rules(snakemake(tmp_path, [*base, "experiments=[neurons]"], "-n"))
    assert jobs["extract"] == 1 and "random_model" not in jobs
