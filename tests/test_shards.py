"""Sharded extraction (`corpus.shards`, laminae.shards) equals an unsharded one.

On tiny-gpt2 over a corpus of ~50 windows (window_tokens=16, batches of 3 windows), with the
three corpus experiments reading the stored activations, and again with all three computed
during extraction (their reducers' partial states merged by `absorb`): the sharded store's
rows.tsv is byte-identical, every stored value bit-identical (HDF5 virtual datasets over the
shards), every per-token value of the metrics files identical, and every table value within
1e-12 relative. Plus: shard boundaries fall on batch boundaries; a missing or foreign shard is
named in one line; a reducer without partial/absorb is refused; a store whose shard files are
gone fails in one line instead of reading fill values.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from laminae.config import load_runs
from laminae.errors import ConfigError, InputFileError
from laminae.shards import Shard
from laminae.registry import discover
from laminae.shards import shard_name, shard_windows
from laminae.stages.gather import gather
from laminae.stages.analysis import run_analysis
from laminae.stages.extract import extract
from laminae.stages.records import ExtractionRecord
from laminae.store import ActivationStore, read_tsv

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("adjustments", "pathlength", "rotations")
N_SHARDS = 4
BASE = ["model=tiny-gpt2", f"experiments=[{','.join(EXPERIMENTS)}]", "corpus.window_tokens=16", "batch_size=3",
        "device=cpu", "pathlength.n_bootstrap=30"]
DURING = [f"{name}.during_extraction=true" for name in EXPERIMENTS]
RTOL = 1e-12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three documents, ~750 GPT-2 tokens: ~50 windows of 16 tokens, windows cut mid-document."""
    folder = tmp_path_factory.mktemp("corpus")
    text = (ROOT / "data" / "corpora" / "nietzsche.txt").read_text(encoding="utf-8").split() * 3
    for index, (start, stop) in enumerate(((0, 230), (230, 240), (240, 600))):
        (folder / f"doc{index}.txt").write_text(" ".join(text[start:stop]), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _record(stage) -> dict:
    return {"stage": stage.name, "hash": stage.hash, "config": stage.config}


def _run(corpus: Path, models_dir: Path, *overrides: str):
    (run,) = load_runs([*BASE, f"corpus.path={corpus}", f"models_dir={models_dir}", *overrides], project_root=ROOT)
    return run


def _analyse(run, activations: Path, out: Path) -> dict[str, Path]:
    metrics = {}
    for name in EXPERIMENTS:
        metrics[name] = out / name
        run_analysis(discover()[name], _record(run.stages[f"{name}.analysis"]), activations, metrics[name], run.runtime)
    return metrics


def pipelines(tmp: Path, corpus: Path, models_dir: Path, *overrides: str):
    """(unsharded activations, its metrics, sharded activations, its metrics, the shards' folders)."""
    run = _run(corpus, models_dir, *overrides)
    stage = _record(run.stages["corpus.extract"])
    full = tmp / "full" / "activations"
    extract(stage, run.runtime, full, ROOT, discover())
    sharded_run = _run(corpus, models_dir, *overrides, f"corpus.shards={N_SHARDS}")
    assert sharded_run.stages["corpus.extract"].hash == stage["hash"], "corpus.shards is a runtime key"
    folders = []
    for index in range(N_SHARDS):
        shard = Shard(index, N_SHARDS, run.runtime["batch_size"])
        folders.append(tmp / "sharded" / "shards" / shard_name(shard))
        extract(stage, sharded_run.runtime, folders[-1], ROOT, discover(), shard=shard)
    joined = tmp / "sharded" / "activations"
    gather(stage, sharded_run.runtime, folders, joined, discover())
    return full, _analyse(run, full, tmp / "full"), joined, _analyse(sharded_run, joined, tmp / "sharded"), folders


def _numbers(text: str) -> float | str:
    try:
        return float(text) if text else math.nan
    except ValueError:
        return text


def assert_tables_equal(expected: Path, actual: Path) -> int:
    """Same columns and rows; numbers within RTOL relative (NaN where NaN); returns the values compared."""
    a, b = read_tsv(expected), read_tsv(actual)
    assert len(a) == len(b) and a and list(a[0]) == list(b[0]), expected.name
    compared = 0
    for row_a, row_b in zip(a, b):
        for key in row_a:
            x, y = _numbers(row_a[key]), _numbers(row_b[key])
            if isinstance(x, float) and isinstance(y, float):
                assert (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=RTOL, abs_tol=0), (expected.name, key, x, y)
                compared += 1
            else:
                assert x == y, (expected.name, key, x, y)
    return compared


def assert_h5_equal(expected: Path, actual: Path) -> None:
    """Every dataset identical (NaN where NaN), attributes aside (provenance differs: runtime_shards)."""
    with h5py.File(expected) as fa, h5py.File(actual) as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert names_a == names_b, expected.name
        for name in names_a:
            if isinstance(fa[name], h5py.Dataset):
                assert fa[name].dtype == fb[name].dtype
                assert np.array_equal(fa[name][()], fb[name][()], equal_nan=True), (expected.name, name)


def test_shards_are_whole_batches_dealt_out_evenly():
    for n_inputs in (1, 7, 9, 10, 48, 50, 1000):
        for count in (1, 2, 3, 4, 7):
            for batch in (1, 3, 8):
                batches = math.ceil(n_inputs / batch)
                if count > batches:
                    continue
                ranges = [shard_windows(n_inputs, Shard(k, count, batch)) for k in range(count)]
                assert ranges[0][0] == 0 and ranges[-1][1] == n_inputs
                assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
                assert all(first % batch == 0 and first < stop for first, stop in ranges)
                sizes = [math.ceil((stop - first) / batch) for first, stop in ranges]
                assert max(sizes) - min(sizes) <= 1


def _compare_metrics(metrics: dict[str, Path], sharded_metrics: dict[str, Path]) -> int:
    """Every metrics table and HDF5 file of each experiment equal between the two runs; the
    number of table values compared."""
    compared = 0
    for name in EXPERIMENTS:
        for path in sorted(metrics[name].iterdir()):
            if path.suffix == ".tsv":
                compared += assert_tables_equal(path, sharded_metrics[name] / path.name)
            elif path.suffix == ".h5":
                assert_h5_equal(path, sharded_metrics[name] / path.name)
    return compared


def test_every_shard_pads_attention_patterns_to_the_whole_corpus_longest_window(tmp_path):
    from laminae.capture.forward import plan_keys
    from laminae.inputs import input_kind
    from laminae.models.gpt2_tokenizer import gpt2_tokenizer

    folder = tmp_path / "short"   # short documents of different lengths: shards' longest windows differ
    folder.mkdir()
    words = (ROOT / "data" / "corpora" / "nietzsche.txt").read_text(encoding="utf-8").split()
    for index in range(12):
        (folder / f"doc{index:02d}.txt").write_text(" ".join(words[: 2 + 3 * index]), encoding="utf-8")
    config = {"corpus": {"path": str(folder), "window_tokens": 64, "windowing": True}}
    tokenizer = gpt2_tokenizer()
    whole = input_kind("corpus").plan(config, tokenizer, 1024, tmp_path)
    longest = max(len(sequence) for sequence in whole.sequences)
    shards = [input_kind("corpus").plan(config, tokenizer, 1024, tmp_path, shard=Shard(k, 3, batch_size=2))
              for k in range(3)]
    assert len({max(len(sequence) for sequence in part.sequences) for part in shards}) > 1   # the case at hand
    assert [plan_keys(part) for part in (whole, *shards)] == [longest] * 4
    assert plan_keys(whole, ("resid_post",)) is None


def test_sharded_store_equals_unsharded(tmp_path, corpus, models_dir):
    full, metrics, joined, sharded_metrics, folders = pipelines(tmp_path, corpus, models_dir)
    assert (joined / "rows.tsv").read_bytes() == (full / "rows.tsv").read_bytes()
    store, sharded = ActivationStore(full), ActivationStore(joined)
    assert sharded.n_rows == store.n_rows > 600 and sharded.sites == store.sites
    windows = store.rows.integers("window")
    assert windows.max() + 1 >= 45
    # each shard holds whole batches of 3 windows
    firsts = [int(read_tsv(folder / "rows.tsv")[0]["window"]) for folder in folders]
    assert firsts[0] == 0 and all(first % 3 == 0 for first in firsts) and len(set(firsts)) == N_SHARDS
    for site in store.sites:
        assert np.array_equal(sharded.read(site, dtype=np.float32), store.read(site, dtype=np.float32)), site
    with h5py.File(joined / "layer_00.h5") as handle:
        assert handle["resid_post"].is_virtual and handle.attrs["shards"] == N_SHARDS
        assert all(not Path(source.file_name).is_absolute() for source in handle["resid_post"].virtual_sources())
    assert _compare_metrics(metrics, sharded_metrics) > 500


def test_sharded_reductions_during_extraction_equal_unsharded(tmp_path, corpus, models_dir):
    full, metrics, joined, sharded_metrics, folders = pipelines(tmp_path, corpus, models_dir, *DURING)
    assert not list(joined.glob("layer_*.h5")) and not list(folders[0].glob("layer_*.h5"))
    assert (joined / "rows.tsv").read_bytes() == (full / "rows.tsv").read_bytes()
    assert _compare_metrics(metrics, sharded_metrics) > 500
    # and the tables of the during-extraction runs equal the two-stage ones of the first test's kind
    stored = _run(corpus, models_dir)
    two_stage = _analyse(stored, _extract_plain(tmp_path / "stored", stored), tmp_path / "stored")
    for name in EXPERIMENTS:
        for path in sorted(two_stage[name].glob("*.tsv")):
            assert_tables_equal(path, sharded_metrics[name] / path.name)


def _extract_plain(folder: Path, run) -> Path:
    extract(_record(run.stages["corpus.extract"]), run.runtime, folder / "activations", ROOT, discover())
    return folder / "activations"


def test_gather_names_a_missing_or_foreign_shard_and_a_store_with_a_missing_shard_fails(tmp_path, corpus, models_dir):
    run = _run(corpus, models_dir, "experiments=[adjustments]", "corpus.shards=2")
    stage = _record(run.stages["corpus.extract"])
    folders = [tmp_path / "shards" / shard_name(Shard(k, 2, 3)) for k in range(2)]
    extract(stage, run.runtime, folders[0], ROOT, discover(), shard=Shard(0, 2, 3))
    with pytest.raises(InputFileError, match=f"{folders[1]}.*not a complete shard"):
        gather(stage, run.runtime, folders, tmp_path / "activations", discover())
    shutil.copytree(folders[0], folders[1])   # shard 0 where shard 1 belongs
    with pytest.raises(InputFileError, match="is shard 0 of 2 from row 0; expected shard 1 of 2"):
        gather(stage, run.runtime, folders, tmp_path / "activations", discover())
    assert not (tmp_path / "activations").exists()
    shutil.rmtree(folders[1])
    extract(stage, run.runtime, folders[1], ROOT, discover(), shard=Shard(1, 2, 3))
    gather(stage, run.runtime, folders, tmp_path / "activations", discover())
    shutil.rmtree(folders[1])
    with pytest.raises(InputFileError, match=f"{shard_name(Shard(1, 2, 3))}/layer_00.h5.*missing: layer_00.h5 reads"):
        ActivationStore(tmp_path / "activations")


def test_each_store_has_one_rule_and_keeps_the_split_it_was_made_from(tmp_path, corpus):
    """Rule `gather` makes the store of a sharded corpus extraction, rule `extract` every other
    (their wildcard constraints split the hashes); a store that exists keeps its own split, and a
    stimuli store, which records `corpus.shards` as a runtime setting too, is never gathered."""
    import re

    import yaml

    from laminae.workflow import WorkflowPlan

    config = {"overrides": ["model=tiny-gpt2", f"corpus.path={corpus}", "corpus.window_tokens=16", "batch_size=3",
                            f"results_dir={tmp_path}", "corpus.shards=3"]}
    plan = WorkflowPlan.from_snakemake_config(config, ROOT)
    extractions = {stage.group: digest for digest, stage in plan.stages.items() if stage.kind == "extract"}
    gathered, extracted = plan.extraction_hashes(gathered=True), plan.extraction_hashes(gathered=False)
    assert re.fullmatch(gathered, extractions["corpus"]) and not re.fullmatch(gathered, extractions["stimuli"])
    assert re.fullmatch(extracted, extractions["stimuli"]) and not re.fullmatch(extracted, extractions["corpus"])
    assert [Path(d).name for d in plan.shard_dirs(extractions["corpus"])] == [f"shard-{k}-of-3-b3" for k in range(3)]
    for group, shards in (("corpus", 1), ("stimuli", 3)):   # stores made unsharded, recorded with shards=3
        stage = plan.stages[extractions[group]]
        stage.output_dir.mkdir(parents=True)
        (stage.output_dir / "config.yaml").write_text(yaml.safe_dump({"runtime": {"shards": shards, "batch_size": 3}}))
    plan = WorkflowPlan.from_snakemake_config(config, ROOT)
    assert plan.extraction_hashes(gathered=True) == "(?!)" and plan.shard_dirs(extractions["stimuli"]) == []
    assert set(plan.extraction_hashes(gathered=False).split("|")) == set(extractions.values())


def test_more_shards_than_batches_and_reducers_without_merge_are_refused(tmp_path, corpus, models_dir):
    run = _run(corpus, models_dir, "experiments=[adjustments]", "corpus.shards=40")
    with pytest.raises(ConfigError, match=r"corpus.shards': expected at most \d+: this corpus's \d+ windows"):
        extract(_record(run.stages["corpus.extract"]), run.runtime, tmp_path / "s", ROOT, discover(),
                shard=Shard(0, 40, 3))
    registry = discover()
    reducer = registry["adjustments"].hook("reducer")
    bare = type("Bare", (), {"__init__": reducer.__init__, "update": reducer.update, "finish": reducer.finish})
    from dataclasses import replace

    from laminae.config.validate import validate_config

    registry["adjustments"] = replace(registry["adjustments"], reducer=bare)
    cfg = dict(_run(corpus, models_dir, "adjustments.during_extraction=true", "corpus.shards=2").config)
    with pytest.raises(ConfigError, match="corpus.shards': expected 1 while adjustments.during_extraction is true"):
        validate_config(cfg, ROOT, registry)


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_snakemake_sharded_run_keeps_finished_shards(tmp_path, corpus, built_models):
    """Through the real Snakefile: 3 shard jobs, then the gather. With two shards made first
    (as if the third had failed), the run makes only the missing shard and the gather, and
    leaves the two untouched; another number of shards then reruns nothing
    (the store holds the same values). Equality with one job: the tests above, and the 4-shard
    SLURM run of tests/test_slurm.py."""
    from laminae.workflow import WorkflowPlan
    from workflow_helpers import scheduled_rules, snakemake

    overrides = ["model=tiny-gpt2", "experiments=[rotations]", "rotations.during_extraction=true",
                 f"corpus.path={corpus}", "corpus.window_tokens=16", "batch_size=3", "device=cpu", built_models]
    sharded = [*overrides, "corpus.shards=3"]
    plan = WorkflowPlan.from_snakemake_config({"overrides": sharded}, ROOT)
    (digest,) = [h for h, stage in plan.stages.items() if stage.kind == "extract"]
    first_two = [plan.shard_dirs(digest)[i] for i in (0, 2)]
    snakemake(tmp_path, sharded, "--cores", "2", *first_two)
    stamps = {p: p.stat().st_mtime_ns for folder in first_two for p in (tmp_path / folder).rglob("*")}
    assert stamps
    activations = str(plan.stages[digest].output_dir)   # the gather (the analysis jobs after it are not at stake)
    scheduled = scheduled_rules(snakemake(tmp_path, sharded, "-n", activations))
    assert scheduled == {"extract_shard": 1, "gather": 1}, scheduled
    snakemake(tmp_path, sharded, "--cores", "2", activations)
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items()), "finished shards were remade"
    assert (tmp_path / activations / "reductions" / "rotations" / "rotations.tsv").is_file()
    for shards in (3, 2):   # the same split, another one: nothing to do
        assert scheduled_rules(snakemake(tmp_path, [*overrides, f"corpus.shards={shards}"], "-n", activations)) == {}


