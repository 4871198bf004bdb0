"""Bad input through the real command line: `snakemake --cores 2 --config 'overrides=[...]'` in
a scratch workdir must stop with a non-zero exit and exactly one `laminae: ...` line that names
the config key or file and what was expected, print no traceback, leave Snakemake unlocked, and
leave no partial output behind.

"Partial output" per kind of failure:
- parse-time and preflight errors (before any job): no `results/` and no `models/` at all;
- a failed extraction: no `activations/` folder and no hidden `.activations.tmp-*` sibling; the
  only new files anywhere under `results/` are logs (`extract.log` says what happened);
- a failed metrics job: its `metrics/` folder holds no file (no table, no .h5, no config.yaml,
  no hidden temporary), and the only new files under `results/` are logs.

Job-time cases reuse one successful tiny-gpt2 run (module fixture), copied per test.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import h5py
import pytest

from laminae.config import load_runs
from laminae.errors import ConfigError
from laminae.registry import discover
from workflow_helpers import PROJECT_ROOT, SNAKEMAKE, TINY_QKV_RUN, snakemake, snakemake_env

TINY = ["model=tiny-gpt2"]
QKV_ONLY = TINY_QKV_RUN
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# --- helpers -------------------------------------------------------------------------------


def snakemake_raw(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake -s <repo>/Snakefile -d <workdir> <args>`, with `--config` exactly as given."""
    return subprocess.run([SNAKEMAKE, "-s", str(PROJECT_ROOT / "Snakefile"), "-d", str(workdir), *args],
                          capture_output=True, text=True, timeout=300, env=snakemake_env())


def files_under(workdir: Path) -> set[str]:
    """Every file (hidden ones included) under results/ and models/, relative to `workdir`."""
    return {str(p.relative_to(workdir)) for top in ("results", "models") if (workdir / top).exists()
            for p in (workdir / top).rglob("*") if p.is_file()}


