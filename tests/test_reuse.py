"""Stores on disk are read instead of running the model again (laminae.config.reuse): one that
holds every site (and reduction) a run needs as it is; otherwise a composite store computes only
what none holds and links the rest."""

from __future__ import annotations

from pathlib import Path

import shutil

import pytest
import yaml

from laminae.config import load_runs

ROOT = Path(__file__).resolve().parents[1]


def plan(results: Path, *overrides: str):
    (run,) = load_runs(["model=tiny-gpt2", f"results_dir={results}", *overrides], project_root=ROOT)
    return run


def make_store(stage, weights: str | None = None) -> None:
    """What a finished extraction leaves for the planner: its stage record, last."""
    stage.output_dir.mkdir(parents=True)
    record = {"stage": stage.name, "hash": stage.hash, "config": stage.config}
    (stage.output_dir / "config.yaml").write_text(yaml.safe_dump({**record, "weights": weights}), encoding="utf-8")


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
    for overrides in (["experiments=[cka]"], ["experiments=[neurons]", "neurons.sites=[mlp_post]", "neurons.top_site=mlp_post"],
                      ["experiments=[qkv]", "template=mid_sentence"],
                      ["experiments=[qkv]", "extract.storage_dtype=float16"]):
        extraction = plan(tmp_path, *overrides).stages["stimuli.extract"]
        assert not extraction.output_dir.exists() and "reused" not in extraction.config, overrides


def test_a_new_site_is_computed_alone_and_the_stored_ones_linked(tmp_path):
    """qkv stored q, k, v: qkv with cka needs resid_post too. Its extraction computes resid_post
    only and links q, k, v from the qkv store; the run reads that one store."""
    from laminae.stages.records import ExtractionRecord

    narrow = plan(tmp_path, "experiments=[qkv]").stages["stimuli.extract"]
    fresh = plan(tmp_path, "experiments=[qkv,cka]").stages["stimuli.extract"]
    make_store(narrow)
    run = plan(tmp_path, "experiments=[qkv,cka]")
    composite = run.stages["stimuli.extract"]
    assert composite.config["reused"] == {"sites": {"q": narrow.hash, "k": narrow.hash, "v": narrow.hash},
                                          "reductions": {}}
    assert composite.config["sites"] == fresh.config["sites"] == ["q", "k", "v", "resid_post"]
    assert composite.hash not in (narrow.hash, fresh.hash)
    record = ExtractionRecord.parse({"stage": composite.name, "hash": composite.hash, "config": composite.config})
    assert record.new_sites == ("resid_post",) and record.runs_model
    assert record.reused_from(composite.output_dir)["q"] == narrow.output_dir
    assert {stage.upstream for name, stage in run.stages.items() if name.endswith(".analysis")} == {composite.hash}


def test_stores_that_hold_everything_between_them_run_no_model_and_link_from_the_store_that_computed(tmp_path):
    narrow = plan(tmp_path, "experiments=[qkv]").stages["stimuli.extract"]
    make_store(narrow)
    composite = plan(tmp_path, "experiments=[qkv,cka]").stages["stimuli.extract"]
    make_store(composite)
    # neurons reads mlp_post only here; with q from the composite, which links it from `narrow`
    mlp = plan(tmp_path, "experiments=[neurons]", "neurons.sites=[mlp_post]", "neurons.top_site=mlp_post")
    make_store(mlp.stages["stimuli.extract"])
    both = plan(tmp_path, "experiments=[qkv,neurons]", "neurons.sites=[mlp_post]",
                "neurons.top_site=mlp_post").stages["stimuli.extract"]
    from laminae.stages.records import ExtractionRecord

    assert both.config["reused"]["sites"] == {"q": narrow.hash, "k": narrow.hash, "v": narrow.hash,
                                              "mlp_post": mlp.stages["stimuli.extract"].hash}
    assert not ExtractionRecord.parse({"stage": both.name, "hash": both.hash, "config": both.config}).runs_model


def test_a_store_of_other_weights_or_with_its_sources_gone_serves_nothing(tmp_path):
    """A checkpoint replaced in place: a store it made before holds other activations."""
    from laminae.config.reuse import StoreChoices

    narrow = plan(tmp_path, "experiments=[qkv]").stages["stimuli.extract"]
    make_store(narrow, weights="sha256:old")

    def extraction(weights: str) -> object:
        (run,) = load_runs(["model=tiny-gpt2", f"results_dir={tmp_path}", "experiments=[qkv,cka]"], project_root=ROOT,
                           stores=StoreChoices.deciding(weights=lambda model: weights))
        return run.stages["stimuli.extract"]

    assert extraction("sha256:old").config["reused"]["sites"]["q"] == narrow.hash
    assert "reused" not in extraction("sha256:new").config
    composite = extraction("sha256:old")
    make_store(composite, weights="sha256:old")
    assert plan(tmp_path, "experiments=[cka]").stages["stimuli.extract"].hash == composite.hash
    shutil.rmtree(narrow.dir)       # what the composite links is gone: it no longer serves
    assert plan(tmp_path, "experiments=[cka]").stages["stimuli.extract"].hash != composite.hash


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
    config["overrides"][1] = "experiments=[qkv,neurons]"
    composite = extraction(job=False)             # a composite: the job rebuilds it from the DAG's record
    shutil.rmtree(wide.dir)
    assert extraction(job=True) == composite


