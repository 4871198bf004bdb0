"""Config composition, validation and per-stage hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from laminae.config import load_runs, stable_hash
from laminae.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
BASE = ["model=tiny-gpt2"]


def hashes(*overrides: str) -> dict[str, str]:
    (run,) = load_runs([*BASE, *overrides], project_root=ROOT)
    return {name: stage.hash for name, stage in run.stages.items()}


def test_one_extraction_per_inputs_and_three_stages_per_experiment():
    """analysis, plot, and claims (every built-in experiment has claims by default)."""
    assert set(hashes()) == {"stimuli.extract", "corpus.extract",
                             *(f"{e}.{k}" for e in ("qkv", *CORPUS_EXPERIMENTS) for k in ("analysis", "plot", "claims"))}


def test_composition_is_deterministic():
    assert hashes() == hashes()


def test_stable_hash_ignores_dict_order_but_not_values():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert stable_hash([1, 2]) != stable_hash([2, 1])


# override -> the stages whose hash must change (all others must not). An analysis change
# reruns the experiment's figures and claims; the claims stage draws its table at plot.dpi.
CORPUS_EXPERIMENTS = ("adjustments", "pathlength", "rotations")
DOWNSTREAM = ("analysis", "plot", "claims")
QKV = {f"qkv.{k}" for k in DOWNSTREAM}
QKV_ALL = {"stimuli.extract", *QKV}
ADJ = {f"adjustments.{k}" for k in DOWNSTREAM}
PATHLENGTH = {f"pathlength.{k}" for k in DOWNSTREAM}
CORPUS_ALL = {"corpus.extract", *(f"{e}.{k}" for e in CORPUS_EXPERIMENTS for k in DOWNSTREAM)}
ALL_PLOTS = {f"{e}.{k}" for e in ("qkv", *CORPUS_EXPERIMENTS) for k in ("plot", "claims")}
CASES = {
    "model=minilm-l6": QKV_ALL | CORPUS_ALL,
    "model.dtype=float16": QKV_ALL | CORPUS_ALL,
    "template=mid_sentence": QKV_ALL,
    "stimuli=animals_tools_vehicles_colours": QKV_ALL,
    "extract.position=last": QKV_ALL,
    "qkv.components=[q,k]": QKV,      # the extraction stores q, k, v whatever is analysed
    "extract.storage_dtype=float16": QKV_ALL | CORPUS_ALL,
    "corpus.window_tokens=128": CORPUS_ALL,
    "qkv.n_permutations=99": QKV,
    "qkv.zscore=true": QKV,
    "adjustments.exclude_first_token=true": ADJ,
    "pathlength.n_bootstrap=10": PATHLENGTH,
    # claims: their own stage, and the figures that draw a claim's reported range
    "adjustments.claims.0.tolerance=0.1": {"adjustments.claims", "adjustments.plot"},
    "rotations.claims.0.support=0.8": {"rotations.claims"},
    # computed during extraction, adjustments adds its settings to the shared extraction
    "adjustments.during_extraction=true": CORPUS_ALL,
    "qkv.plot.similarity_layers=[0]": {"qkv.plot"},
    "adjustments.plot.error_bar=sd": {"adjustments.plot"},
    "plot.dpi=300": ALL_PLOTS,
    # execution and storage-layout settings change no stored value: no stage reruns
    "device=cpu": set(),
    "batch_size=1": set(),
    "extract.compression=gzip": set(),
    "extract.chunk_rows=64": set(),
    "extract.overlap=false": set(),
}


@pytest.mark.parametrize("override,changed", CASES.items(), ids=list(CASES))
def test_override_changes_exactly_the_dependent_stage_hashes(override, changed):
    before, after = hashes(), hashes(override)
    assert {name for name in before if before[name] != after[name]} == changed


# with adjustments.during_extraction=true the extraction computes the analysis, so the analysis
# keys join its hash; everything else behaves as above
DURING = "adjustments.during_extraction=true"
CASES_DURING = {
    "adjustments.exclude_first_token=true": CORPUS_ALL,   # the shared extraction computes it
    "adjustments.plot.error_bar=sd": {"adjustments.plot"},
    "pathlength.n_bootstrap=10": PATHLENGTH,
    "corpus.window_tokens=128": CORPUS_ALL,
    "extract.storage_dtype=float16": QKV_ALL | CORPUS_ALL,
    "template=mid_sentence": QKV_ALL,
    "batch_size=1": set(),
}


@pytest.mark.parametrize("override,changed", CASES_DURING.items(), ids=list(CASES_DURING))
def test_override_changes_exactly_the_dependent_stage_hashes_during_extraction(override, changed):
    before, after = hashes(DURING), hashes(DURING, override)
    assert {name for name in before if before[name] != after[name]} == changed


def test_during_extraction_moves_the_analysis_settings_into_the_extraction():
    only = "experiments=[adjustments]"
    (run,) = load_runs([*BASE, only], project_root=ROOT)
    extraction = run.stages["corpus.extract"].config
    assert extraction["reductions"] == {} and extraction["sites"] == ["attn_out", "mlp_out", "resid_pre", "resid_post"]
    (run,) = load_runs([*BASE, only, DURING], project_root=ROOT)
    extraction = run.stages["corpus.extract"].config
    assert extraction["reductions"] == {"adjustments": {"version": 1, "settings": {"exclude_first_token": False,
                                                                                   "during_extraction": True}}}
    assert extraction["sites"] == []       # no other corpus experiment needs stored activations
    # another corpus experiment that reads stored activations keeps them stored
    (run,) = load_runs([*BASE, DURING], project_root=ROOT)
    assert run.stages["corpus.extract"].config["sites"] == ["attn_out", "mlp_out", "resid_pre", "resid_post"]


def test_corpus_content_enters_the_hash(tmp_path):
    first = tmp_path / "a.txt"
    first.write_text("One text.")
    before = hashes(f"corpus.path={first}")
    first.write_text("Another text.")
    after = hashes(f"corpus.path={first}")
    assert before["corpus.extract"] != after["corpus.extract"]
    assert before["stimuli.extract"] == after["stimuli.extract"]


def test_output_folders_nest_under_upstream_and_contain_hashes():
    (run,) = load_runs(BASE, project_root=ROOT)
    extract, analysis, plot = (run.stages[name] for name in ("stimuli.extract", "qkv.analysis", "qkv.plot"))
    assert extract.output_dir == Path("results/tiny-gpt2/stimuli") / f"space_furniture_fruit.next_word-{extract.hash}" / "activations"
    assert analysis.output_dir == extract.dir / "qkv" / f"analysis-{analysis.hash}" / "metrics"
    assert plot.output_dir == analysis.dir / f"plot-{plot.hash}" / "figures"
    assert analysis.upstream == extract.hash and plot.upstream == analysis.hash


def test_sweep_is_the_cartesian_product_with_overrides_applied_to_each():
    runs = load_runs(["qkv.n_permutations=10"], ["model=tiny-gpt2,minilm-l6", "template=next_word,mid_sentence"],
                     project_root=ROOT)
    assert [r.overrides for r in runs] == [
        ("model=tiny-gpt2", "template=next_word"), ("model=tiny-gpt2", "template=mid_sentence"),
        ("model=minilm-l6", "template=next_word"), ("model=minilm-l6", "template=mid_sentence")]
    assert all(r.config["qkv"]["n_permutations"] == 10 for r in runs)
    assert len({r.stages["stimuli.extract"].hash for r in runs}) == 4
    assert len({r.stages["corpus.extract"].hash for r in runs}) == 2  # templates do not touch the corpus


@pytest.mark.parametrize("overrides,key", [
    (["model=nope"], "model"),
    (["foo=1"], "foo"),
    (["+foo=1"], "foo"),
    (["model.nope=1"], "model.nope"),
    (["qkv.n_permutations=-1"], "qkv.n_permutations"),
    (["qkv.n_bootstrap=many"], "qkv.n_bootstrap"),
    (["device=tpu"], "device"),
    (["template.text=no placeholder"], "template.text"),
    (["template.text='{word} and {word}'"], "template.text"),
    (["template.text='{word} {other}'"], "template.text"),
    (["stimuli.categories.fruit=[]"], "stimuli.categories.fruit"),
    (["stimuli.categories.fruit=[apple]"], "stimuli.categories.fruit"),
    (["stimuli.categories.fruit=[apple,apple]"], "stimuli.categories.fruit"),
    (["stimuli.categories.fruit=[apple,'']"], "stimuli.categories.fruit"),
    (["~stimuli.categories.space", "~stimuli.categories.furniture"], "stimuli.categories"),
    (["corpus.path=does/not/exist.txt"], "corpus.path"),
    (["qkv.plot.similarity_layers=[0,12]"], "qkv.plot.similarity_layers"),
    (["adjustments.plot.bins=1"], "adjustments.plot.bins"),
    (["experiment_packages=does/not/exist"], "experiment_packages"),
    (["experiment_packages=[does/not/exist]"], "experiment_packages"),
    (["experiments=[]"], "experiments"),
    (["experiments=[qkv,other]"], "experiments.1"),
    (["qkv.seed='${now:%s}'"], "qkv.seed"),
])
def test_bad_config_fails_with_one_line_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as raised:
        load_runs([*BASE, *overrides], project_root=ROOT)
    message = str(raised.value)
    assert f"config key '{key}'" in message
    assert "\n" not in message


def test_empty_corpus_file_is_rejected(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ConfigError, match="corpus.path"):
        load_runs([*BASE, f"corpus.path={empty}"], project_root=ROOT)


def test_sweep_over_results_dir_is_rejected():
    with pytest.raises(ConfigError, match="results_dir"):
        load_runs(BASE, ["results_dir=a,b"], project_root=ROOT)


# ------------------------------------------------------------------ keys no schema declares
def test_a_typo_in_an_experiments_default_yaml_names_the_key_and_the_file(tmp_path):
    """conf/qkv/default.yaml with `n_bootstrapp`: one line naming the key and the file, before
    anything runs (qkv's schema says additionalProperties: false; the check does not need it)."""
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    default = conf / "qkv" / "default.yaml"
    default.write_text(default.read_text().replace("\nseed: 0", "\nseed: 0\nn_bootstrapp: 100"))
    with pytest.raises(ConfigError) as raised:
        load_runs(BASE, project_root=ROOT, config_dir=conf)
    message = str(raised.value)
    assert message.startswith("config key 'qkv.n_bootstrapp': expected a key that experiment 'qkv' declares"), message
    assert "n_bootstrap" in message and f"it is set in {default}" in message and "\n" not in message


def test_an_undeclared_key_from_an_override_names_the_key():
    with pytest.raises(ConfigError) as raised:
        load_runs([*BASE, "+qkv.plot.similarity_layer=[0]"], project_root=ROOT)
    message = str(raised.value)
    assert message.startswith("config key 'qkv.plot.similarity_layer': expected a key"), message
    assert "(declared here: similarity_layers)" in message and "an override, not from conf/qkv/default.yaml" in message


def test_every_declared_key_passes():
    from laminae.config.schema_check import first_undeclared

    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "free": {"type": "object",
              "additionalProperties": True}, "named": {"type": "object", "additionalProperties": {"type": "object",
              "properties": {"x": {}}}}, "n": {"type": "integer"}}}
    assert first_undeclared({"a": 1, "free": {"anything": 1}, "named": {"k": {"x": 1}}}, schema) is None
    assert first_undeclared({"named": {"k": {"y": 1}}}, schema) == (("named", "k", "y"), ["x"])
    assert first_undeclared({"n": {"a": 1}}, schema) is None          # a wrong type is the schema check's
    assert first_undeclared({"b": 1}, schema) == (("b",), ["a", "free", "n", "named"])


