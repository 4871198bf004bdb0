"""The model's own next-token readout, applied to a residual-stream row of any layer: what the
model does after its last block (final norm, OPT-350m's projection; the unembedding, tied to the
input embedding or not, with its bias where a family has one; Gemma 2's final logit
softcapping), read from the checkpoint without loading the model.

    >>> readout = Readout.open(model_cfg, models_dir="models", project_root=".", device="cpu")
    >>> readout.vocab_size, readout.d_model
    (50257, 768)
    >>> logits = readout.logits(resid)             # (rows, d_model) -> (rows, vocab), float32
    >>> readout.decode(logits.argmax(-1))          # the top token's text of each row
    [' the', ',', ...]
    >>> for start, block in readout.iter_logits(store_resid, rows=512):   # many rows: in chunks
    ...     top[start : start + len(block)] = block.topk(5).indices.cpu()

How it works: the `AutoModelForCausalLM` of the checkpoint's config is built on the meta device
(no memory, no weights), its final modules (`Adapter.final_modules`, paths on the base model)
and output embedding (`get_output_embeddings()`) are materialised alone (`to_empty`) and filled
from the checkpoint's tensors of those names only: safetensors read with `safe_open` (a sharded
checkpoint through its index; a hub model not in the cache downloads the index and the one shard
it needs), `pytorch_model.bin` memory-mapped, a GGUF file through its dequantized copy
(`laminae.models.gguf.ensure_dequantized`). A checkpoint whose keys lack the base-model prefix
(GPT-2's `wte.weight`, OPT's `decoder...`) is read too. When the model ties its unembedding to
its input embedding (the skeleton's two modules share one weight), the embedding's tensor is
read, as `from_pretrained` would. The modules are transformers' own, so each family's norm is
exact (Gemma's (1 + w) RMSNorm, OLMo 2's, LayerNorm with its bias). `keys_read` lists what was
read.

Direct logit attribution (`direct_logits`): the final norm frozen at the final residual's
statistics makes the readout linear, so a residual-stream component's share of a token's logit
is defined: LayerNorm: gamma * (part - mean(part)) / sqrt(var(final) + eps) (no beta); RMSNorm:
gain * part / sqrt(mean(final^2) + eps) (gain = w, or 1 + w for Gemma); then a linear final
module's weight (no bias) and the token's unembedding row (no bias); before any softcap.
`bias_logits` holds the rest (beta, linear and unembedding biases). For a pre-norm model
(`Adapter.residual_sum_holds`), the last block's output is the embedding plus every sublayer's
output, so

    sum(direct_logits(p, final, t) for p in [embedding, attn_out_0, mlp_out_0, ...])
        + bias_logits(final, t) == the model's logit of t (before any softcap)

(tests/test_readout.py checks it for every family). For post-LayerNorm models (OPT-350m) the
block outputs are normalised inside the blocks and the identity does not hold.

An encoder (BERT family) has no next-token readout: `Readout.open` raises a one-line
ConfigError; `has_readout(family or config)` answers before any job (no torch needed). Import
of this module needs no torch either (the preflight may use `has_readout`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laminae.errors import ConfigError, ModelUnavailableError
from laminae.models.vml import settle_vml_dispatch

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

#: families whose models are encoders: no causal LM head, no next-token readout
ENCODER_FAMILIES = ("bert",)
#: bytes of float32 logits per chunk that `iter_logits` aims at when not told the rows
CHUNK_BYTES = 256 * 2**20
#: relative agreement a norm module must show with the RMSNorm formula to be attributed as one
NORM_RTOL = 1e-4

LAYER_NORM, RMS_NORM, LINEAR, OTHER = "layer_norm", "rms_norm", "linear", "other"


def has_readout(model: Any) -> bool:
    """Whether a model has a next-token readout: False for encoders. `model`: a family name
    (`gpt2`, `bert`, ...), a `config.model_type` (`roberta`), a HF config, or a config dict
    with `model_type`. Unknown names count as having one (the adapter check reports them).

        >>> has_readout("gpt2"), has_readout("bert"), has_readout("xlm-roberta")
        (True, False, False)
    """
    from laminae.models.adapters import MODEL_TYPE_FAMILY  # torch-free

    name = model if isinstance(model, str) else (
        model.get("model_type") if isinstance(model, Mapping) else getattr(model, "model_type", None))
    family = MODEL_TYPE_FAMILY.get(name, name)
    return family not in ENCODER_FAMILIES


@dataclass(frozen=True)
class FinalStep:
    """One module the model applies to the last block's output, and how DLA treats it."""

    path: str          # on the base model, as in Adapter.final_modules
    module: "nn.Module"
    kind: str          # LAYER_NORM | RMS_NORM | LINEAR | OTHER
    gain: "torch.Tensor | None" = None   # RMS_NORM: the effective per-feature gain (Gemma's 1 + w)
    eps: float = 0.0


