"""The plug-in contract: experiments are found in the package and in `experiment_packages`
(folders or modules), a broken declaration stops the run with one line naming the experiment,
experiments on the same inputs share one extraction, and an experiment defined outside `src/`
(examples/anisotropy, the guide's example) runs end to end with caching and a sweep."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from laminae.config import load_runs
from laminae.registry import ExperimentError, discover
from laminae.store import ActivationStore, read_tsv
from workflow_helpers import PROJECT_ROOT, scheduled_rules, snakemake

TINY = ["model=tiny-gpt2"]
EXAMPLES = "experiment_packages=[examples]"

# A minimal valid declaration; each contract case below breaks one thing.
DECLARATION = {
    "name": '"norms"', "title": '"Norms"', "inputs": '"corpus"', "sites": '("resid_post",)',
    "metrics": '("norms.tsv",)', "figures": '(Figure("norms", caption="caption.rst", label="profile"),)',
    "reducer": '".work:Reducer"', "plot": '".work:plot"', "schema": '{"type": "object"}',
}


def write_experiment(folder: Path, files: dict[str, str] | None = None, **changes: str | None) -> Path:
    """An experiment package `folder` with DECLARATION (fields changed or dropped by `changes`)."""
    fields = {**DECLARATION, **changes}
    arguments = ", ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
    files = {"__init__.py": f"from laminae.experiment import Across, Experiment, Figure, Measure\n"
                            f"EXPERIMENT = Experiment({arguments})\n",
             "work.py": "class Reducer: ...\ndef plot(job): ...\n", "caption.rst": "Norms.\n",
             "default.yaml": "plot: {}\n", **(files or {})}
    folder.mkdir(parents=True)
    for name, text in files.items():
        if text is not None:
            (folder / name).write_text(text)
    return folder


CONTRACT = {
    # case: (changes to DECLARATION or files, fragment of the one-line error)
    "no_declaration": ({"files": {"__init__.py": "X = 1\n"}}, "defines no EXPERIMENT"),
    "not_an_experiment": ({"files": {"__init__.py": "EXPERIMENT = {'name': 'norms'}\n"}}, "EXPERIMENT is a dict"),
    "import_error": ({"files": {"__init__.py": "import numpy_nonexistent\n"}}, "importing it failed: ModuleNotFoundError"),
    "name_differs_from_folder": ({"name": '"other"'}, "name must equal its package's folder name 'norms'"),
    "reserved_name": ({"folder": "model", "name": '"model"'}, "is a core config key"),
    "bad_name": ({"folder": "Norms", "name": '"Norms"'}, "lower case letters"),
    "unknown_inputs": ({"inputs": '"images"'}, "inputs must be one of stimuli, corpus, or a tuple of distinct ones; "
                                               "got 'images'"),
    "repeated_inputs": ({"inputs": '("corpus", "corpus")'}, "got ('corpus', 'corpus')"),
    "unknown_of_several_inputs": ({"inputs": '("corpus", "images")'}, "got ('corpus', 'images')"),
    "unknown_site": ({"sites": '("resid_mid",)'}, "sites must be a non-empty tuple of distinct sites"),
    "neither_analysis": ({"reducer": None}, "declare exactly one of analyse"),
    "both_analyses": ({"analyse": '".work:plot"'}, "declare exactly one of analyse"),
    "metrics_in_a_folder": ({"metrics": '("tables/norms.tsv",)'}, "metrics must be a non-empty tuple of file names"),
    "metrics_named_config": ({"metrics": '("config.yaml",)'}, "not config.yaml"),
    "missing_caption": ({"files": {"caption.rst": None}}, "figure 'norms': caption file caption.rst not found"),
    "figure_with_extension": ({"figures": '(Figure("norms.png", caption="caption.rst", label="x"),)'}, "file stem"),
    "duplicate_figures": ({"figures": '(Figure("a", "caption.rst", "x"), Figure("a", "caption.rst", "y"))'},
                          "must all be distinct"),
    "hook_without_colon": ({"plot": '".work.plot"'}, "'module:function' string"),
    "hook_module_missing": ({"plot": '".drawing:plot"'}, "hook plot = '.drawing:plot': no module '.drawing'"),
    "schema_file_missing": ({"schema": '"schema.yaml"'}, "schema file schema.yaml not found"),
    "schema_not_an_object": ({"schema": '{"type": "array"}'}, "schema must be a JSON schema of an object"),
    "bad_version": ({"version": "0"}, "version must be an integer >= 1"),
    "unknown_need": ({"needs": '("tokenizer",)'}, "needs must be a tuple of names from readout; got ('tokenizer',)"),
    "measures_without_hook": ({"measures": '(Measure("norm", "x"),)'}, "declare measures together with the measure hook"),
    "hook_without_measures": ({"measure": '".work:plot"'}, "declare measures together with the measure hook"),
    "bad_measure_name": ({"measure": '".work:plot"', "measures": '(Measure("Norm!", "x"),)'}, "measure name 'Norm!'"),
    "bad_measure_kind": ({"measure": '".work:plot"', "measures": '(Measure("norm", "x", kind="histogram"),)'},
                         "kind must be one of layers, sample; got 'histogram'"),
    "duplicate_measures": ({"measure": '".work:plot"', "measures": '(Measure("norm", "x"), Measure("norm", "y"))'},
                           "measure names must be distinct"),
}


@pytest.mark.parametrize("case", CONTRACT, ids=list(CONTRACT))
def test_a_broken_declaration_is_one_line_naming_the_experiment(case, tmp_path):
    changes, fragment = CONTRACT[case]
    changes = dict(changes)
    folder = tmp_path / "lab" / changes.pop("folder", "norms")
    write_experiment(folder, changes.pop("files", None), **changes)
    with pytest.raises(ExperimentError) as raised:
        discover([str(tmp_path / "lab")], PROJECT_ROOT)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("experiment '") and f" ({folder}): " in message, message
    assert fragment in message, message


def test_two_experiments_of_one_name_are_refused(tmp_path):
    write_experiment(tmp_path / "lab" / "adjustments", name='"adjustments"')
    with pytest.raises(ExperimentError, match="a second experiment of this name"):
        discover([str(tmp_path / "lab")], PROJECT_ROOT)


def test_a_missing_config_group_is_refused(tmp_path):
    write_experiment(tmp_path / "lab" / "norms", files={"default.yaml": None})
    with pytest.raises(ExperimentError, match=r"no config group: neither conf/norms/default.yaml nor default.yaml"):
        load_runs([*TINY, f"experiment_packages=[{tmp_path / 'lab'}]"], project_root=PROJECT_ROOT)


def test_experiments_come_from_folders_and_from_modules(tmp_path, monkeypatch):
    write_experiment(tmp_path / "lab" / "norms")
    builtin = discover((), PROJECT_ROOT)
    assert {"qkv", "adjustments"} <= set(builtin) and all(e.module.startswith("laminae.experiments.") for e in builtin.values())
    from_folder = discover([str(tmp_path / "lab")], PROJECT_ROOT)["norms"]
    assert from_folder.folder == tmp_path / "lab" / "norms"
    one_experiment = discover([str(tmp_path / "lab" / "norms")], PROJECT_ROOT)["norms"]   # the package itself
    assert one_experiment.folder == from_folder.folder
    monkeypatch.syspath_prepend(str(tmp_path / "installed"))
    write_experiment(tmp_path / "installed" / "lab_experiments" / "lengths", name='"lengths"')
    (tmp_path / "installed" / "lab_experiments" / "__init__.py").write_text("")
    from_module = discover(["lab_experiments"], PROJECT_ROOT)["lengths"]
    assert from_module.module == "lab_experiments.lengths"
    assert from_module.hook("plot").__module__ == "lab_experiments.lengths.work"


def test_an_unknown_experiment_or_package_names_the_key():
    from laminae.errors import ConfigError

    with pytest.raises(ConfigError, match=r"config key 'experiments.0'.*one of \[.*'qkv'.*got 'anisotropy'"):
        load_runs([*TINY, "experiments=[anisotropy]"], project_root=PROJECT_ROOT)
    with pytest.raises(ConfigError, match="config key 'experiment_packages'"):
        load_runs([*TINY, "experiment_packages=[no_such_module_anywhere]"], project_root=PROJECT_ROOT)


def test_an_external_experiment_gets_its_config_group_and_schema():
    (run,) = load_runs([*TINY, EXAMPLES, "experiments=[anisotropy]", "anisotropy.exclude_first_token=true"],
                       project_root=PROJECT_ROOT)
    assert run.config["anisotropy"] == {"exclude_first_token": True, "plot": {"colour": "#0072B2"}}
    from laminae.errors import ConfigError

    with pytest.raises(ConfigError, match="config key 'anisotropy.exclude_first_token': expected true or false"):
        load_runs([*TINY, EXAMPLES, "anisotropy.exclude_first_token=3"], project_root=PROJECT_ROOT)



# A schema that declares its keys but leaves additionalProperties out: JSON schema alone would let
# any other key through, to fail later inside a job.
OPEN_SCHEMA = ('{"type": "object", "properties": {"plot": {"type": "object", '
               '"properties": {"colour": {"type": "string"}}}}}')


def test_an_undeclared_key_of_an_external_experiment_is_refused_whatever_its_schema(tmp_path):
    from laminae.errors import ConfigError

    write_experiment(tmp_path / "lab" / "norms", {"default.yaml": "plot:\n  colour: red\n  colr: blue\n"},
                     schema=OPEN_SCHEMA)
    with pytest.raises(ConfigError) as raised:
        load_runs([*TINY, f"experiment_packages=[{tmp_path / 'lab'}]"], project_root=PROJECT_ROOT)
    message = str(raised.value)
    assert message.startswith("config key 'norms.plot.colr': expected a key that experiment 'norms' declares"), message
    assert f"it is set in {tmp_path / 'lab' / 'norms' / 'default.yaml'}" in message
    # the example's `plot` sets no additionalProperties either: an added key is refused all the same
    with pytest.raises(ConfigError, match=r"config key 'anisotropy.plot.color': expected a key .*\(declared here: "
                                          r"colour\); it comes from an override"):
        load_runs([*TINY, EXAMPLES, "+anisotropy.plot.color=red"], project_root=PROJECT_ROOT)


def test_an_undeclared_key_stops_the_command_line_with_one_line(tmp_path):
    from test_bad_inputs import assert_nothing_written, assert_one_line_error

    write_experiment(tmp_path / "lab" / "norms", {"default.yaml": "plot:\n  colr: blue\n"}, schema=OPEN_SCHEMA)
    result = snakemake(tmp_path / "work", [*TINY, f"experiment_packages=[{tmp_path / 'lab'}]"], "-n", check=False)
    assert_one_line_error(result, "config key 'norms.plot.colr'", "declared here: colour",
                          f"it is set in {tmp_path / 'lab' / 'norms' / 'default.yaml'}")
    assert_nothing_written(tmp_path / "work")


# ---------------------------------------------------------------------------- shared extraction
def test_experiments_on_one_corpus_share_one_extraction_of_the_union_of_their_sites():
    (alone,) = load_runs([*TINY, EXAMPLES, "experiments=[anisotropy]"], project_root=PROJECT_ROOT)
    (both,) = load_runs([*TINY, EXAMPLES, "experiments=[adjustments,anisotropy]"], project_root=PROJECT_ROOT)
    (adjustments,) = load_runs([*TINY, EXAMPLES, "experiments=[adjustments]"], project_root=PROJECT_ROOT)
    assert alone.stages["corpus.extract"].config["sites"] == ["resid_post"]
    # anisotropy's site is among adjustments' four: adding it changes no extraction
    assert both.stages["corpus.extract"].config["sites"] == ["attn_out", "mlp_out", "resid_pre", "resid_post"]
    assert both.stages["corpus.extract"].hash == adjustments.stages["corpus.extract"].hash
    assert both.extraction("anisotropy") is both.extraction("adjustments")
    # a store without adjustments' sites is another extraction, never a silent gap
    assert alone.stages["corpus.extract"].hash != both.stages["corpus.extract"].hash
    # with adjustments computed during extraction, only anisotropy's site is stored
    (during,) = load_runs([*TINY, EXAMPLES, "experiments=[adjustments,anisotropy]", "adjustments.during_extraction=true"],
                          project_root=PROJECT_ROOT)
    extraction = during.stages["corpus.extract"].config
    assert extraction["sites"] == ["resid_post"] and list(extraction["reductions"]) == ["adjustments"]


def test_experiment_2_pathlength_and_rotations_run_one_extraction_between_them(tmp_path):
    dry = snakemake(tmp_path, [*TINY, "experiments=[adjustments,pathlength,rotations]"], "-n")
    assert scheduled_rules(dry) == {"random_model": 1, "extract": 1, "fidelity_figure": 1, "all": 1,
                                    **{f"{e}_{s}": 1 for e in ("adjustments", "pathlength", "rotations")
                                       for s in ("analysis", "figures", "claims")}}


def test_the_dag_runs_one_extraction_per_inputs(tmp_path):
    dry = snakemake(tmp_path, [*TINY, EXAMPLES, "experiments=[qkv,adjustments,anisotropy]"], "-n")
    assert scheduled_rules(dry) == {"random_model": 1, "extract": 2, "fidelity_figure": 2, "all": 1,
                                    **{f"{e}_{s}": 1 for e in ("qkv", "adjustments", "anisotropy")
                                       for s in ("analysis", "figures")},
                                    "qkv_claims": 1, "adjustments_claims": 1}   # anisotropy declares no measures


# ------------------------------------------------------------------ an experiment outside src/
def naive_anisotropy(x: np.ndarray) -> np.ndarray:
    """Mean cosine over ordered pairs of distinct rows, per layer, from the Gram matrix of the
    normalised rows: (n_layers, n_rows, width) -> (n_layers,)."""
    unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
    out = []
    for layer in unit.astype(np.float64):
        gram = layer @ layer.T
        n = len(layer)
        out.append((gram.sum() - np.trace(gram)) / (n * (n - 1)))
    return np.array(out)


@pytest.mark.slow
def test_an_experiment_outside_the_package_runs_end_to_end_cached_and_swept(tmp_path, built_models):
    overrides = [*TINY, EXAMPLES, "experiments=[adjustments]", built_models]
    snakemake(tmp_path, overrides, "--cores", "2")
    # enabling the external experiment, whose site the store already holds, reruns no model
    overrides = [*TINY, EXAMPLES, "experiments=[adjustments,anisotropy]", built_models]
    assert scheduled_rules(snakemake(tmp_path, overrides, "-n")) == {"anisotropy_analysis": 1, "anisotropy_figures": 1,
                                                                     "all": 1}
    snakemake(tmp_path, overrides, "--cores", "2")
    (run,) = load_runs(overrides, project_root=PROJECT_ROOT)
    store = ActivationStore(tmp_path / run.extraction("anisotropy").output_dir)
    table = read_tsv(tmp_path / run.stages["anisotropy.analysis"].output_dir / "anisotropy.tsv")
    np.testing.assert_allclose([float(row["anisotropy"]) for row in table], naive_anisotropy(store.read("resid_post")),
                               rtol=1e-9)
    assert [int(row["n"]) for row in table] == [store.n_rows] * store.n_layers
    figures = tmp_path / run.stages["anisotropy.plot"].output_dir
    assert sorted(p.name for p in figures.iterdir()) == ["anisotropy.pdf", "anisotropy.png", "config.yaml"]
    assert scheduled_rules(snakemake(tmp_path, overrides, "-n")) == {}
    # the report groups figures by experiment, each with its own captions
    snakemake(tmp_path, overrides, "--report", str(tmp_path / "report.html"))
    report = (tmp_path / "report.html").read_text()
    for text in ("Anisotropy of the residual stream", "directions spread evenly", "Experiment 2: adjustments",
                 "the cosine similarity between the"):
        assert text in report, text
    # a sweep over its setting: two analyses of the one extraction, then nothing to do
    sweep = ["anisotropy.exclude_first_token=false,true"]
    assert scheduled_rules(snakemake(tmp_path, overrides, "-n", sweep=sweep)) == {
        "anisotropy_analysis": 1, "anisotropy_figures": 1, "all": 1}
    snakemake(tmp_path, overrides, "--cores", "2", sweep=sweep)
    assert scheduled_rules(snakemake(tmp_path, overrides, "-n", sweep=sweep)) == {}
    (_, without_first) = load_runs(overrides, sweep, project_root=PROJECT_ROOT)
    table = read_tsv(tmp_path / without_first.stages["anisotropy.analysis"].output_dir / "anisotropy.tsv")
    kept = store.rows.integers("position") > 0
    np.testing.assert_allclose([float(row["anisotropy"]) for row in table],
                               naive_anisotropy(store.read("resid_post")[:, kept]), rtol=1e-9)


@pytest.mark.slow
def test_a_moved_project_schedules_nothing(tmp_path):
    """Inputs inside the project are recorded relative to it: copying the project elsewhere (or
    mounting it at another path) keeps every cached result."""
    first = tmp_path / "first"
    first.mkdir()
    for name in ("Snakefile", "conf", "src", "workflow", "data", "envs"):
        source = PROJECT_ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, first / name)
    overrides = [*TINY, "experiments=[adjustments]"]
    (run,) = load_runs(overrides, project_root=PROJECT_ROOT)
    target = str(run.extraction("adjustments").output_dir)   # the corpus extraction: what an absolute input reran
    snakemake_in(first, overrides, "--cores", "2", target)
    moved = tmp_path / "moved"
    first.rename(moved)
    assert scheduled_rules(snakemake_in(moved, overrides, "-n", target)) == {}
    copied = Path(shutil.copytree(moved, tmp_path / "copied", symlinks=True))   # copytree keeps mtimes
    assert scheduled_rules(snakemake_in(copied, overrides, "-n", target)) == {}
    with h5py.File(copied / target / "layer_00.h5") as handle:
        assert str(tmp_path) not in handle.attrs["config_yaml"]


def snakemake_in(project: Path, overrides: list[str], *args: str):
    """Snakemake on the project at `project` (its own Snakefile, run from its root)."""
    import subprocess

    from workflow_helpers import SNAKEMAKE, snakemake_env

    config = "overrides=[" + ",".join(f'"{o}"' for o in overrides) + "]"
    result = subprocess.run([SNAKEMAKE, *args, "--config", config], cwd=project, capture_output=True, text=True,
                            timeout=600, env=snakemake_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_a_broken_external_experiment_stops_the_command_line_with_one_line(tmp_path):
    from test_bad_inputs import assert_nothing_written, assert_one_line_error

    write_experiment(tmp_path / "lab" / "norms", sites='("resid_mid",)')
    result = snakemake(tmp_path, [*TINY, f"experiment_packages=[{tmp_path / 'lab'}]"], "-n", check=False)
    assert_one_line_error(result, "experiment 'norms' (", "sites must be a non-empty tuple")
    assert_nothing_written(tmp_path)


def test_hooks_that_do_not_write_their_declared_files_are_named_in_one_error(tmp_path):
    """The plug-in author's mistake, not a bug of laminae: an ExperimentError (one `laminae:`
    line in a job) naming the experiment, the hook and the files; nothing under the final name."""
    from test_pathlength import N_LAYERS, WIDTH, WINDOWS, UPSTREAM, write_store

    from laminae.errors import ExperimentError
    from laminae.stages.analysis import run_analysis
    from laminae.stages.figures import run_figures

    write_experiment(tmp_path / "lab" / "norms", reducer=None, analyse='".work:analyse"',
                     files={"work.py": "def analyse(job): ...\ndef plot(job): ...\n"})
    norms = discover([str(tmp_path / "lab")], PROJECT_ROOT)["norms"]
    zeros = np.zeros((N_LAYERS, sum(WINDOWS), WIDTH), dtype=np.float32)
    store = write_store(tmp_path / "activations", {"attn_out": zeros, "resid_post": zeros})
    record = {"stage": "norms.analysis", "hash": "0" * 10, "config": {"norms": {}, "upstream": UPSTREAM}}
    with pytest.raises(ExperimentError, match=r"experiment 'norms' \(its analyse hook\): did not write norms.tsv"):
        run_analysis(norms, record, store, tmp_path / "metrics")
    figures = {"stage": "norms.plot", "hash": "0" * 10, "config": {"plot": {"dpi": 50}, "norms": {"plot": {}}}}
    with pytest.raises(ExperimentError, match=r"experiment 'norms' \(its plot hook\): did not save norms.png, norms.pdf"):
        run_figures(norms, figures, {}, tmp_path, tmp_path / "figures")
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "figures").exists()


def test_a_sweep_over_an_experiment_without_compare_says_it_makes_no_comparison(tmp_path):
    from laminae.workflow import WorkflowPlan

    schema = ('{"type": "object", "properties": {"level": {"type": "integer"}, "plot": {"type": "object"}}}')
    write_experiment(tmp_path / "lab" / "norms", {"default.yaml": "level: 1\nplot: {}\n"}, schema=schema)
    overrides = [*TINY, f"experiment_packages=[{tmp_path / 'lab'}]", "experiments=[norms,adjustments]"]
    plan = WorkflowPlan.from_snakemake_config({"overrides": overrides, "sweep": ["norms.level=1,2"]}, PROJECT_ROOT)
    assert plan.notes == ["experiment 'norms' declares no compare hook: the sweep makes no comparison figure of "
                          "its 2 analyses (each run's own figures are made)"]
    assert not plan.comparisons   # adjustments has a compare hook, but its analysis is the same in both runs
    swept = WorkflowPlan.from_snakemake_config({"overrides": overrides, "sweep": ["adjustments.exclude_first_token=true,false"]},
                                               PROJECT_ROOT)
    assert swept.notes == [] and [c.experiment for c in swept.comparisons.values()] == ["adjustments"]


def test_an_experiment_needing_a_readout_is_skipped_for_an_encoder_in_a_sweep_and_refused_alone(tmp_path):
    from laminae.errors import ConfigError
    from laminae.workflow import WorkflowPlan

    schema = '{"type": "object", "properties": {"plot": {"type": "object"}}}'
    write_experiment(tmp_path / "lab" / "norms", needs='("readout",)', schema=schema)
    lab = f"experiment_packages=[{tmp_path / 'lab'}]"
    plan = WorkflowPlan.from_snakemake_config({"overrides": [lab, "experiments=[norms,rotations]"],
                                               "sweep": ["model=tiny-gpt2,minilm-l6"]}, PROJECT_ROOT)
    assert [list(run.experiments) for run in plan.runs] == [["norms", "rotations"], ["rotations"]]
    assert plan.notes == ["norms skipped for minilm-l6: an encoder (family bert) has no next-token readout"]
    assert not any(stage.name.startswith("norms.") for stage in plan.runs[1].stages.values())
    with pytest.raises(ConfigError) as refused:   # named alone, for an encoder: one line, before any job
        load_runs(["model=minilm-l6", lab, "experiments=[norms]"], project_root=PROJECT_ROOT)
    assert str(refused.value).count("\n") == 0 and "config key 'experiments'" in str(refused.value)
    assert "norms: an encoder (family bert) has no next-token readout" in str(refused.value)
    llama = WorkflowPlan.from_snakemake_config({"overrides": [lab, "experiments=[norms]"],
                                                "sweep": ["model=tiny-gpt2,tiny-llama"]}, PROJECT_ROOT)
    assert llama.notes == ["norms skipped for tiny-llama: a random base model saved without an unembedding has no "
                           "next-token readout (set model.random_init.config.tie_word_embeddings=true)"]
    # a random encoder's family is read from its config, without loading anything
    from laminae.config.needs import model_family

    assert model_family({"family": "auto", "random_init": {"config": {"model_type": "bert"}}}) == "bert"
    assert model_family({"family": "auto", "pretrained": "org/unknown-hub-model"}) is None


def test_the_guide_shows_the_example_as_it_is():
    guide = (PROJECT_ROOT / "docs" / "WRITING_AN_EXPERIMENT.md").read_text()
    folder = PROJECT_ROOT / "examples" / "anisotropy"
    for name in ("__init__.py", "default.yaml", "caption.rst"):
        assert (folder / name).read_text() in guide, name
    assert len((folder / "__init__.py").read_text().splitlines()) <= 80