def _extract_stage(run, stage, shards: int = 1) -> Path:
    """The store of `stage` where the pipeline keeps it: made by one job, or by `shards` and a gather."""
    record = _record(stage)
    if shards == 1:
        extract(record, run.runtime, stage.output_dir, ROOT, discover())
        return stage.output_dir
    folders = [stage.dir / "shards" / shard_name(Shard(k, shards, 3)) for k in range(shards)]
    for index, folder in enumerate(folders):
        extract(record, run.runtime, folder, ROOT, discover(), shard=Shard(index, shards, 3))
    gather(record, run.runtime, folders, stage.output_dir, discover())
    return stage.output_dir


def test_a_sharded_composite_store_links_a_sharded_store_and_equals_a_fresh_one(tmp_path, corpus, models_dir):
    """pos stored resid_pre and resid_post in 2 shards; adjustments then computes attn_out and
    mlp_out alone, in 2 shards, and its gather links the rest (virtual datasets over virtual
    datasets): every site reads as a fresh unsharded extraction of all four."""
    results = f"results_dir={tmp_path / 'results'}"
    first = _run(corpus, models_dir, results, "experiments=[pos]")
    narrow = _extract_stage(first, first.stages["corpus.extract"], shards=2)
    second = _run(corpus, models_dir, results, "experiments=[adjustments]")
    composite = second.stages["corpus.extract"]
    assert composite.config["reused"]["sites"] == dict.fromkeys(["resid_post", "resid_pre"], first.stages["corpus.extract"].hash)
    linked = _extract_stage(second, composite, shards=2)
    with h5py.File(composite.dir / "shards" / shard_name(Shard(0, 2, 3)) / "layer_00.h5") as handle:
        assert sorted(handle) == ["attn_out", "mlp_out"]      # a shard computes only the new sites
    fresh_run = _run(corpus, models_dir, f"results_dir={tmp_path / 'fresh'}", "experiments=[adjustments]")
    fresh = _extract_stage(fresh_run, fresh_run.stages["corpus.extract"])
    mine, theirs = ActivationStore(linked), ActivationStore(fresh)
    assert mine.sites == theirs.sites and (linked / "rows.tsv").read_bytes() == (fresh / "rows.tsv").read_bytes()
    for site in theirs.sites:
        assert np.array_equal(mine.read(site, dtype=np.float32), theirs.read(site, dtype=np.float32)), site
    for store, weights in ((linked, "sha256:new"), (narrow, "sha256:old")):   # a store rebuilt in place from other weights
        with h5py.File(store / "layer_00.h5", "r+") as handle:
            handle.attrs["weights_fingerprint"] = weights
    with pytest.raises(InputFileError, match="was made from other weights"):
        ActivationStore(linked)
    with h5py.File(narrow / "layer_00.h5", "r+") as handle:
        handle.attrs["weights_fingerprint"] = "sha256:new"
    ActivationStore(linked)
    shutil.rmtree(narrow.parent / "shards")   # what the linked store's virtual datasets read, in turn
    with pytest.raises(InputFileError, match="missing: layer_00.h5 reads its 'resid_p"):
        ActivationStore(linked)