def assert_one_line_error(result, *expected: str) -> str:
    """Non-zero exit, no traceback, one `laminae:` line holding every `expected` fragment, printed
    once (not echoed by a logging handler too), and Snakemake's lock released."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-6000:]
    lines = [line for line in output.splitlines() if line.startswith("laminae:")]
    assert len(lines) == 1, output[-6000:]
    line = lines[0]
    print(line)  # shown with pytest -rP: the message a user sees
    for fragment in expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert output.count(line.removeprefix("laminae: ")) == 1, output[-6000:]
    return line


def assert_unlocked(workdir: Path) -> None:
    locks = workdir / ".snakemake" / "locks"
    assert not locks.exists() or not any(locks.iterdir()), "a lock was left: the next run would need --unlock"


def assert_nothing_written(workdir: Path) -> None:
    assert not (workdir / "results").exists() and not (workdir / "models").exists(), files_under(workdir)
    assert_unlocked(workdir)


def assert_only_logs_added(workdir: Path, before: set[str]) -> None:
    after = files_under(workdir)
    added = sorted(after - before)
    assert all(name.endswith(".log") for name in added), added
    assert not [name for name in after if ".tmp" in name], sorted(after)
    assert_unlocked(workdir)


# --- parse-time and preflight errors: before any job -------------------------------------------


def _corpus(tmp_path: Path, name: str, content: bytes | None) -> str:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    return str(path)


JSONL_WITHOUT_TEXT = b'{"body": "x"}\n'
PARSE_TIME = {
    # id: (overrides or a callable tmp_path -> overrides, fragments of the one line)
    "unknown_model_group": (["model=gpt3"], ["config key 'model'", "expected one of [", "'tiny-gpt2'", "got 'gpt3'"]),
    "template_without_word": ([*TINY, "template.text=The next word is"],
                              ["config key 'template.text'", "exactly one '{word}' placeholder", "got 'The next word is'"]),
    "template_with_two_words": ([*TINY, "template.text='{word} and {word}'"],
                                ["config key 'template.text'", "exactly one '{word}' placeholder"]),
    "template_with_unquoted_braces": ([*TINY, "template.text=a {word} b"],
                                      ["config key 'template.text'", "quoted", "template.text='a {word} b'"]),
    "empty_category": ([*TINY, "stimuli.categories.fruit=[]"],
                       ["config key 'stimuli.categories.fruit'", "at least 2 words", "got []"]),
    "duplicated_word": ([*TINY, "stimuli.categories.fruit=[apple,pear,apple]"],
                        ["config key 'stimuli.categories.fruit'", "each word once", "'apple' is twice here"]),
    "word_in_two_categories": ([*TINY, "stimuli.categories.fruit=[apple,sun]"],
                               ["config key 'stimuli.categories.space'", "each word once", "'sun' is also in 'fruit'"]),
    "category_with_one_word": ([*TINY, "stimuli.categories.fruit=[apple]"],
                               ["config key 'stimuli.categories.fruit'", "at least 2 words", "got ['apple']"]),
    "empty_word": ([*TINY, "stimuli.categories.fruit=[apple,'']"],
                   ["config key 'stimuli.categories.fruit'", "non-empty words", "got ''"]),
    "invisible_word": ([*TINY, "stimuli.categories.fruit=[apple,'\u200b']"],
                       ["config key 'stimuli.categories.fruit'", "at least one visible character"]),
    "category_not_a_list": ([*TINY, "stimuli.categories.fruit=apple"],
                            ["config key 'stimuli.categories.fruit'", "expected a list", "got 'apple'"]),
    "missing_corpus": (lambda tmp: [*TINY, f"corpus.path={_corpus(tmp, 'missing.txt', None)}"],
                       ["config key 'corpus.path'", "an existing text file or folder", "missing.txt"]),
    "empty_corpus": (lambda tmp: [*TINY, f"corpus.path={_corpus(tmp, 'empty.txt', b'  ' + bytes([10]))}"],
                     ["config key 'corpus.path'", "non-empty text files", "empty.txt is empty"]),
    "jsonl_without_the_text_field": (lambda tmp: [*TINY, f"corpus.path={_corpus(tmp, 'docs.jsonl', JSONL_WITHOUT_TEXT)}"],
                                     ["config key 'corpus.text_field'", "line 1 has no 'text'", "docs.jsonl"]),
    "non_utf8_corpus": (lambda tmp: [*TINY, f"corpus.path={_corpus(tmp, 'latin1.txt', 'café crème'.encode('latin-1'))}"],
                        ["config key 'corpus.path'", "UTF-8 text files", "latin1.txt is not"]),
    "overlap_not_a_choice": ([*TINY, "extract.overlap=sometimes"],
                             ["config key 'extract.overlap'", "'auto', True, False", "got 'sometimes'"]),
    "plot_layer_out_of_range": ([*TINY, "qkv.plot.similarity_layers=[0,12]"],
                                ["config key 'qkv.plot.similarity_layers'", "[-4, 3] for a 4-layer model", "got 12"]),
    "negative_permutations": ([*TINY, "qkv.n_permutations=-5"],
                              ["config key 'qkv.n_permutations'", "an integer >= 0", "got -5"]),
    "unknown_device": ([*TINY, "device=tpu"], ["config key 'device'", "auto, cpu, cuda or cuda:N", "got 'tpu'"]),
    "zero_batch_size": ([*TINY, "batch_size=0"], ["config key 'batch_size'", "an integer >= 1", "got 0"]),
    "misspelt_key": ([*TINY, "qkv.n_permutation=10"], ["config key 'qkv.n_permutation'", "an existing key of 'qkv'"]),
    "undeclared_key": ([*TINY, "+rotations.plot.bin=30"],
                       ["config key 'rotations.plot.bin'", "a key that experiment 'rotations' declares",
                        "declared here: bins, depth_bands, error_bar", "it comes from an override"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(PARSE_TIME))
def test_config_error_stops_before_any_job(case, tmp_path):
    overrides, expected = PARSE_TIME[case]
    overrides = overrides(tmp_path) if callable(overrides) else overrides
    workdir = tmp_path / "work"
    started = time.monotonic()
    result = snakemake(workdir, overrides, "--cores", "2", check=False)
    assert_one_line_error(result, *expected)
    assert "Select jobs to execute" not in result.stdout + result.stderr
    assert_nothing_written(workdir)
    assert time.monotonic() - started < 60


def test_config_key_outside_overrides_is_named(tmp_path):
    """`--config model=gpt2` instead of `--config 'overrides=["model=gpt2"]'`."""
    result = snakemake_raw(tmp_path, "--cores", "2", "--config", "model=gpt2")
    assert_one_line_error(result, "'--config model'", "overrides=[...]", """--config 'overrides=["model=gpt2"]'""")
    assert_nothing_written(tmp_path)


def test_overrides_not_a_list_is_named(tmp_path):
    result = snakemake_raw(tmp_path, "--cores", "2", "--config", "overrides=model=tiny-gpt2")
    assert_one_line_error(result, "config key 'overrides'", "a list of strings", "got 'model=tiny-gpt2'")
    assert_nothing_written(tmp_path)


@pytest.mark.slow
def test_cuda_without_cuda_stops_in_the_preflight(tmp_path):
    """device=cuda on a machine without CUDA, jobs running locally: the onstart preflight stops
    the run before any job (a cluster run checks it in the extraction job, on its node)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = snakemake(tmp_path, [*QKV_ONLY, "device=cuda"], "--cores", "2", check=False)
    assert_one_line_error(result, "config key 'device'", "cpu or auto on a machine without CUDA", "got 'cuda'")
    assert "localrule" not in result.stdout + result.stderr  # no job started, not even the model build
    assert_nothing_written(tmp_path)