@pytest.mark.slow
def test_through_snakemake_an_experiment_on_stored_sites_reruns_no_model(tmp_path):
    """After qkv and cka ran, qkv alone has nothing to do; neurons (mlp_post) needs the model."""
    from workflow_helpers import FAST, scheduled_rules, snakemake

    base = ["model=tiny-gpt2", *FAST, "cka.n_bootstrap=20", "cka.n_permutations=20"]
    snakemake(tmp_path, [*base, "experiments=[qkv,cka]"], "--cores", "2")
    assert scheduled_rules(snakemake(tmp_path, [*base, "experiments=[qkv]"], "-n")) == {}
    jobs = scheduled_rules(snakemake(tmp_path, [*base, "experiments=[neurons]"], "-n"))
    assert jobs["extract"] == 1 and "random_model" not in jobs


@pytest.mark.slow
def test_through_snakemake_a_composite_store_holds_what_a_fresh_extraction_would(tmp_path, built_models, monkeypatch):
    """qkv ran; qkv with cka then forwards the model for resid_post alone and links q, k, v.
    Every site reads bit for bit as a fresh extraction of both stores them; qkv's metrics on the
    composite equal those on its first store; gc keeping the second config keeps what it links."""
    import h5py
    import numpy as np

    from laminae.api import gc, plan as api_plan
    from laminae.store import ActivationStore
    from workflow_helpers import FAST, scheduled_rules, snakemake

    base = ["model=tiny-gpt2", built_models, *FAST, "cka.n_bootstrap=20", "cka.n_permutations=20"]
    reused, fresh = tmp_path / "reused", tmp_path / "fresh"
    snakemake(reused, [*base, "experiments=[qkv]"], "--cores", "2")
    assert scheduled_rules(snakemake(reused, [*base, "experiments=[qkv,cka]"], "-n"))["extract"] == 1
    snakemake(reused, [*base, "experiments=[qkv,cka]"], "--cores", "2")
    snakemake(fresh, [*base, "experiments=[qkv,cka]"], "--cores", "2")

    def stores(workdir: Path) -> dict[tuple[str, ...], Path]:
        found = {}
        for record in sorted((workdir / "results").glob("tiny-gpt2/stimuli/*/activations/config.yaml")):
            found[tuple(yaml.safe_load(record.read_text())["config"]["sites"])] = record.parent
        return found

    narrow, composite = stores(reused)[("q", "k", "v")], stores(reused)[("q", "k", "v", "resid_post")]
    (full,) = stores(fresh).values()
    with h5py.File(composite / "layer_00.h5") as handle:
        assert {site for site in handle if handle[site].is_virtual} == {"q", "k", "v"}
        assert not handle["resid_post"].is_virtual
    with h5py.File(narrow / "layer_00.h5") as handle:
        assert "resid_post" not in handle         # the first store is unchanged
    mine, theirs = ActivationStore(composite), ActivationStore(full)
    assert mine.sites == theirs.sites and (composite / "rows.tsv").read_bytes() == (full / "rows.tsv").read_bytes()
    for site in theirs.sites:
        np.testing.assert_array_equal(mine.read(site, dtype=np.float32), theirs.read(site, dtype=np.float32))

    def qkv_metrics(store: Path) -> str:
        (table,) = store.parent.glob("qkv/analysis-*/metrics/qkv_laminar.tsv")
        return table.read_text()

    assert qkv_metrics(composite) == qkv_metrics(narrow) == qkv_metrics(full)

    monkeypatch.chdir(reused)   # where the plan finds results/ (laminae gc runs there)
    keep = api_plan([*base, "experiments=[qkv,cka]"])
    unused = {item.path.resolve() for item in gc.unused([keep])}
    assert narrow.parent.resolve() not in unused and composite.parent.resolve() not in unused
    assert next(narrow.parent.glob("qkv/analysis-*")).resolve() in unused   # the analysis of the first store
    gc.remove(gc.unused([keep]))
    assert scheduled_rules(snakemake(reused, [*base, "experiments=[qkv,cka]"], "-n")) == {}
    ActivationStore(composite).read("q")