# ------------------------------------------------------------------ the composition cache
# Varied sweep points: config-group overrides, value overrides (nested, lists, strings, null),
# additions and deletions, an experiment's group option, and runs that fail.
COMPOSED = [
    [], ["model=tiny-gpt2"], ["model=tiny-llama", "qkv.n_permutations=7"], ["template=mid_sentence"],
    ["stimuli=animals_tools_vehicles_colours", "template=mid_sentence", "batch_size=3"],
    ["model=tiny-gpt2", "experiments=[qkv]"], ["model=tiny-gpt2", "experiments=[qkv,rotations]", "plot.dpi=90"],
    ["model=tiny-gpt2", "qkv.resolution=heads", "qkv.n_bootstrap=11"], ["model=gpt2", "model.revision=abc"],
    ["model=auto", "model.pretrained=EleutherAI/pythia-70m", "model.revision=step1000"],
    ["model=tiny-gpt2", "device=cpu", "extract.storage_dtype=float16"], ["model=tiny-gpt2", "corpus.max_tokens=null"],
    ["model=tiny-gpt2", "adjustments.during_extraction=true", "corpus.shards=2"], ["model=tiny-gpt2", "qkv=default"],
    ["model=tiny-gpt2", "qkv.claims=[]"], ["model=tiny-gpt2", "+extra_key=1"], ["model=tiny-gpt2", "++batch_size=5"],
    ["model=tiny-gpt2", "~qkv.claims"], ["model=tiny-gpt2", "model.n_layers=3", "model.n_layers=4"],
    ["model=tiny-gpt2", "results_dir='out dir'"], ["model=tiny-gpt2", "plot={dpi: 77}"],
    ["model=tiny-gpt2", "qkv.n_permutations=1.5"], ["model=tiny-gpt2", "qkv.n_permutations='12'"],
    ["model=tiny-gpt2", "models_dir=${results_dir}/m"],
    # failures: unknown option, unknown key, adding an existing key, bad syntax, a group given a value
    ["model=nope"], ["model=tiny-gpt2", "qkv.no_such_key=1"], ["+batch_size=2"], ["template.text=a {word} b"],
    ["qkv=3"], ["model=tiny-gpt2", "~qkv.no_such_key"],
]


