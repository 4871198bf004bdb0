"""The Python API (laminae.api): the results table, the run object, plan() and its run through
Snakemake, and docs/API.md executed block by block. Fast tests use small synthetic folders;
the slow ones one real pipeline run on tiny-gpt2 (then a second qkv analysis, made by plan().run())."""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

import laminae
from laminae.api.results import RunNotFoundError, find_runs, flatten
from laminae.errors import ConfigError, LaminaeError
from laminae.store import read_tsv
from laminae.workflow import WorkflowPlan
from workflow_helpers import PROJECT_ROOT, TINY_RUN, snakemake, snakemake_env

OVERRIDES = TINY_RUN
EXPERIMENTS = {"qkv", "adjustments", "pathlength", "rotations"}


# ------------------------------------------------------------------------------ synthetic folders
def write_record(folder: Path, stage: str, digest: str, config: dict, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "hash": digest, "config": {**config, "stage": stage, "version": 1}, "runtime": {},
              "versions": {}, **extra}
    (folder / "config.yaml").write_text(yaml.safe_dump(record))


def fake_store(folder: Path, digest: str, n_layers: int = 3, n_rows: int = 5, width: int = 4) -> np.ndarray:
    """A small activation store: layer files with one site 'q' and rows.tsv; returns the values."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((n_layers, n_rows, width)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for layer in range(n_layers):
        with h5py.File(folder / f"layer_{layer:02d}.h5", "w") as handle:
            handle.create_dataset("q", data=values[layer])
            handle.attrs.update(n_layers=n_layers, n_rows=n_rows, stage_hash=digest, layer=layer)
    lines = ["row\tword\tcategory\ttoken"] + [f"{i}\tw{i}\tc{i % 2}\ta\\tb" for i in range(n_rows)]
    (folder / "rows.tsv").write_text("\n".join(lines) + "\n")
    return values


def fake_results(root: Path) -> dict[str, Path]:
    """Two models; a complete qkv run, a second qkv run differing in one setting whose figures
    are still being written, and an extraction without analyses."""
    extraction = root / "m1" / "stimuli" / "words.t-aaaaaaaaaa"
    values = fake_store(extraction / "activations", "aaaaaaaaaa")
    write_record(extraction / "activations", "stimuli.extract", "aaaaaaaaaa",
                 {"model": {"name": "m1", "revision": "main"}, "template": {"name": "t"}, "upstream": None},
                 loaded_model={"revision": "abc123", "n_layers": 3})
    done = extraction / "qkv" / "analysis-1111111111"
    write_record(done / "metrics", "qkv.analysis", "1111111111", {"qkv": {"n_permutations": 20, "zscore": False}})
    (done / "metrics" / "table.tsv").write_text("layer\tvalue\n0\t1.5\n1\t2.5\n")
    write_record(done / "plot-2222222222" / "figures", "qkv.plot", "2222222222", {"plot": {"dpi": 150}})
    (done / "plot-2222222222" / "figures" / "fig.png").write_bytes(b"png")
    write_record(done / "claims-3333333333" / "claims", "qkv.claims", "3333333333", {"plot": {"dpi": 150}})
    columns = ["claim", "seed", "says", "seed_layers", "layers", "expected", "measured", "verdict", "decided_by"]
    (done / "claims-3333333333" / "claims" / "claims.tsv").write_text(
        "\t".join(columns) + "\n" + "a\t000\tx\t\t0-2\te\tm\tholds\td\n" + "b\t000\ty\t\t0-2\te\tm\tfails\td\n")
    writing = extraction / "qkv" / "analysis-4444444444"
    write_record(writing / "metrics", "qkv.analysis", "4444444444", {"qkv": {"n_permutations": 50, "zscore": False}})
    (writing / ".metrics.tmp-99999999").mkdir()
    lonely = root / "m2" / "corpus" / "text-5555555555"
    write_record(lonely / "activations", "corpus.extract", "5555555555", {"model": {"name": "m2"}})
    (root / "sweeps" / "qkv-6666666666").mkdir(parents=True)
    return {"done": done, "writing": writing, "lonely": lonely, "values": values, "extraction": extraction}


def test_table_of_synthetic_results(tmp_path):
    paths = fake_results(tmp_path / "results")
    table = laminae.results(tmp_path / "results")
    assert list(table.columns)[:8] == ["run", "model", "revision", "inputs", "experiment", "settings", "status", "size"]
    by_run = table.set_index("run")
    assert set(by_run.index) == {"1111111111", "4444444444", "5555555555"}
    done = by_run.loc["1111111111"]
    assert (done.model, done.revision, done.inputs, done.experiment, done.status) == (
        "m1", "abc123", "stimuli/words.t", "qkv", "complete")
    assert done.settings == "qkv.n_permutations=20" and by_run.loc["4444444444"].settings == "qkv.n_permutations=50"
    assert (done.holds, done.fails, done.undecided, done.claims) == (1, 1, 0, "1 hold, 1 fail")
    assert done.path == str(paths["done"]) and done.figures == str(paths["done"] / "plot-2222222222" / "figures")
    assert done["size"] == sum(p.stat().st_size for p in paths["done"].rglob("*") if p.is_file())
    assert by_run.loc["4444444444"].status == "partial" and pd.isna(by_run.loc["4444444444"].holds)
    assert (by_run.loc["5555555555"].experiment, by_run.loc["5555555555"].status) == ("", "partial")
    writing = next(run for run in find_runs(tmp_path / "results") if run.run == "4444444444")
    assert any(".metrics.tmp-" in problem for problem in writing.problems)
    assert any("no figures" in problem for problem in writing.problems)


def test_filters(tmp_path):
    fake_results(tmp_path / "results")
    results = tmp_path / "results"
    assert list(laminae.results(results, status="complete").run) == ["1111111111"]
    assert list(laminae.results(results, **{"qkv.n_permutations": 50}).run) == ["4444444444"]
    assert list(laminae.results(results, **{"qkv.zscore": False, "status": "complete"}).run) == ["1111111111"]
    assert set(laminae.results(results, model=["m1", "m2"]).run) == {"1111111111", "4444444444", "5555555555"}
    assert list(laminae.results(results, inputs="corpus/*").run) == ["5555555555"]
    assert laminae.results(results, experiment="nope").empty
    with pytest.raises(LaminaeError, match="no column or config key 'modle'"):
        laminae.results(results, modle="m1")
    assert laminae.results(tmp_path / "nothing").empty


def test_run_object_on_a_synthetic_store(tmp_path):
    paths = fake_results(tmp_path / "results")
    run = laminae.load("111", results=tmp_path / "results")
    assert (run.id, run.experiment, run.model, run.inputs) == ("1111111111", "qkv", "m1", "stimuli/words.t")
    assert run.config["qkv"] == {"n_permutations": 20, "zscore": False} and run.config["plot"] == {"dpi": 150}
    q = run.activations("q")
    assert q.shape == (3, 5, 4) and q.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(q), paths["values"])
    np.testing.assert_array_equal(q[1], paths["values"][1])
    np.testing.assert_array_equal(q[:, 2], paths["values"][:, 2])
    np.testing.assert_array_equal(q[1:, [0, 3], 1:3], paths["values"][1:, [0, 3], 1:3])
    np.testing.assert_array_equal(q[..., 0], paths["values"][..., 0])
    np.testing.assert_array_equal(run.activations("q", layers=[-1, 0]).read(), paths["values"][[2, 0]])
    assert run.activations("q", layers=2).shape == (1, 5, 4)
    with pytest.raises(IndexError):
        run.activations("q", layers=[3])
    with pytest.raises(LaminaeError, match="has no 'k' activations"):
        run.activations("k")
    assert list(run.rows.columns) == ["row", "word", "category", "token"]
    assert run.rows.row.dtype == np.int64 and run.rows.token[0] == "a\tb"   # unescaped
    assert run.metrics() == ["table.tsv"]
    pd.testing.assert_frame_equal(run.metrics("table"), pd.read_csv(paths["done"] / "metrics" / "table.tsv", sep="\t"))
    with pytest.raises(LaminaeError, match="no such metrics file"):
        run.metrics("nope")
    assert list(run.claims().verdict) == ["holds", "fails"]
    assert [p.name for p in run.figures()] == ["fig.png"]
    assert laminae.load(paths["done"] / "metrics").id == run.id                     # by a path inside it
    assert laminae.load(laminae.results(tmp_path / "results").iloc[-1]).path.name.startswith(("analysis-", "text-"))


def test_bad_run_ids(tmp_path):
    fake_results(tmp_path / "results")
    with pytest.raises(RunNotFoundError, match="no run '999'"):
        laminae.load("999", results=tmp_path / "results")
    twin = tmp_path / "results" / "m1" / "stimuli" / "words.t-aaaaaaaaaa" / "adjustments" / "analysis-1111111112"
    write_record(twin / "metrics", "adjustments.analysis", "1111111112", {"adjustments": {}})
    with pytest.raises(RunNotFoundError, match="ambiguous"):
        laminae.load("11111111", results=tmp_path / "results")
    assert laminae.load("1111111112", results=tmp_path / "results").experiment == "adjustments"


def test_flatten_and_lazy_top_level():
    assert flatten({"qkv": {"n": 20, "z": False, "c": ["q", "k"]}, "x": None}) == {
        "qkv.n": "20", "qkv.z": "false", "qkv.c": "[q, k]", "x": "null"}
    assert {"results", "load", "plan", "Run"} <= set(dir(laminae))
    with pytest.raises(AttributeError):
        laminae.nothing_here


def test_a_local_run_does_not_wait_for_a_slurm_controller(tmp_path, monkeypatch):
    """Where SLURM's client is installed but no controller answers, `scontrol` hangs until its
    timeout, and the SLURM plugin calls it whenever Snakemake starts: a local run gets one that
    exits at once, first on PATH; a run given an executor or profile keeps the real one."""
    import subprocess
    import time

    from laminae.api.plan import without_slurm_probe

    hanging = tmp_path / "bin"
    hanging.mkdir()
    (hanging / "scontrol").write_text("#!/bin/sh\nsleep 30\n")
    (hanging / "scontrol").chmod(0o755)
    monkeypatch.setenv("LAMINAE_CACHE_DIR", str(tmp_path / "cache"))
    env = without_slurm_probe(PROJECT_ROOT, {"PATH": f"{hanging}{os.pathsep}{os.environ['PATH']}"})
    started = time.monotonic()
    assert subprocess.run(["scontrol", "show", "config"], env=env).returncode == 1
    assert time.monotonic() - started < 5
    assert without_slurm_probe(PROJECT_ROOT, {"PATH": str(tmp_path / "empty")}) == {"PATH": str(tmp_path / "empty")}

    seen = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: seen.append(kwargs["env"]) or
                        subprocess.CompletedProcess(command, 0, "", ""))
    monkeypatch.setenv("PATH", env["PATH"].split(os.pathsep, 1)[1])   # the hanging one first
    plan = laminae.plan(["model=tiny-gpt2"])
    plan.run(args=["-n"])
    plan.run(args=["--profile", "profiles/slurm"])
    assert seen[0]["PATH"].startswith(str(tmp_path / "cache")) and seen[1] is None


def test_plan_matches_the_workflow_plan_and_refuses_bad_overrides(tmp_path):
    overrides = ["model=tiny-gpt2", "experiments=[qkv]"]
    planned = laminae.plan(overrides=overrides, project=PROJECT_ROOT, workdir=tmp_path)
    workflow = WorkflowPlan.from_snakemake_config({"overrides": overrides}, PROJECT_ROOT)
    expected = {stage.name: tmp_path / stage.output_dir for stage in workflow.stages.values()}
    assert {output.stage: output.path for output in planned.outputs} == expected
    assert not any(output.exists for output in planned.outputs) and not planned.complete
    assert [str(p) for p in planned.files] == [str(tmp_path / t) for t in workflow.targets()]
    assert list(planned.table().columns) == ["run", "stage", "kind", "hash", "path", "exists"]
    command = planned.command(cores=2)
    assert command[1:3] == ["-s", str(PROJECT_ROOT / "Snakefile")] and '["model=tiny-gpt2", "experiments=[qkv]"]' in command[-1]
    with pytest.raises(ConfigError, match="qkv.n_permutations"):
        laminae.plan(overrides=["qkv.n_permutations=-5"], project=PROJECT_ROOT)
    with pytest.raises(LaminaeError, match="list of strings"):
        laminae.plan(overrides="model=gpt2", project=PROJECT_ROOT)
    with pytest.raises(LaminaeError, match="not a laminae checkout"):
        laminae.plan(project=tmp_path)
    swept = laminae.plan(overrides=["model=tiny-gpt2"], sweep=["qkv.zscore=true,false"], project=PROJECT_ROOT)
    assert len(swept.runs) == 2 and "qkv.compare" in [output.stage for output in swept.outputs]


# ------------------------------------------------------------------------------ one real run
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The four experiments on tiny-gpt2, through the real Snakefile."""
    workdir = tmp_path_factory.mktemp("api")
    snakemake(workdir, OVERRIDES, "--cores", "2")
    return workdir


