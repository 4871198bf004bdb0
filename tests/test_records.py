"""The typed stage records (laminae.stages.records): every stage a real plan makes parses into
the record of its kind, whose fields are the values of its hashed config; the dict comes back
unchanged (provenance records it verbatim); a record missing a key is named in one error."""

from __future__ import annotations

from pathlib import Path

import pytest

from laminae.config.stages import RUNTIME_KEYS
from laminae.stages.records import (AnalysisRecord, ClaimsMatrixRecord, ClaimsRecord, CompareRecord, ExtractionRecord,
                                    FigureRecord, ModelBuildRecord, Runtime, StageRecord, record_of)
from laminae.workflow import WorkflowPlan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep() -> WorkflowPlan:
    overrides = ["model=tiny-gpt2", "adjustments.during_extraction=true", "qkv.resolution=heads"]
    return WorkflowPlan.from_snakemake_config({"overrides": overrides, "sweep": ["qkv.n_permutations=0,20"]}, ROOT)


def test_every_stage_parses_into_its_kind_with_its_config_values(sweep):
    kinds = {"extract": ExtractionRecord, "analysis": AnalysisRecord, "plot": FigureRecord, "claims": ClaimsRecord}
    seen = set()
    for digest, stage in sweep.stages.items():
        raw = sweep.stage_record(digest)
        record = record_of(raw)
        assert type(record) is kinds[stage.kind], stage.name
        assert (record.name, record.hash, record.config) == (stage.name, digest, stage.config)
        assert record.as_dict() == raw
        assert record.upstream == stage.config["upstream"]
        config, group = stage.config, stage.group
        if stage.kind == "extract":
            assert record.inputs == group and list(record.sites) == config["sites"]
            assert record.storage_dtype == config["extract"]["storage_dtype"] and record.model == config["model"]
            assert {name: (r.version, r.settings) for name, r in record.reductions.items()} == {
                name: (spec["version"], spec["settings"]) for name, spec in config["reductions"].items()}
        elif stage.kind == "analysis":
            assert record.experiment == group and record.settings == config[group]
        elif stage.kind == "plot":
            assert (record.plot, record.dpi) == (config[group]["plot"], config["plot"]["dpi"])
            assert list(record.references) == config.get("references", [])
        else:
            assert list(record.claims) == config[group]["claims"] and record.dpi == config["plot"]["dpi"]
        seen.add(stage.kind)
    assert seen == set(kinds)
    reductions = [r for r in map(record_of, map(sweep.stage_record, sweep.stages)) if isinstance(r, ExtractionRecord)
                  and r.reductions]
    assert reductions, "adjustments.during_extraction=true: the corpus extraction carries a reduction"


def test_sweep_stages_parse(sweep):
    comparison = next(iter(sweep.comparisons.values()))
    record = record_of(sweep.comparison_record(comparison.hash))
    assert isinstance(record, CompareRecord) and record.experiment == comparison.experiment
    assert list(record.runs) == comparison.config["runs"] and record.dpi == comparison.config["plot"]["dpi"]
    assert record.plot == comparison.config["plot"][comparison.experiment]
    assert record.steps is None   # a settings sweep is no set of checkpoints
    matrix = record_of(sweep.claims_matrix_record())
    assert isinstance(matrix, ClaimsMatrixRecord) and list(matrix.runs) == sweep.claims_matrix.config["runs"]


def test_model_build_record(sweep):
    model = sweep.runs[0].config["model"]
    folder = sweep.random_model_dir(model).name
    record = record_of({"stage": "model.build", "hash": folder, "config": sweep.random_model_config(folder)})
    assert isinstance(record, ModelBuildRecord) and record.random_init == model["random_init"]


def test_a_record_missing_a_key_is_named():
    with pytest.raises(ValueError, match="not a analysis record.*'qkv'"):
        AnalysisRecord.parse({"stage": "qkv.analysis", "hash": "0" * 10, "config": {"upstream": None}})
    with pytest.raises(ValueError, match="'hash'"):
        StageRecord.parse({"stage": "qkv.analysis", "config": {}})


def test_parse_is_idempotent_and_converts_between_kinds(sweep):
    digest = next(h for h, s in sweep.stages.items() if s.kind == "analysis")
    record = AnalysisRecord.parse(sweep.stage_record(digest))
    assert AnalysisRecord.parse(record) is record
    assert StageRecord.parse(record).as_dict() == record.as_dict()


def test_runtime_round_trips_the_plans_runtime(sweep):
    """What an extraction records as its runtime is the plan's, key for key, in the same order."""
    runtime = sweep.runs[0].runtime
    assert list(runtime) == [key.rsplit(".", 1)[-1] for key in RUNTIME_KEYS]
    assert Runtime.parse(runtime).as_dict() == runtime
    assert list(Runtime.parse(runtime).as_dict()) == list(runtime)
    assert Runtime.parse({"device": "cpu", "unknown": 1}).device == "cpu"