def _composed(compose, overrides):
    try:
        return compose(overrides)
    except ConfigError as error:
        return f"ConfigError: {error}"


@pytest.fixture(scope="module")
def composed_anew() -> list:
    """`compose_config` (Hydra, everything anew) on every point of COMPOSED: each dict or error line."""
    from laminae.config import compose_config
    from laminae.registry import discover

    registry = discover((), ROOT)
    return [_composed(lambda o: compose_config(o, ROOT / "conf", registry), o) for o in COMPOSED]


@pytest.mark.parametrize("cached", [False, True], ids=["memory", "disk"])
def test_composer_gives_what_hydra_composes_anew(tmp_path, cached, composed_anew):
    """`Composer` (the defaults list composed once per set of group overrides, value overrides
    applied to copies, results kept on disk) equals `compose_config` (Hydra, everything anew)
    on every point: the same dict, types included, or the same one-line error."""
    from laminae.config import Composer
    from laminae.registry import discover

    registry = discover((), ROOT)
    expected = composed_anew
    assert sum(isinstance(e, str) for e in expected) == 6
    cache = tmp_path / "cache" if cached else None
    for _ in range(2 if cached else 1):   # the second pass reads the disk cache
        with Composer(ROOT / "conf", cache_dir=cache) as composer:
            got = [_composed(lambda o: composer.compose(o, registry), o) for o in COMPOSED]
        for overrides, want, have in zip(COMPOSED, expected, got):
            assert repr(have) == repr(want), overrides   # repr: 1 and 1.0, '12' and 12 differ
    if cached:
        assert len(list((tmp_path / "cache").glob("compose-*.pkl"))) == 1


