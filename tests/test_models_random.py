"""Random models: deterministic from the seed, GPT-2 tokenizer, built atomically."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from conftest import read_model_cfg
from laminae.config.stages import stable_hash
from laminae.errors import ConfigError, ModelUnavailableError
from laminae.models import random_models
from laminae.models.gpt2_tokenizer import gpt2_tokenizer
from laminae.models.random_models import (
    MARKER,
    build_random_model,
    ensure_random_model,
    random_model_dir,
)

TINY = {"seed": 0, "tokenizer": "gpt2", "architecture": "gpt2",
        "config": {"n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 64}}


def _cfg(random_init: dict, name: str = "tiny") -> dict:
    return {"name": name, "pretrained": None, "random_init": random_init}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_identical_weights() -> None:
    a = build_random_model(TINY).state_dict()
    b = build_random_model(copy.deepcopy(TINY)).state_dict()
    assert _same_state(a, b)


def test_different_seed_gives_different_weights() -> None:
    other = {**TINY, "seed": 1}
    a, b = build_random_model(TINY).state_dict(), build_random_model(other).state_dict()
    assert not _same_state(a, b)


def test_global_rng_is_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_random_model(TINY)
    assert torch.equal(torch.rand(3), expected)


def test_saved_files_are_bit_identical(tmp_path: Path) -> None:
    a = ensure_random_model(_cfg(TINY), tmp_path / "a")
    b = ensure_random_model(_cfg(TINY), tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert _same_state(load_file(a / "model.safetensors"), build_random_model(TINY).state_dict())


def test_folder_name_and_contents(tmp_path: Path) -> None:
    cfg = read_model_cfg("tiny-gpt2")
    folder = ensure_random_model(cfg, tmp_path)
    assert folder == tmp_path / f"tiny-gpt2-{stable_hash(cfg['random_init'])}"
    assert folder == random_model_dir(cfg, tmp_path)
    assert json.loads((folder / MARKER).read_text())["random_init"] == cfg["random_init"]
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == 50257
    assert config["eos_token_id"] == config["bos_token_id"] == config["pad_token_id"] == 50256
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok.pad_token_id == 50256
    assert gpt2_tokenizer().pad_token is None  # the shared cached tokenizer is not mutated
    # a second call reuses the folder
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_random_model(cfg, tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_changed_random_init_gets_a_new_folder(tmp_path: Path) -> None:
    assert random_model_dir(_cfg(TINY), tmp_path) != random_model_dir(
        _cfg({**TINY, "seed": 7}), tmp_path)


def test_llama_uses_grouped_query_attention() -> None:
    model = build_random_model(read_model_cfg("tiny-llama")["random_init"])
    attn = model.layers[0].self_attn
    assert model.config.num_key_value_heads == 2 < model.config.num_attention_heads == 4
    assert attn.q_proj.out_features == 64
    assert attn.k_proj.out_features == attn.v_proj.out_features == 32
    assert model.config.vocab_size == 50257


def test_failure_mid_save_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    # the model is already written when the tokenizer save fails
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_random_model(_cfg(TINY), tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the final folder nor a temp folder
    monkeypatch.undo()
    folder = ensure_random_model(_cfg(TINY), tmp_path)
    assert (folder / MARKER).is_file()


def test_stale_temp_folder_does_not_break_the_build(tmp_path: Path) -> None:
    target = random_model_dir(_cfg(TINY), tmp_path)
    stale = tmp_path / f".{target.name}.tmp-99999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{half written")
    old = 1_000_000_000
    os.utime(stale, (old, old))
    assert ensure_random_model(_cfg(TINY), tmp_path) == target
    assert (target / MARKER).is_file()
    assert not stale.exists()  # older than STALE_TEMP_SECONDS: cleaned up


def test_losing_a_race_uses_the_winners_folder(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    target = random_model_dir(_cfg(TINY), tmp_path)
    write = random_models._write_model

    def write_while_another_builder_finishes(random_init: dict, folder: Path,
                                             model: object = None) -> None:
        write(random_init, folder, model)
        other = tmp_path / "other-builder"
        write(random_init, other, model)
        os.replace(other, target)  # the other builder wins the rename

    monkeypatch.setattr(random_models, "_write_model", write_while_another_builder_finishes)
    assert ensure_random_model(_cfg(TINY), tmp_path) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_build_into_a_given_folder(tmp_path: Path) -> None:
    """The workflow's `random_model` rule builds into the folder Snakemake names (which it may
    have created, empty)."""
    folder = tmp_path / "tiny-x"
    folder.mkdir()
    model = build_random_model(TINY, folder)
    assert (folder / MARKER).is_file()
    assert _same_state(load_file(folder / "model.safetensors"), model.state_dict())


def test_incomplete_existing_folder_is_reported(tmp_path: Path) -> None:
    folder = random_model_dir(_cfg(TINY), tmp_path)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelUnavailableError, match="not a complete random model"):
        ensure_random_model(_cfg(TINY), tmp_path)


@pytest.mark.parametrize("change, key", [
    ({"architecture": "t5"}, "model.random_init.architecture"),
    ({"tokenizer": "bert"}, "model.random_init.tokenizer"),
    ({"seed": "zero"}, "model.random_init.seed"),
    ({"config": {"n_layers": 2}}, "model.random_init.config"),
])
def test_bad_random_init_is_a_config_error(change: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_random_model({**TINY, **change})
    assert info.value.key == key
