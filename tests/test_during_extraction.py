"""`adjustments.during_extraction`: the extraction feeds its batches straight into experiment 2's
computation and stores only the results; the published metrics equal the two-stage pipeline's
(store every activation, then analyse it), and the analysis refuses results of another config."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from laminae.config import load_runs
from laminae.errors import InputFileError
from laminae.experiments.adjustments.analysis import read_adjustment_table, read_cosines
from laminae.registry import discover
from laminae.stages.analysis import run_analysis
from laminae.stages.extract import extract
from laminae.store import read_tsv

ROOT = Path(__file__).resolve().parents[1]
# 4 windows of 100, 100, 100 and 46 tokens; batches of 2 windows: the second batch is padded
SMALL = ["model=tiny-gpt2", "experiments=[adjustments]", "corpus.window_tokens=100", "batch_size=2", "device=cpu"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def run_adjustment_metrics(stage: dict, activations: Path, metrics: Path, runtime: dict | None = None):
    return run_analysis(discover()["adjustments"], stage, activations, metrics, runtime)


def record(stage) -> dict:
    return {"stage": stage.name, "hash": stage.hash, "config": stage.config}


def pipeline(out: Path, models_dir: Path, *overrides: str):
    """Extraction then analysis, as the Snakefile runs them; returns (run, activations, metrics)."""
    (run,) = load_runs([*SMALL, f"models_dir={models_dir}", *overrides], project_root=ROOT)
    activations, metrics = out / "activations", out / "metrics"
    extract(record(run.stages["corpus.extract"]), run.runtime, activations, ROOT, discover())
    run_adjustment_metrics(record(run.stages["adjustments.analysis"]), activations, metrics, run.runtime)
    return run, activations, metrics


@pytest.mark.parametrize("exclude_first_token", [False, True])
def test_during_extraction_equals_the_two_stage_pipeline(tmp_path, models_dir, exclude_first_token):
    setting = f"adjustments.exclude_first_token={str(exclude_first_token).lower()}"
    _, stored, two_stage = pipeline(tmp_path / "two", models_dir, setting)
    run, inline, during = pipeline(tmp_path / "during", models_dir, setting, "adjustments.during_extraction=true")

    assert sorted(p.name for p in stored.glob("layer_*.h5")) == [f"layer_0{i}.h5" for i in range(4)]
    assert sorted(p.name for p in inline.iterdir()) == ["config.yaml", "fidelity.tsv", "reductions", "rows.tsv"]  # no activations
    assert sorted(p.name for p in (inline / "reductions" / "adjustments").iterdir()) == ["adjustment_cosine.h5",
                                                                                         "adjustments.tsv"]
    assert read_tsv(inline / "rows.tsv") == read_tsv(stored / "rows.tsv")

    expected, actual = read_adjustment_table(two_stage / "adjustments.tsv"), read_adjustment_table(during / "adjustments.tsv")
    assert list(actual) == list(expected)
    for metric, stats in expected.items():
        np.testing.assert_array_equal(actual[metric].n, stats.n)
        for field in ("mean", "sd", "sem"):
            np.testing.assert_allclose(getattr(actual[metric], field), getattr(stats, field), rtol=1e-10, atol=1e-13)
    assert expected["cosine"].n[0] == 346 - (4 if exclude_first_token else 0)

    cos_a, inc_a, attrs_a = read_cosines(two_stage / "adjustment_cosine.h5")
    cos_b, inc_b, attrs_b = read_cosines(during / "adjustment_cosine.h5")
    np.testing.assert_allclose(cos_b, cos_a, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(inc_b, inc_a)
    with h5py.File(two_stage / "adjustment_cosine.h5") as a, h5py.File(during / "adjustment_cosine.h5") as b:
        for name in ("window", "position", "token_id", "n_undefined"):
            np.testing.assert_array_equal(b[name][()], a[name][()])
    assert attrs_b["computed_during_extraction"] and "computed_during_extraction" not in attrs_a
    assert attrs_b["stage"] == "adjustments.analysis" and attrs_b["stage_hash"] == run.stages["adjustments.analysis"].hash
    assert attrs_b["activations_stage_hash"] == run.stages["corpus.extract"].hash
    for key in ("activations_model_id", "activations_n_layers", "exclude_first_token", "n_windows", "cosine_definition"):
        assert attrs_b[key] == attrs_a[key], key


def test_analysis_refuses_results_of_another_extraction(tmp_path, models_dir):
    run, inline, _ = pipeline(tmp_path / "a", models_dir, "adjustments.during_extraction=true")
    stage = record(run.stages["adjustments.analysis"])
    stage["config"] = {**stage["config"], "upstream": "0123456789"}
    with pytest.raises(InputFileError, match="stage hash"):
        run_adjustment_metrics(stage, inline, tmp_path / "other")
    (inline / "reductions" / "adjustments" / "adjustments.tsv").unlink()
    with pytest.raises(InputFileError, match="adjustments.tsv"):
        run_adjustment_metrics(record(run.stages["adjustments.analysis"]), inline, tmp_path / "other")