@pytest.mark.slow
def test_unreachable_hub_model_stops_within_seconds(tmp_path, monkeypatch):
    """model=gpt2-large offline with an empty HF cache: the preflight names model.pretrained
    and points at the offline models, instead of from_pretrained's retries."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    env = {**OFFLINE, "HF_HOME": str(tmp_path / "hf")}
    started = time.monotonic()
    result = snakemake(tmp_path / "work", ["model=gpt2-large", "experiments=[qkv]"], "--cores", "2", check=False, env=env)
    assert_one_line_error(result, "config key 'model.pretrained'", "'gpt2-large'", "HF_HUB_OFFLINE is set",
                          "model=minilm-l6")
    assert time.monotonic() - started < 30  # ~2 s here: Snakemake's start-up and one failed DNS lookup
    assert_nothing_written(tmp_path / "work")


@pytest.mark.slow
def test_missing_local_model_directory_is_named(tmp_path):
    result = snakemake(tmp_path, ["model=gpt2", "model.pretrained=./no/such/folder"], "--cores", "2", check=False)
    assert_one_line_error(result, "config key 'model.pretrained'", "'./no/such/folder' does not exist")
    assert_nothing_written(tmp_path)


# --- job-time errors: one successful run, then bad inputs on top of it --------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shared_run) -> Path:
    """One successful tiny-gpt2 run of experiment 1, random model included (a copy of the run
    test_cli.py inspects too)."""
    return shared_run(QKV_ONLY, tmp_path_factory.mktemp("finished") / "work")


@pytest.fixture
def workdir(finished, tmp_path) -> Path:
    """A private copy of the finished run (timestamps kept, so Snakemake sees it up to date)."""
    return Path(shutil.copytree(finished, tmp_path / "work", symlinks=True))


def _stages(overrides):
    (run,) = load_runs(overrides, project_root=PROJECT_ROOT)
    return run.stages


def long_corpus(path: Path, words: int = 1500) -> Path:
    path.write_text(" ".join(f"laminar{i % 97}" for i in range(words)) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_corpus_longer_than_the_context_with_windowing_off(workdir, tmp_path):
    overrides = [*TINY, "experiments=[adjustments]", f"corpus.path={long_corpus(tmp_path / 'long.txt')}",
                 "corpus.windowing=false"]
    extract = _stages(overrides)["corpus.extract"]
    before = files_under(workdir)
    result = snakemake(workdir, overrides, "--cores", "2", check=False)
    assert_one_line_error(result, "config key 'corpus.windowing'", "expected true", f"{tmp_path / 'long.txt'} has ",
                          "one window holds 1024")
    assert not (workdir / extract.output_dir).exists()
    assert_only_logs_added(workdir, before)


@pytest.mark.slow
def test_window_above_the_model_context(workdir):
    overrides = [*TINY, "experiments=[adjustments]", "corpus.window_tokens=4096"]
    extract = _stages(overrides)["corpus.extract"]
    before = files_under(workdir)
    result = snakemake(workdir, overrides, "--cores", "2", check=False)
    assert_one_line_error(result, "config key 'corpus.window_tokens'", "at most the model's context of 1024 tokens",
                          "got 4096")
    assert not (workdir / extract.output_dir).exists()
    assert_only_logs_added(workdir, before)


@pytest.mark.slow
def test_word_the_tokenizer_drops(tmp_path):
    """A lone combining accent passes the config checks, but BERT's normaliser strips it: the
    extraction names the category before loading the weights."""
    overrides = ["model=minilm-l6", "experiments=[qkv]", "stimuli.categories.fruit=[apple,pear,'\u0301']"]
    result = snakemake(tmp_path, overrides, "--cores", "2", check=False)
    assert_one_line_error(result, "config key 'stimuli.categories.fruit'", "words the model's tokenizer keeps",
                          "leaves no token")
    assert not (tmp_path / _stages(overrides)["stimuli.extract"].output_dir).exists()
    assert_only_logs_added(tmp_path, set())


@pytest.mark.slow
def test_truncated_layer_file_handed_to_the_metrics_stage(workdir):
    """A damaged activation file (disk full, interrupted copy) under a new analysis setting: the
    metrics job names the file; nothing is written; following the advice recovers."""
    stages = _stages(QKV_ONLY)
    layer = workdir / stages["stimuli.extract"].output_dir / "layer_01.h5"
    layer.write_bytes(layer.read_bytes()[: layer.stat().st_size // 2])
    overrides = [*QKV_ONLY, "qkv.n_permutations=50"]
    metrics = workdir / _stages(overrides)["qkv.analysis"].output_dir
    before = files_under(workdir)
    result = snakemake(workdir, overrides, "--cores", "2", check=False)
    line = assert_one_line_error(result, f"file '{stages['stimuli.extract'].output_dir / 'layer_01.h5'}'",
                                 "not a readable HDF5 file", "delete the activations folder and rerun")
    assert "rule extract:" not in result.stdout + result.stderr  # the damage is not silently papered over
    assert not metrics.exists() or not any(metrics.iterdir()), sorted(metrics.iterdir())
    assert_only_logs_added(workdir, before)
    # the advice in the message works
    assert "delete the activations folder and rerun to rebuild it" in line
    shutil.rmtree(layer.parent)
    snakemake(workdir, overrides, "--cores", "2")
    assert (metrics / "qkv_laminar.tsv").is_file()


@pytest.mark.slow
def test_activations_of_another_config_handed_to_the_metrics_stage(workdir):
    """Layer files whose stage hash is not the config's (copied in from another run): the forced
    metrics job refuses them, and its earlier outputs are not left looking current."""
    stages = _stages(QKV_ONLY)
    activations = workdir / stages["stimuli.extract"].output_dir
    for path in activations.glob("layer_*.h5"):
        with h5py.File(path, "r+") as handle:
            handle.attrs["stage_hash"] = "0123456789"
    metrics = workdir / stages["qkv.analysis"].output_dir
    before = files_under(workdir)
    result = snakemake(workdir, QKV_ONLY, "--cores", "2", "--forcerun", "qkv_analysis", check=False)
    assert_one_line_error(result, f"file '{stages['stimuli.extract'].output_dir / 'layer_00.h5'}'",
                          "stage hash '0123456789' does not match the config's", stages["stimuli.extract"].hash)
    assert not metrics.exists() or not any(p.is_file() for p in metrics.iterdir()), sorted(metrics.iterdir())
    assert_only_logs_added(workdir, before)


# --- library level: inputs are planned before the weights load ---------------------------------


@pytest.mark.parametrize("overrides,key", [
    (["corpus.windowing=false"], "corpus.windowing"),
    (["corpus.window_tokens=4096"], "corpus.window_tokens"),
])
def test_extraction_checks_inputs_before_loading_weights(overrides, key, tmp_path, models_dir, monkeypatch):
    import laminae.stages.extract as extract_module

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the inputs were checked")

    monkeypatch.setattr(extract_module, "load_model", no_weights)
    corpus = long_corpus(tmp_path / "long.txt")
    (run,) = load_runs([*TINY, "experiments=[adjustments]", f"corpus.path={corpus}", *overrides],
                       project_root=PROJECT_ROOT)
    stage = run.stages["corpus.extract"]
    record = {"stage": stage.name, "hash": stage.hash, "config": stage.config}
    runtime = {**run.runtime, "models_dir": str(models_dir)}
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        extract_module.extract(record, runtime, tmp_path / "activations", PROJECT_ROOT, discover())
    assert not any(tmp_path.glob("*activations*"))


# --- disk space: checked before the model loads; a disk that fills anyway is one line --------


def free_space(monkeypatch, free: int) -> None:
    """shutil.disk_usage as laminae.disk sees it: `free` bytes left."""
    import collections

    import laminae.disk as disk

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - free, free))


def corpus_extraction(tmp_path: Path, models_dir: Path, *overrides: str):
    (run,) = load_runs([*TINY, "experiments=[adjustments]", "device=cpu", *overrides], project_root=PROJECT_ROOT)
    stage = run.stages["corpus.extract"]
    record = {"stage": stage.name, "hash": stage.hash, "config": stage.config}
    return record, {**run.runtime, "models_dir": str(models_dir)}


def test_extraction_checks_disk_space_before_loading_weights(tmp_path, models_dir, monkeypatch):
    """The corpus's rows are known once tokenised: the job checks then, before the weights load.
    tiny-gpt2 on the seed corpus: 4 layers x 346 rows x 4 sites x 64 x 4 bytes = 1.4 MB."""
    import laminae.stages.extract as extract_module
    from laminae.disk import DiskSpaceError

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the disk space was checked")

    monkeypatch.setattr(extract_module, "load_model", no_weights)
    free_space(monkeypatch, 600 * 1024)
    record, runtime = corpus_extraction(tmp_path, models_dir)
    with pytest.raises(DiskSpaceError) as error:
        extract_module.extract(record, runtime, tmp_path / "x" / "activations", PROJECT_ROOT, discover())
    message = str(error.value)
    assert "\n" not in message and f"folder '{tmp_path / 'x'}'" in message
    assert "needs at least 1.4 MB, 600.0 KB free" in message and "4 layers x 346 rows" in message
    assert not any(tmp_path.rglob("*activations*"))
    runtime["compression"] = "gzip"   # a compressed store's size is not known in advance: not checked
    monkeypatch.setattr(extract_module, "load_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("loaded")))
    with pytest.raises(RuntimeError, match="loaded"):
        extract_module.extract(record, runtime, tmp_path / "x" / "activations", PROJECT_ROOT, discover())


@pytest.mark.parametrize("overlap", [True, False], ids=["writer-thread", "after-each-batch"])
def test_disk_filling_during_the_extraction_is_one_line(overlap, tmp_path, models_dir, monkeypatch):
    """Another process takes the space after the check: the writer's ENOSPC (in the writer thread
    or not) stops the forward loop and ends in one DiskSpaceError, nothing kept, files closed."""
    import errno

    import laminae.store as store
    from laminae.disk import DiskSpaceError

    calls = {"n": 0}
    real = store._write_rows

    def full(dataset, start, values):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "Can't synchronously write data (errno = 28, 'No space left on device')")
        real(dataset, start, values)

    monkeypatch.setattr(store, "_write_rows", full)
    record, runtime = corpus_extraction(tmp_path, models_dir, "batch_size=1", "corpus.window_tokens=32")
    runtime["overlap"] = overlap
    from laminae.stages.extract import extract

    with pytest.raises(DiskSpaceError, match="no space left on device") as error:
        extract(record, runtime, tmp_path / "x" / "activations", PROJECT_ROOT, discover())
    assert "\n" not in str(error.value)
    assert list((tmp_path / "x").iterdir()) == []
    assert not h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)


def test_preflight_stops_when_the_stores_cannot_fit(tmp_path, monkeypatch):
    """Before any job, the stores whose size the config tells (stimuli: one row per word; the
    shape declared), summed per filesystem, against the free space: one line naming the folder."""
    from laminae.disk import DiskSpaceError
    from laminae.workflow import WorkflowPlan

    results = tmp_path / "results"
    plan = WorkflowPlan(runs=load_runs([*QKV_ONLY, f"results_dir={results}"], project_root=PROJECT_ROOT),
                        root=PROJECT_ROOT)
    free_space(monkeypatch, 1000)
    with pytest.raises(DiskSpaceError) as error:
        plan.preflight(local=True)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"folder '{results}': not enough disk space")
    assert "the 1 activation store still to extract" in message and "1000 B free" in message
    free_space(monkeypatch, 10**9)
    plan.preflight(local=True)