def test_stores_holding_a_runs_sites_and_reduction_between_them_make_a_store_without_the_model(tmp_path, corpus,
                                                                                             models_dir, monkeypatch):
    """adjustments computed during one extraction, pos's sites stored by another: adjustments with
    trajectories (the same sites) links the sites, copies the reduction, and loads no model."""
    results = f"results_dir={tmp_path / 'results'}"
    during = "adjustments.during_extraction=true"
    first = _run(corpus, models_dir, results, "experiments=[adjustments]", during)
    reduced = _extract_stage(first, first.stages["corpus.extract"])
    second = _run(corpus, models_dir, results, "experiments=[pos]")
    assert "reused" not in second.stages["corpus.extract"].config    # the first store holds no site
    stored = _extract_stage(second, second.stages["corpus.extract"])

    import laminae.stages.extract as extract_stage

    monkeypatch.setattr(extract_stage, "load_model", lambda *a, **k: pytest.fail("no model to load"))
    monkeypatch.setattr(extract_stage, "open_model", lambda *a, **k: pytest.fail("no model to open"))
    third = _run(corpus, models_dir, results, "experiments=[adjustments,trajectories]", during)
    nothing = third.stages["corpus.extract"]
    assert nothing.config["reused"] == {"sites": dict.fromkeys(["resid_post", "resid_pre"], second.stages["corpus.extract"].hash),
                                        "reductions": {"adjustments": first.stages["corpus.extract"].hash}}
    assert not ExtractionRecord.parse(_record(nothing)).runs_model
    made = _extract_stage(third, nothing)
    for path in sorted((reduced / "reductions" / "adjustments").iterdir()):
        assert path.read_bytes() == (made / "reductions" / "adjustments" / path.name).read_bytes()
    store = ActivationStore(made)
    for site in ("resid_pre", "resid_post"):
        np.testing.assert_array_equal(store.read(site), ActivationStore(stored).read(site))
    for name in ("rows.tsv", "fidelity.tsv"):   # the forward pass of the store its sites come from
        assert (made / name).read_bytes() == (stored / name).read_bytes()
    covered = _run(corpus, models_dir, results, "experiments=[adjustments,pos]", during)
    assert covered.stages["corpus.extract"].hash == nothing.hash     # read as it is