@pytest.fixture(scope="module")
def real_plan():
    (run,) = WorkflowPlan.from_snakemake_config({"overrides": OVERRIDES}, PROJECT_ROOT).runs
    return run


@pytest.fixture
def inside(workdir, monkeypatch):
    """In the run's folder, with snakemake_env()'s PATH: plan().run() starts Snakemake in this
    process's environment, and without the `scontrol` stub each start waits ~9 s for SLURM's
    client where it is installed and no controller answers (as after test_slurm.py)."""
    monkeypatch.setenv("PATH", snakemake_env()["PATH"])
    previous = os.getcwd()
    os.chdir(workdir)
    yield workdir
    os.chdir(previous)


@pytest.mark.slow
def test_the_table_lists_every_analysis(workdir, real_plan):
    table = laminae.results(workdir / "results")
    assert sorted(table.experiment) == sorted(EXPERIMENTS)
    assert set(table.status) == {"complete"} and set(table.model) == {"tiny-gpt2"}
    for experiment in EXPERIMENTS:
        row = table[table.experiment == experiment].iloc[0]
        analysis = real_plan.stages[f"{experiment}.analysis"]
        assert row.run == analysis.hash
        assert Path(row.path) == workdir / analysis.dir and Path(row.metrics) == workdir / analysis.output_dir
        assert Path(row.figures) == workdir / real_plan.stages[f"{experiment}.plot"].output_dir
        assert Path(row.claims_dir) == workdir / real_plan.stages[f"{experiment}.claims"].output_dir
        assert Path(row.activations) == workdir / real_plan.extraction(experiment).output_dir
        verdicts = [r["verdict"] for r in read_tsv(Path(row.claims_dir) / "claims.tsv")]
        assert row.holds + row.fails + row.undecided + row.not_applicable == len(verdicts)
    assert table.loc[table.experiment == "qkv", "inputs"].iloc[0] == "stimuli/space_furniture_fruit.next_word"