def test_a_cached_sweep_plans_the_same_stages(tmp_path, monkeypatch):
    """load_runs with the cache, cold and warm, gives the configs and stage hashes of
    load_runs without it."""
    sweep = ["qkv.n_permutations=0,3", "template=next_word,mid_sentence", "model=tiny-gpt2,tiny-llama"]

    def plan(cache):
        return [(run.overrides, run.config, {n: (s.hash, s.dir, s.config) for n, s in run.stages.items()})
                for run in load_runs(["plot.dpi=80"], sweep, ROOT, cache=cache)]

    monkeypatch.setenv("LAMINAE_CACHE_DIR", str(tmp_path / "cache"))
    reference = plan(False)
    assert not (tmp_path / "cache").exists()
    assert plan(True) == reference
    assert (tmp_path / "cache").is_dir() and len(list((tmp_path / "cache").glob("sweep-*.json"))) == 1
    assert plan(True) == reference


def test_a_cached_sweep_expands_as_hydra_does(tmp_path):
    """expand_sweep with a cache folder: the product Hydra's parser gives, read back from disk,
    one file per sweep; a damaged file is expanded anew."""
    from laminae.config import expand_sweep

    sweep = ["model=tiny-gpt2,minilm-l6", "qkv.n_permutations=1,02,3.0", "template='a, b',next_word"]
    expected = expand_sweep(sweep)
    assert len(expected) == 12 and expected[1] == ("model=tiny-gpt2", "qkv.n_permutations=1", "template=next_word")
    assert expand_sweep(sweep, tmp_path) == expected                     # written
    assert expand_sweep(sweep, tmp_path) == expected                     # read
    (path,) = tmp_path.glob("sweep-*.json")
    path.write_text('{"not": "a list"}')
    assert expand_sweep(sweep, tmp_path) == expected
    assert expand_sweep(sweep[:1], tmp_path) == expand_sweep(sweep[:1]) and len(list(tmp_path.glob("sweep-*.json"))) == 2


