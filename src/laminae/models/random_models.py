"""Tiny randomly initialised GPT-2 / Llama models, built deterministically and saved on first use.

A `random_init` block of a model config (conf/model/tiny-gpt2.yaml) says how to build one:

    random_init:
      seed: 0
      tokenizer: gpt2            # the only tokenizer offered: GPT-2's, rebuilt offline
      architecture: gpt2         # gpt2 | llama
      config: {n_layer: 4, n_embd: 64, n_head: 4, n_positions: 1024}   # HF config kwargs

The model (a base model: `GPT2Model` / `LlamaModel`, safetensors) and the tokenizer are saved
to `<models_dir>/<name>-<stable_hash(random_init)>`; the same block always gives bit-identical
weights, and a changed block gets a new folder.

    >>> folder = ensure_random_model(cfg["model"], "models")  # doctest: +SKIP
    >>> AutoModel.from_pretrained(folder)                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel, PreTrainedModel

from laminae.config.stages import stable_hash
from laminae.errors import ConfigError, ModelUnavailableError
from laminae.models.gpt2_tokenizer import END_OF_TEXT, gpt2_tokenizer
from laminae.models.vml import settle_vml_dispatch

#: Written last into a built folder; its presence marks the folder as complete.
MARKER = "laminae_random_init.json"
ARCHITECTURES = ("gpt2", "llama")
TOKENIZERS = ("gpt2",)
#: Temp folders of crashed builders older than this are removed by the next builder.
STALE_TEMP_SECONDS = 3600.0


def random_model_dir(model_cfg: dict[str, Any], models_dir: str | os.PathLike) -> Path:
    """`<models_dir>/<name>-<hash of random_init>`: where the model of `model_cfg` lives."""
    name = model_cfg.get("name") or model_cfg["random_init"].get("architecture", "random")
    return Path(models_dir) / f"{name}-{stable_hash(model_cfg['random_init'])}"


def build_random_model(random_init: dict[str, Any],
                       folder: str | os.PathLike | None = None) -> PreTrainedModel:
    """A freshly initialised base model (float32, CPU, eval mode) from a `random_init` block;
    with `folder`, also saved there atomically (see `save_random_model`).

    The global torch RNG is left as it was: the seed only drives this model's initialisation.

        >>> model = build_random_model({"seed": 0, "tokenizer": "gpt2", "architecture": "gpt2",
        ...                             "config": {"n_layer": 2, "n_embd": 32, "n_head": 4}})
        >>> model.wte.weight.shape          # (vocab, d_model)
        torch.Size([50257, 32])
    """
    settle_vml_dispatch()   # initialisers use VML ops (trunc_normal_: erfinv) on several threads
    seed = random_init.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError("model.random_init.seed", "an integer", seed)
    tokenizer = random_init.get("tokenizer", "gpt2")
    if tokenizer not in TOKENIZERS:
        raise ConfigError("model.random_init.tokenizer", " or ".join(TOKENIZERS), tokenizer)
    architecture = random_init.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ConfigError("model.random_init.architecture", " or ".join(ARCHITECTURES),
                          architecture)
    kwargs = dict(random_init.get("config") or {})

    eot = len(gpt2_tokenizer()) - 1  # <|endoftext|> = 50256 doubles as bos, eos and pad
    special = {"vocab_size": len(gpt2_tokenizer()), "bos_token_id": eot, "eos_token_id": eot,
               "pad_token_id": eot}
    config_cls, model_cls = (GPT2Config, GPT2Model) if architecture == "gpt2" else (
        LlamaConfig, LlamaModel)
    # HF configs keep unknown kwargs as attributes, so a typo (n_layers) would silently give
    # the default size: only accept the config's own keys and their aliases.
    known = set(config_cls().to_dict()) | set(config_cls.attribute_map)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError("model.random_init.config", f"{architecture} config keys (unknown: "
                          f"{', '.join(unknown)})", kwargs)
    try:
        config = config_cls(**{**special, **kwargs})
    except (TypeError, ValueError) as err:
        raise ConfigError("model.random_init.config", f"valid {architecture} config kwargs ({err})",
                          kwargs) from None

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    if folder is not None:
        save_random_model(random_init, folder, model=model)
    return model


def ensure_random_model(model_cfg: dict[str, Any], models_dir: str | os.PathLike) -> Path:
    """The folder of `model_cfg`'s random model (`random_model_dir`), built on first use."""
    return save_random_model(model_cfg["random_init"], random_model_dir(model_cfg, models_dir))


def save_random_model(random_init: dict[str, Any], folder: str | os.PathLike,
                      model: PreTrainedModel | None = None) -> Path:
    """Write the random model of `random_init` (or `model`, built from it) and the GPT-2
    tokenizer to `folder`, unless a complete one is there already; returns `folder`.

    Atomic: everything is written to a unique temp folder beside `folder`, then renamed into
    place with `os.replace`, so readers never see a half-written folder. When two builders race,
    the loser's rename fails (the target is a non-empty folder) and it uses the winner's folder,
    which holds the same bytes.
    """
    target = Path(folder)
    if (target / MARKER).is_file():
        return target
    if target.exists() and any(target.iterdir()):
        raise ModelUnavailableError(
            f"folder '{target}' exists but is not a complete random model (no {MARKER}); "
            "delete it and run again"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _write_model(random_init, temp, model)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # an empty folder (e.g. made by a workflow engine) is replaceable
        try:
            os.replace(temp, target)
        except OSError:
            if not (target / MARKER).is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


def _write_model(random_init: dict[str, Any], folder: Path,
                 model: PreTrainedModel | None = None) -> None:
    """Model (safetensors), tokenizer, then the marker, into `folder`."""
    if model is None:
        model = build_random_model(random_init)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer = gpt2_tokenizer()
    # The cached tokenizer is shared: give the saved copy a pad token without mutating it.
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    tokenizer = type(tokenizer)(tokenizer_object=backend,
                                bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                unk_token=END_OF_TEXT, pad_token=END_OF_TEXT,
                                model_max_length=tokenizer.model_max_length)
    tokenizer.save_pretrained(folder)
    marker = {"random_init": random_init, "hash": stable_hash(random_init),
              "torch_version": torch.__version__}
    (folder / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def _remove_stale_temps(target: Path) -> None:
    """Delete temp folders of builders of `target` that crashed long ago."""
    now = time.time()
    for temp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(temp, ignore_errors=True)
        except FileNotFoundError:
            pass