@pytest.mark.slow
def test_the_run_object_reads_what_is_on_disk(workdir):
    table = laminae.results(workdir / "results")
    for experiment, site in (("qkv", "v"), ("adjustments", "mlp_out")):
        run = laminae.load(table[table.experiment == experiment].run.iloc[0], results=workdir / "results")
        layers = sorted(run.activations_dir.glob("layer_*.h5"))
        direct = []
        for path in layers:
            with h5py.File(path, "r") as handle:
                direct.append(handle[site][()])
        lazy = run.activations(site)
        assert lazy.shape == (len(layers), *direct[0].shape)
        np.testing.assert_array_equal(np.asarray(lazy), np.stack(direct))
        np.testing.assert_array_equal(run.activations(site, layers=[1])[0], direct[1])
        assert len(run.rows) == lazy.shape[1]
        for name in run.metrics():
            if name.endswith(".tsv"):
                pd.testing.assert_frame_equal(run.metrics(name), pd.read_csv(run.metrics_dir / name, sep="\t"))
        expected = pd.DataFrame(read_tsv(run.claims_dir / "claims.tsv"))
        pd.testing.assert_frame_equal(run.claims().astype(str), expected.astype(str), check_dtype=False)
        assert run.figures("png") and all(p.suffix == ".png" for p in run.figures("png"))
        assert len(run.headline()) == 4 and run.config["model"]["name"] == "tiny-gpt2"
    qkv = laminae.load(table[table.experiment == "qkv"].run.iloc[0], results=workdir / "results")
    assert list(qkv.rows.word[:3]) == ["chair", "table", "sofa"] and qkv.config["qkv"]["n_permutations"] == 20