@dataclass(frozen=True)
class ModelSource:
    """Where a run's model is: what `Readout.open` needs, recorded by the stage that builds a
    plug-in job (`laminae.stages.records.model_source`: the extraction's model config and
    models_dir), so that `AnalysisJob.readout()` / `ReducerJob.readout()` can build the readout.
    Readouts are built on first use and kept, one per device.

        >>> source = ModelSource({"name": "tiny-gpt2", ...}, models_dir="models", project_root=Path("."))
        >>> source.readout().vocab_size                               # doctest: +SKIP
        50257
    """

    config: Mapping[str, Any]        # the model config dict, as `load_model` takes it
    models_dir: str = "models"
    project_root: Path = Path(".")
    device: str = "cpu"              # the default device of its readouts
    readouts: dict[str, "Readout"] = field(default_factory=dict, repr=False, compare=False)

    def readout(self, device: str | None = None) -> "Readout":
        """The readout on `device` (None: `self.device`), opened on first use."""
        device = device or self.device
        if device not in self.readouts:
            self.readouts[device] = Readout.open(self.config, models_dir=self.models_dir,
                                                 project_root=self.project_root, device=device)
        return self.readouts[device]


class Readout:
    """The final modules and unembedding of one model, float32, on one device (module
    docstring). Build it with `Readout.open`."""

    def __init__(self, steps: Sequence[FinalStep], unembed: "nn.Module", softcap: float | None, tokenizer: Any,
                 name: str, family: str, d_model: int, tied: bool, keys_read: Sequence[str]):
        settle_vml_dispatch()       # before any readout runs on several threads
        self.steps = tuple(steps)
        self.unembed = unembed      # (vocab, d_model_out) weight, optional (vocab,) bias
        self.softcap = softcap
        self.tokenizer = tokenizer
        self.name = name
        self.family = family
        self.d_model = d_model
        self.tied = tied
        self.keys_read = tuple(keys_read)

    # ----------------------------------------------------------------------- building
    @classmethod
    def open(cls, model_cfg: Mapping[str, Any], models_dir: str | os.PathLike = "models",
             project_root: str | os.PathLike = ".", device: str = "cpu") -> "Readout":
        """The readout of `model_cfg`'s model (the model config dict `load_model` takes), its
        tensors on `device` (`cpu`, `cuda`, `auto`). Reads config and tokenizer, then only the
        final modules' and the unembedding's tensors. ConfigError (one line) for an encoder or
        a checkpoint without an LM head; the errors of `open_model` for a model not found."""
        from laminae.models.loading import open_model, resolve_device

        model_cfg = dict(model_cfg)
        name = str(model_cfg.get("name") or model_cfg.get("pretrained") or "model")
        torch_device = resolve_device(device)
        files = open_model(model_cfg, models_dir, project_root)
        _refuse_encoder(name, files.adapter.family)
        location, config, revision = files.location, files.config, files.revision
        if files.gguf is not None:  # read from its dequantized copy, written now unless it exists
            from transformers import AutoConfig

            from laminae.models.gguf import ensure_dequantized

            location = str(ensure_dequantized(files.gguf, files.gguf_tokenizer))
            config, revision = AutoConfig.from_pretrained(location), None
        reader = CheckpointReader(location, revision)
        return cls.from_checkpoint(config, reader, files.adapter.final_modules, tokenizer=files.tokenizer,
                                   name=name, family=files.adapter.family, device=torch_device)

    @classmethod
    def from_checkpoint(cls, config: Any, reader: "CheckpointReader", final_modules: Sequence[str],
                        tokenizer: Any = None, name: str = "model", family: str = "",
                        device: "str | torch.device" = "cpu") -> "Readout":
        """The readout of a model with HF `config` whose tensors `reader` holds; `final_modules`
        as `Adapter.final_modules`. `Readout.open` locates the files and calls this."""
        import torch
        from transformers import AutoModelForCausalLM

        _refuse_encoder(name, family or getattr(config, "model_type", ""))
        try:
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        except ValueError:  # no causal LM class for this config
            raise ConfigError("model.pretrained", f"a causal language model ({name}: {type(config).__name__} has no "
                                                  "causal LM head, so no next-token readout)", has_value=False) from None
        unembed = skeleton.get_output_embeddings()
        if unembed is None:
            raise ConfigError("model.pretrained", f"a causal language model ({name}: no output embedding, so no "
                                                  "next-token readout)", has_value=False)
        inputs = skeleton.get_input_embeddings()
        tied = inputs is not None and unembed.weight is inputs.weight
        names = _parameter_names(skeleton)
        base = skeleton.base_model
        modules: list[tuple[str, nn.Module]] = []
        for path in final_modules:
            parent, _, attribute = path.rpartition(".")
            module = getattr(base.get_submodule(parent) if parent else base, attribute, None)
            if module is not None:  # None: this checkpoint has no such module (OPT's project_out)
                modules.append((path, module))
        keys = checkpoint_names(skeleton, reader.keys())
        for module in [*(module for _, module in modules), unembed]:
            _materialize(module, names, reader, keys, torch.device(device), name,
                         prefer_input=tied and module is unembed)
        steps = [_final_step(path, module) for path, module in modules]
        softcap = getattr(config, "final_logit_softcapping", None)
        d_model = int(getattr(config, "hidden_size", None) or unembed.weight.shape[1])
        return cls(steps, unembed, None if softcap is None else float(softcap), tokenizer, name, family, d_model,
                   tied, reader.keys_read)

    # ----------------------------------------------------------------------- shape
    @property
    def vocab_size(self) -> int:
        """Width of the logits: the unembedding's rows (may exceed the tokenizer's vocabulary,
        e.g. Pythia's padded 50304)."""
        return int(self.unembed.weight.shape[0])

    @property
    def device(self) -> "torch.device":
        return self.unembed.weight.device

    # ----------------------------------------------------------------------- readout
    def normalized(self, resid: "torch.Tensor | np.ndarray") -> "torch.Tensor":
        """(rows, d_model) -> (rows, d_model_out), float32: the final modules' output, i.e. the
        model's last hidden state had `resid` been its last block's output."""
        import torch

        hidden = self._tensor(resid)
        with torch.no_grad():
            for step in self.steps:
                hidden = step.module(hidden)
        return hidden

    def logits(self, resid: "torch.Tensor | np.ndarray") -> "torch.Tensor":
        """(rows, d_model) -> (rows, vocab) float32 logits on this readout's device: final
        modules, unembedding, softcap. The result is rows x vocab x 4 bytes: see `iter_logits`."""
        import torch

        with torch.no_grad():
            logits = self.unembed(self.normalized(resid))
            if self.softcap is not None:
                logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def iter_logits(self, resid: "torch.Tensor | np.ndarray", rows: int | None = None
                    ) -> Iterator[tuple[int, "torch.Tensor"]]:
        """`(start, logits of rows start : start + n)` over `resid` (n_rows, d_model) in chunks
        of `rows` (default: about CHUNK_BYTES of logits), so that memory stays flat:

            >>> top = torch.empty(len(resid), 5, dtype=torch.long)
            >>> for start, block in readout.iter_logits(resid):
            ...     top[start : start + len(block)] = block.topk(5, dim=-1).indices.cpu()
        """
        rows = rows or max(1, CHUNK_BYTES // (4 * self.vocab_size))
        for start in range(0, len(resid), rows):
            yield start, self.logits(resid[start:start + rows])

    def direct_logits(self, part: "torch.Tensor | np.ndarray", final_resid: "torch.Tensor | np.ndarray",
                      token_ids: "torch.Tensor | np.ndarray | Sequence[int]") -> "torch.Tensor":
        """(rows,) float32: the direct contribution of `part` (rows, d_model), a term of the
        residual stream (the embedding, one layer's attn_out or mlp_out), to the logit of
        `token_ids` (rows,), with every final norm frozen at the statistics of `final_resid`
        (rows, d_model), the last block's output (module docstring); no biases, before any
        softcap. Plus `bias_logits` the terms sum to the logit for pre-norm models."""
        import torch

        final = self._tensor(final_resid)
        hidden = self.frozen(self._tensor(part), final)
        rows = self._rows(token_ids)
        with torch.no_grad():
            return (hidden * self.unembed.weight[rows]).sum(-1)

    def bias_logits(self, final_resid: "torch.Tensor | np.ndarray",
                    token_ids: "torch.Tensor | np.ndarray | Sequence[int]") -> "torch.Tensor":
        """(rows,) float32: what the biases add to the logit of `token_ids` (rows,): the norms'
        beta and linear biases carried through the frozen final modules, and the unembedding's
        bias (zero for a model without any)."""
        import torch

        final = self._tensor(final_resid)
        offset = torch.zeros_like(final)
        with torch.no_grad():
            for step, inputs in zip(self.steps, self._step_inputs(final)):
                offset = self._frozen_step(step, offset, inputs) + _bias(step.module)
            rows = self._rows(token_ids)
            logits = (offset * self.unembed.weight[rows]).sum(-1)
            bias = getattr(self.unembed, "bias", None)
            return logits + bias[rows] if bias is not None else logits

    def frozen(self, part: "torch.Tensor", final: "torch.Tensor") -> "torch.Tensor":
        """(rows, d_model) -> (rows, d_model_out): `part` through the final modules made linear,
        each norm frozen at the statistics of what it sees of `final` (no biases)."""
        import torch

        with torch.no_grad():
            for step, inputs in zip(self.steps, self._step_inputs(final)):
                part = self._frozen_step(step, part, inputs)
        return part

    def decode(self, token_ids: "torch.Tensor | np.ndarray | Sequence[int]") -> list[str]:
        """The tokenizer's text of each id (one string per id, ids beyond the tokenizer's
        vocabulary give "")."""
        if self.tokenizer is None:
            raise ValueError(f"{self.name}: this readout was built without a tokenizer")
        ids = [int(i) for i in (token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids)]
        return list(self.tokenizer.batch_decode([[i] for i in ids]))

    # ----------------------------------------------------------------------- helpers
    def _tensor(self, values: "torch.Tensor | np.ndarray") -> "torch.Tensor":
        import torch

        tensor = torch.as_tensor(values)
        return tensor.to(device=self.device, dtype=torch.float32)

    def _rows(self, token_ids: Any) -> "torch.Tensor":
        import torch

        return torch.as_tensor(token_ids, dtype=torch.long).to(self.device).reshape(-1)

    def _step_inputs(self, final: "torch.Tensor") -> list["torch.Tensor"]:
        """What each final module receives when `final` is the last block's output."""
        import torch

        inputs = []
        with torch.no_grad():
            for step in self.steps:
                inputs.append(final)
                final = step.module(final)
        return inputs

    def _frozen_step(self, step: FinalStep, part: "torch.Tensor", seen: "torch.Tensor") -> "torch.Tensor":
        import torch

        if step.kind == LAYER_NORM:
            sigma = torch.sqrt(seen.var(-1, unbiased=False, keepdim=True) + step.eps)
            weight = step.module.weight
            centred = (part - part.mean(-1, keepdim=True)) / sigma
            return centred * weight if weight is not None else centred
        if step.kind == RMS_NORM:
            return part * step.gain / torch.sqrt(seen.pow(2).mean(-1, keepdim=True) + step.eps)
        if step.kind == LINEAR:
            return torch.nn.functional.linear(part, step.module.weight)
        raise NotImplementedError(f"{self.name}: direct logit attribution through the final module {step.path!r} "
                                  f"({type(step.module).__name__}) is not known")


def _refuse_encoder(name: str, family: str) -> None:
    if not has_readout(family):
        raise ConfigError("model.pretrained", f"a causal language model ({name}: an encoder has no next-token readout)",
                          has_value=False)


def _bias(module: "nn.Module") -> "torch.Tensor | int":
    """A final module's additive bias (LayerNorm's beta, a Linear's bias), else 0."""
    import torch

    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else 0


def _final_step(path: str, module: "nn.Module") -> FinalStep:
    """How `module` is made linear for DLA: LayerNorm and Linear by type; any other module with
    a 1-D weight and an eps is an RMSNorm when its output on a random probe is its gain (read off
    its output on a vector of ones, so Gemma's 1 + w comes out) times the probe / rms."""
    import torch
    from torch import nn

    if isinstance(module, nn.LayerNorm):
        return FinalStep(path, module, LAYER_NORM, eps=float(module.eps))
    if isinstance(module, nn.Linear):
        return FinalStep(path, module, LINEAR)
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if isinstance(weight, torch.Tensor) and weight.dim() == 1 and isinstance(eps, (int, float)):
        width = weight.shape[0]
        with torch.no_grad():
            gain = module(torch.ones(1, width, device=weight.device))[0] * math.sqrt(1.0 + eps)
            probe = torch.randn(4, width, generator=torch.Generator().manual_seed(0)).to(weight.device)
            expected = gain * probe / torch.sqrt(probe.pow(2).mean(-1, keepdim=True) + eps)
            actual = module(probe)
        if torch.allclose(actual, expected, rtol=NORM_RTOL, atol=NORM_RTOL * float(actual.abs().max())):
            return FinalStep(path, module, RMS_NORM, gain=gain, eps=float(eps))
    return FinalStep(path, module, OTHER)


def _parameter_names(model: "nn.Module") -> dict[int, list[str]]:
    """id(tensor) -> every name it has in `model` (a tied weight has several)."""
    names: dict[int, list[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(tensor), []).append(name)
    return names


def checkpoint_names(model: "nn.Module", keys: Sequence[str]) -> dict[str, str]:
    """model tensor name -> the checkpoint key `from_pretrained` would load it from: each key
    renamed as transformers renames it on loading (its conversion mapping, e.g. GPT-NeoX's
    `embed_out.` -> `lm_head.`; the base-model prefix added or stripped). Keys that a weight
    converter merges or splits (fused experts) are left out: they are no single tensor. Without
    transformers' renaming (another version), the keys as they are, with or without the prefix."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    meta = dict(model.state_dict())
    try:
        from transformers.core_model_loading import WeightRenaming, rename_source_key
        from transformers.conversion_mapping import get_model_conversion_mapping

        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    except (ImportError, TypeError, AttributeError):
        rename_source_key = None
    names: dict[str, str] = {}
    for key in keys:
        if rename_source_key is not None:
            renamed, converted = rename_source_key(key, renamings, converters, prefix or None, meta)
            if converted is None:
                names.setdefault(renamed, key)
        for variant in _key_variants([key], prefix):
            if variant in meta:
                names.setdefault(variant, key)
    return names


def _materialize(module: "nn.Module", names: Mapping[int, list[str]], reader: "CheckpointReader",
                 keys: Mapping[str, str], device: "torch.device", model_name: str, prefer_input: bool = False) -> None:
    """Give `module` (on the meta device) real float32 tensors on `device`, read from the
    checkpoint key (`keys`: see `checkpoint_names`) of any of the names its tensors have in the
    skeleton. `prefer_input`: a tied unembedding, read under the input embedding's name first,
    as from_pretrained ties it."""
    import torch

    wanted = [(local, names.get(id(tensor), [])) for local, tensor in
              [*module.named_parameters(recurse=True), *module.named_buffers(recurse=True)]]
    module.to_empty(device=device)
    with torch.no_grad():
        for local, full_names in wanted:
            candidates = list(full_names)
            if prefer_input:  # the names that are not this module's own first
                own = [n for n in full_names if n.endswith(f".{local}") or n == local]
                candidates = [n for n in full_names if n not in own] + own
            key = next((keys[name] for name in candidates if name in keys), None)
            if key is None:
                shown = ", ".join(candidates) or local
                raise ConfigError("model.pretrained", f"a causal language model with its LM head ({model_name}: the "
                                                      f"checkpoint has no tensor {shown}, so no next-token readout)",
                                  has_value=False)
            target = module.get_parameter(local) if local in dict(module.named_parameters()) else module.get_buffer(local)
            value = reader.get(key)
            if tuple(value.shape) != tuple(target.shape):
                raise ModelUnavailableError(f"config key 'model.pretrained': {model_name}: checkpoint tensor {key} "
                                            f"has shape {tuple(value.shape)}, the config's model {tuple(target.shape)}")
            target.copy_(value.to(torch.float32))


def _key_variants(names: Sequence[str], prefix: str) -> list[str]:
    """Each name as the causal LM has it, then without its base-model prefix (a checkpoint of
    the base model: GPT-2's `wte.weight`), then with it (a base-model name under a head)."""
    variants: list[str] = []
    for name in names:
        stripped = name[len(prefix) + 1:] if prefix and name.startswith(f"{prefix}.") else None
        for variant in (name, stripped, f"{prefix}.{name}" if prefix else None):
            if variant and variant not in variants:
                variants.append(variant)
    return variants


class CheckpointReader:
    """Single tensors of a checkpoint by key, reading nothing else: safetensors (one file or
    sharded through `model.safetensors.index.json`), else `pytorch_model.bin` (memory-mapped).
    `location`: a local folder, or a hub id (its files fetched one by one, only those needed).
    `keys_read` records every tensor read.

        >>> reader = CheckpointReader("/data/pythia-70m")             # doctest: +SKIP
        >>> reader.find(["gpt_neox.final_layer_norm.weight", "final_layer_norm.weight"])
        'gpt_neox.final_layer_norm.weight'
        >>> reader.get("embed_out.weight").shape
        torch.Size([50304, 512])
    """

    def __init__(self, location: str | os.PathLike, revision: str | None = None):
        self.location = str(location)
        self.revision = revision
        self.local = Path(self.location).is_dir()
        self.keys_read: list[str] = []
        self._where: dict[str, str] = {}  # key -> file name
        self._bin: dict[str, Any] = {}     # file name -> loaded (mmap) state dict
        self._index()

    def _path(self, filename: str) -> Path | None:
        if self.local:
            path = Path(self.location) / filename
            return path if path.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(hf_hub_download(self.location, filename, revision=self.revision))
        except EntryNotFoundError:
            return None

    def _index(self) -> None:
        for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                                   ("pytorch_model.bin.index.json", "pytorch_model.bin")):
            index = self._path(index_name)
            if index is not None:
                self._where = dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
                return
            path = self._path(single)
            if path is not None:
                self._where = dict.fromkeys(self._file_keys(single, path), single)
                return
        if self.local:  # a folder with another safetensors name
            for path in sorted(Path(self.location).glob("*.safetensors")):
                self._where.update(dict.fromkeys(self._file_keys(path.name, path), path.name))
        if not self._where:
            raise ModelUnavailableError(f"config key 'model.pretrained': {self.location} holds no safetensors or "
                                        "pytorch_model.bin weights")

    def _file_keys(self, filename: str, path: Path) -> list[str]:
        if filename.endswith(".bin"):
            return list(self._load_bin(filename, path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())

    def _load_bin(self, filename: str, path: Path) -> Any:
        if filename not in self._bin:
            import torch

            self._bin[filename] = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        return self._bin[filename]

    def keys(self) -> list[str]:
        return list(self._where)

    def find(self, candidates: Sequence[str]) -> str | None:
        """The first of `candidates` the checkpoint holds, or None."""
        return next((key for key in candidates if key in self._where), None)

    def get(self, key: str) -> "torch.Tensor":
        """The tensor `key`, read alone."""
        filename = self._where[key]
        path = self._path(filename)
        if path is None:
            raise ModelUnavailableError(f"config key 'model.pretrained': {self.location}: {filename} is missing")
        self.keys_read.append(key)
        if filename.endswith(".bin"):
            return self._load_bin(filename, path)[key]
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(key)
