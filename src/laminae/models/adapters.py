"""Where the captured sites live inside each architecture family (the site table of
docs/ARCHITECTURE.md, as attribute paths).

Paths are relative to the *base* model (`AutoModel`: `GPT2Model`, `BertModel`, `LlamaModel`),
then to one block of its block list. A model with a head (`GPT2LMHeadModel`) works too: the
table is applied to its `base_model`.

    >>> from transformers import GPT2Config, GPT2Model
    >>> model = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100))
    >>> adapter = get_adapter("auto", model.config)
    >>> adapter.family, len(adapter.blocks(model))
    ('gpt2', 2)
    >>> adapter.module(adapter.blocks(model)[0], "q")      # fused: q, k, v share one module
    Conv1D(nf=96, nx=32)
    >>> adapter.site_widths(model.config)["k"]
    32
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from laminae.errors import ConfigError
from laminae.sites import SITES

if TYPE_CHECKING:  # torch only for annotations: the preflight reads MODEL_TYPE_FAMILY without it
    from torch import nn

FAMILIES = ("gpt2", "bert", "llama")


#: `config.model_type` -> family, for `family: auto`. Only types whose module layout and
#: residual structure match the family's row of the site table (checked in tests with tiny
#: random configs); e.g. olmo2 (post-sublayer norms) and phi3 (fused qkv_proj) do not.
MODEL_TYPE_FAMILY = {
    "gpt2": "gpt2",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",  # q/k captured at q_proj/k_proj, i.e. before its per-head q_norm/k_norm
    "gemma": "llama",
}


@dataclass(frozen=True)
class ModelDims:
    """Shape facts read from a Hugging Face config."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int  # == n_heads except with grouped-query attention
    head_dim: int
    max_positions: int | None  # longest input the position scheme allows (None: unknown)


@dataclass(frozen=True)
class Adapter:
    """One family's row of the site table.

    `blocks_path` is an attribute path on the base model; the other paths are inside a block.
    With `fused_qkv`, `q`, `k` and `v` name the same module, whose output is split on the last
    dimension in the widths given by `site_widths` (GPT-2's `c_attn`: d_model each).
    """

    family: str
    blocks_path: str
    q: str
    k: str
    v: str
    attn_out: str
    mlp_out: str
    fused_qkv: bool = False
    pre_norm: bool = True  # resid_post == resid_pre + attn_out + mlp_out holds

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The block list of `model` (a base model or a model with a head)."""
        base = getattr(model, "base_model", model)
        return base.get_submodule(self.blocks_path)

    def module_path(self, site: str) -> str | None:
        """Path inside a block of the module whose output is `site`; None for the residual
        sites, which are the block's own input / output."""
        if site in ("resid_pre", "resid_post"):
            return None
        if site not in SITES:
            raise ValueError(f"unknown site {site!r}; expected one of {', '.join(SITES)}")
        return getattr(self, site)

    def module(self, block: nn.Module, site: str) -> nn.Module:
        """The module of `block` that `site` hooks (the block itself for resid sites)."""
        path = self.module_path(site)
        return block if path is None else block.get_submodule(path)

    def site_widths(self, config: Any) -> dict[str, int]:
        """Width of each site's vectors. With GQA, k and v are narrower than q."""
        dims = model_dims(config, self.family)
        widths = dict.fromkeys(SITES, dims.d_model)
        widths["q"] = dims.n_heads * dims.head_dim
        widths["k"] = widths["v"] = dims.n_kv_heads * dims.head_dim
        return widths


ADAPTERS: dict[str, Adapter] = {
    "gpt2": Adapter(
        family="gpt2",
        blocks_path="h",
        q="attn.c_attn",
        k="attn.c_attn",
        v="attn.c_attn",
        attn_out="attn.c_proj",
        mlp_out="mlp.c_proj",
        fused_qkv=True,
    ),
    "bert": Adapter(
        family="bert",
        blocks_path="encoder.layer",
        q="attention.self.query",
        k="attention.self.key",
        v="attention.self.value",
        attn_out="attention.output.dense",  # before dropout + LayerNorm(x + residual)
        mlp_out="output.dense",
        pre_norm=False,
    ),
    "llama": Adapter(
        family="llama",
        blocks_path="layers",
        q="self_attn.q_proj",  # before RoPE
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        attn_out="self_attn.o_proj",
        mlp_out="mlp.down_proj",
    ),
}


def resolve_family(family: str | None, config: Any) -> str:
    """The adapter family for a configured `model.family` and a loaded HF config.

    `auto` (or None) maps `config.model_type` through `MODEL_TYPE_FAMILY`; an explicit family
    must agree with it when the model type is known.

        >>> from transformers import MistralConfig
        >>> resolve_family("auto", MistralConfig())
        'llama'
    """
    model_type = getattr(config, "model_type", None)
    detected = MODEL_TYPE_FAMILY.get(model_type)
    if family in (None, "auto"):
        if detected is None:
            supported = ", ".join(sorted(MODEL_TYPE_FAMILY))
            raise ConfigError(
                "model.family",
                f"a model whose config.model_type is one of {supported} "
                "(no adapter is known for this one)",
                f"auto with model_type {model_type!r}",
            )
        return detected
    if family not in FAMILIES:
        raise ConfigError("model.family", f"one of {', '.join(FAMILIES)} or auto", family)
    if detected is not None and detected != family:
        raise ConfigError(
            "model.family",
            f"{detected!r} or auto (the loaded model's model_type is {model_type!r})",
            family,
        )
    return family


def get_adapter(family: str | None, config: Any) -> Adapter:
    """The adapter for `family` (`auto` reads `config.model_type`)."""
    return ADAPTERS[resolve_family(family, config)]


def model_dims(config: Any, family: str) -> ModelDims:
    """Layers, width, heads and context length from a HF config of `family`.

        >>> from transformers import LlamaConfig
        >>> cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
        ...                   num_key_value_heads=2, max_position_embeddings=128)
        >>> model_dims(cfg, "llama")
        ModelDims(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, max_positions=128)
    """
    if family == "gpt2":
        n_layers, d_model, n_heads = config.n_layer, config.n_embd, config.n_head
        n_kv_heads, max_positions = n_heads, config.n_positions
        head_dim = d_model // n_heads
    elif family == "bert":
        n_layers, d_model = config.num_hidden_layers, config.hidden_size
        n_heads = n_kv_heads = config.num_attention_heads
        head_dim = d_model // n_heads
        max_positions = config.max_position_embeddings
    elif family == "llama":
        n_layers, d_model = config.num_hidden_layers, config.hidden_size
        n_heads = config.num_attention_heads
        n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
        head_dim = getattr(config, "head_dim", None) or d_model // n_heads
        max_positions = getattr(config, "max_position_embeddings", None)
    else:
        raise ConfigError("model.family", f"one of {', '.join(FAMILIES)} or auto", family)
    return ModelDims(
        n_layers=int(n_layers),
        d_model=int(d_model),
        n_heads=int(n_heads),
        n_kv_heads=int(n_kv_heads),
        head_dim=int(head_dim),
        max_positions=None if max_positions is None else int(max_positions),
    )