@pytest.mark.slow
def test_the_api_page_runs(inside):
    """Every ```python block of docs/API.md, in order, in one namespace."""
    page = (PROJECT_ROOT / "docs" / "API.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for index, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/API.md block {index + 1}", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - say which block
            raise AssertionError(f"docs/API.md, python block {index + 1} failed: {error!r}\n{block}") from error


@pytest.mark.slow
def test_plan_exists_flips_after_its_run(workdir, inside):
    """Runs last in this file (it adds a second qkv run): plan() before and after plan().run()."""
    same = laminae.plan(overrides=OVERRIDES)
    assert same.complete and {output.stage for output in same.outputs} >= {f"{e}.analysis" for e in EXPERIMENTS}
    overrides = [*OVERRIDES[:2], "qkv.n_bootstrap=10", "experiments=[qkv]"]
    changed = laminae.plan(overrides=overrides)
    exists = {output.stage: output.exists for output in changed.outputs}
    assert exists == {"stimuli.extract": True, "qkv.analysis": False, "qkv.plot": False, "qkv.claims": False}
    changed.run(cores=2)
    assert changed.complete
    new = [output for output in changed.outputs if output.stage == "qkv.analysis"][0]
    table = laminae.results("results", experiment="qkv").set_index("run")
    assert set(table.settings) == {"qkv.n_bootstrap=10", "qkv.n_bootstrap=20"}
    assert table.loc[new.hash, "settings"] == "qkv.n_bootstrap=10" and table.loc[new.hash, "status"] == "complete"
    with pytest.raises(LaminaeError, match="snakemake failed"):
        changed.run(cores=2, args=["--no-such-option"])