def test_a_job_of_a_warm_sweep_does_not_import_hydra(tmp_path):
    """A cluster job's plan (composed configs and the sweep read from the cache, a random
    model) needs neither Hydra's import nor its parser: seconds less for each of a sweep's jobs."""
    import subprocess
    import sys

    script = ("import sys; from pathlib import Path; from laminae.workflow import WorkflowPlan; "
              "config = {'overrides': ['model=tiny-gpt2'], 'sweep': ['qkv.n_permutations=0,1,2']}; "
              f"WorkflowPlan.from_snakemake_config(config, Path({str(ROOT)!r}), job=sys.argv[1] == 'job'); "
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'antlr4'}))")
    env = {**__import__("os").environ, "LAMINAE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT / "src")}
    run = lambda mode: subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, env=env,
                                      cwd=tmp_path, check=True).stdout.strip()
    assert run("dag") == "['antlr4', 'hydra', 'omegaconf']"   # the DAG's process composes (and validates)
    assert run("job") == "[]"


def test_plain_copy_is_a_deep_copy():
    import copy

    from laminae.config.keys import plain_copy

    value = {"a": [1, 2.5, {"b": None, "c": True}], "d": "x", "e": (1, [2]), "f": {3}}
    copied = plain_copy(value)
    assert copied == copy.deepcopy(value) and type(copied["e"]) is tuple
    assert copied["a"] is not value["a"] and copied["a"][2] is not value["a"][2] and copied["e"][1] is not value["e"][1]


def test_the_cache_follows_every_file_of_the_conf_tree(tmp_path):
    """An edited config file is another cache key: never a stale config."""
    import shutil

    from laminae.config import Composer
    from laminae.registry import discover

    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    registry = discover((), ROOT)
    cache = tmp_path / "cache"
    run = ["model=tiny-gpt2", "qkv.n_permutations=5"]
    with Composer(conf, cache_dir=cache) as composer:
        assert composer.compose(run, registry)["qkv"]["n_bootstrap"] != 4321
    for path, old, new in ((conf / "qkv" / "default.yaml", "n_bootstrap:", "n_bootstrap: 4321 #"),
                           (conf / "model" / "tiny-gpt2.yaml", "name:", "name: renamed #")):
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
        with Composer(conf, cache_dir=cache) as composer:
            cfg = composer.compose(run, registry)
        assert cfg["qkv"]["n_bootstrap"] == 4321
    assert cfg["model"]["name"] == "renamed"
    assert len(list(cache.glob("compose-*.pkl"))) == 3
