"""Where the captured sites live inside each architecture family (the site table of
docs/ARCHITECTURE.md, as attribute paths), and how to read the family's shape from its config.

A family is ONE `Adapter` entry of `ADAPTERS`: its module paths, the `config.model_type` values
that `family: auto` maps to it, and where its HF config keeps layers, width and heads. Every
other list is derived from the entries: `FAMILIES` (what `model.family` accepts, in the
config schema too), `MODEL_TYPE_FAMILY` (what `auto` accepts), `model_dims`. Adding a family is
adding an entry (docs/ADDING_A_MODEL_FAMILY.md).

Paths are relative to the *base* model (`AutoModel`: `GPT2Model`, `BertModel`, `LlamaModel`,
`GPTNeoXModel`, ...), then to one block of its block list. A model with a head
(`GPT2LMHeadModel`) works too: the table is applied to its `base_model`.

Every family's sites mean the same thing:

- `q`, `k`, `v`: the projections' outputs before rotary embeddings and before any q/k norm,
  flattened head-major (head h is columns `h*head_dim : (h+1)*head_dim`); K and V are narrower
  under grouped- or multi-query attention. A fused projection is split by its real layout
  (`split_qkv`): `concat` is [all q | all k | all v] (GPT-2, Phi-3, Falcon-7B's multi-query),
  `grouped` is, per key/value group, that group's queries then its key then its value (GPT-NeoX
  with one head per group; Falcon's `new_decoder_architecture`).
- `attn_out`, `mlp_out`: exactly what each sublayer adds to the residual stream; after the
  sublayer's output norm where a family has one (Gemma 2/3, OLMo 2).
- `resid_pre`, `resid_post`: the block's input and output.
- `mlp_post`: the MLP's hidden activations after its nonlinearity, `d_mlp` wide: the input of
  its down projection (a forward pre-hook), so in gated MLPs (Llama, Phi-3, Gemma, OLMo 2)
  `act(gate) * up`.
- `pattern`: the attention probabilities after masking and softmax, per query token the row
  over keys of every head, (n_heads, n_keys) flattened head-major (GQA: one row per QUERY
  head); n_keys is the longest input of the extraction (`site_widths(config, n_keys)`), key j
  is position j of the token's own sequence, keys past its sequence are 0. Hooked on the
  attention module's output (`attention`), whose second element is the probabilities
  (batch, heads, query, key) when the model runs eager attention (the extraction then loads it
  so: `load_model(..., patterns=True)`); sliding windows show as zeros outside the window.

    >>> from transformers import GPT2Config, GPT2Model
    >>> model = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100))
    >>> adapter = get_adapter("auto", model.config)
    >>> adapter.family, len(adapter.blocks(model))
    ('gpt2', 2)
    >>> adapter.module(adapter.blocks(model)[0], "q")      # fused: q, k, v share one module
    Conv1D(nf=96, nx=32)
    >>> adapter.site_widths(model.config)["k"]
    32
    >>> MODEL_TYPE_FAMILY["qwen2"], ADAPTERS["llama"].model_types[:2]
    ('llama', ('llama', 'mistral'))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from laminae.errors import ConfigError
from laminae.sites import SITES

if TYPE_CHECKING:  # torch only for annotations: the preflight reads MODEL_TYPE_FAMILY without it
    import torch
    from torch import nn

QKV_LAYOUTS = ("concat", "grouped")
#: sites that are the INPUT of the module their path names (a forward pre-hook), not its output
INPUT_SITES = ("mlp_post",)


@dataclass(frozen=True)
class ModelDims:
    """Shape facts read from a Hugging Face config."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int  # == n_heads except with grouped- or multi-query attention
    head_dim: int
    max_positions: int | None  # longest input the position scheme allows (None: unknown)
    d_mlp: int  # the MLP's hidden width (mlp_post's)


@dataclass(frozen=True)
class ConfigKeys:
    """Where a family's HF config keeps its shape: attribute names (read with `getattr`, so a
    config's `attribute_map` aliases count). The defaults are the names most families answer.

    `n_layers`, `d_model` and `n_heads` must be there. The others may be absent or None:
    `n_kv_heads` then equals `n_heads` (a function of the config instead of a name, for
    families whose key/value head count depends on several keys, like Falcon's), `head_dim` is
    `d_model // n_heads`, `max_positions` is unknown and `d_mlp` (the MLP's hidden width:
    `intermediate_size`, GPT-2's and GPT-J's `n_inner`, OPT's `ffn_dim`, Falcon's
    `ffn_hidden_size`) is `4 * d_model`, what those families build when the key is None. None
    for a name: the family has no such key (GPT-2 has neither grouped-query attention nor a
    separate head width).

        >>> from transformers import GPT2Config
        >>> ConfigKeys(n_layers="n_layer", d_model="n_embd", n_heads="n_head", n_kv_heads=None,
        ...            head_dim=None, max_positions="n_positions", d_mlp="n_inner").read(GPT2Config(n_head=4))
        ModelDims(n_layers=12, d_model=768, n_heads=4, n_kv_heads=4, head_dim=192, max_positions=1024, d_mlp=3072)
    """

    n_layers: str = "num_hidden_layers"
    d_model: str = "hidden_size"
    n_heads: str = "num_attention_heads"
    n_kv_heads: str | Callable[[Any], int] | None = "num_key_value_heads"
    head_dim: str | None = "head_dim"
    max_positions: str | None = "max_position_embeddings"
    d_mlp: str | None = "intermediate_size"

    def read(self, config: Any) -> ModelDims:
        """The `ModelDims` of `config` (AttributeError when a required key is missing)."""
        n_layers, d_model = getattr(config, self.n_layers), getattr(config, self.d_model)
        n_heads = getattr(config, self.n_heads)
        if callable(self.n_kv_heads):
            n_kv_heads = self.n_kv_heads(config)
        else:
            n_kv_heads = _optional(config, self.n_kv_heads) or n_heads
        head_dim = _optional(config, self.head_dim) or d_model // n_heads
        max_positions = _optional(config, self.max_positions)
        d_mlp = _optional(config, self.d_mlp) or 4 * d_model
        return ModelDims(
            n_layers=int(n_layers),
            d_model=int(d_model),
            n_heads=int(n_heads),
            n_kv_heads=int(n_kv_heads),
            head_dim=int(head_dim),
            max_positions=None if max_positions is None else int(max_positions),
            d_mlp=int(d_mlp),
        )


def _optional(config: Any, name: str | None) -> Any:
    return None if name is None else getattr(config, name, None)


@dataclass(frozen=True)
class Adapter:
    """One family: its row of the site table, the model types `auto` maps to it, and where its
    config keeps its shape.

    `model_types` are the `config.model_type` values whose module layout and residual structure
    match this row (each checked in tests with tiny random models against TransformerLens or a
    manual computation); no two adapters may claim one. `blocks_path` is an attribute path on
    the base model; the other paths are inside a block: the module whose OUTPUT a site is, but
    for the sites of `INPUT_SITES` (`mlp_post`: the path of the MLP's down projection, whose
    INPUT is hooked), and `attention`, the attention module whose output is (attn_output,
    probabilities) under eager attention, which `pattern` hooks. `returns_pattern` says whether
    the family's attention can return its probabilities at all (the workflow refuses `pattern`
    otherwise). With `fused_qkv`, `q`, `k` and `v` name
    the same module, whose output `split_qkv` cuts into q, k and v by `qkv_layout` (a layout
    name, or a function of the HF config for families whose checkpoints differ, like Falcon).
    `pre_norm` (or a function of the config) says whether
    `resid_post == resid_pre + attn_out + mlp_out` holds. `flat_sites` are sites whose module
    sees the tokens flattened to (batch * seq, width) (OPT's MLP); the capture restores
    (batch, seq, width). `copy_sites` are sites whose module output the block later modifies in
    place (Falcon adds the attention output into the MLP's); the capture copies them first.
    `config_keys` says where the config keeps layers, width and heads (`dims`). `final_modules`
    are the paths on the base model of what it applies to the last block's output, in order (the
    final norm; OPT-350m's projection): the model's last hidden state (`final_hidden`).
    `next_token` is False for encoders (BERT): they have no next-token readout, so experiments
    that need one (`Experiment.needs`, "readout") do not apply to them.
    """

    family: str
    model_types: tuple[str, ...]
    blocks_path: str
    q: str
    k: str
    v: str
    attn_out: str
    mlp_out: str
    mlp_post: str
    attention: str
    returns_pattern: bool = True
    fused_qkv: bool = False
    qkv_layout: str | Callable[[Any], str] = "concat"
    pre_norm: bool | Callable[[Any], bool] = True
    flat_sites: tuple[str, ...] = ()
    copy_sites: tuple[str, ...] = ()
    config_keys: ConfigKeys = field(default_factory=ConfigKeys)
    final_modules: tuple[str, ...] = ("norm",)
    next_token: bool = True

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The block list of `model` (a base model or a model with a head)."""
        base = getattr(model, "base_model", model)
        return base.get_submodule(self.blocks_path)

    def final_hidden(self, model: nn.Module, resid: torch.Tensor) -> torch.Tensor:
        """The model's last hidden state from its last block's output `resid` (..., d_model):
        `final_modules` applied in order; a module a checkpoint lacks (None) is skipped."""
        base = getattr(model, "base_model", model)
        for path in self.final_modules:
            parent, _, name = path.rpartition(".")
            module = getattr(base.get_submodule(parent) if parent else base, name, None)
            if module is not None:
                resid = module(resid)
        return resid

    def module_path(self, site: str) -> str | None:
        """Path inside a block of the module whose output is `site` (whose input, for a site of
        `INPUT_SITES`: mlp_post is the down projection's input); None for the residual sites,
        which are the block's own input / output."""
        if site in ("resid_pre", "resid_post"):
            return None
        if site not in SITES:
            raise ValueError(f"unknown site {site!r}; expected one of {', '.join(SITES)}")
        return self.attention if site == "pattern" else getattr(self, site)

    def module(self, block: nn.Module, site: str) -> nn.Module:
        """The module of `block` that `site` hooks (the block itself for resid sites)."""
        path = self.module_path(site)
        return block if path is None else block.get_submodule(path)

    def dims(self, config: Any) -> ModelDims:
        """Layers, width, heads and context length of a model of this family with `config`."""
        return self.config_keys.read(config)

    def site_widths(self, config: Any, n_keys: int | None = None) -> dict[str, int]:
        """Width of each site's vectors. With GQA / MQA, k and v are narrower than q; mlp_post
        is `d_mlp` wide; pattern `n_heads * n_keys`, with `n_keys` the longest input of the
        extraction: without it the dict has no `pattern`, and asking for it raises a
        ValueError that says so.

            >>> from transformers import GPT2Config
            >>> widths = ADAPTERS["gpt2"].site_widths(GPT2Config(n_embd=32, n_head=4), n_keys=10)
            >>> widths["mlp_post"], widths["pattern"]
            (128, 40)
        """
        dims = self.dims(config)
        widths = SiteWidths.fromkeys([site for site in SITES if site != "pattern"], dims.d_model)
        widths["q"] = dims.n_heads * dims.head_dim
        widths["k"] = widths["v"] = dims.n_kv_heads * dims.head_dim
        widths["mlp_post"] = dims.d_mlp
        if n_keys is not None:
            if int(n_keys) < 1:
                raise ValueError(f"n_keys must be >= 1 (the longest input's tokens); got {n_keys}")
            widths["pattern"] = dims.n_heads * int(n_keys)
        return widths

    def layout(self, config: Any) -> str:
        """The fused q/k/v layout of a model with this `config` (see the module docstring)."""
        return self.qkv_layout(config) if callable(self.qkv_layout) else self.qkv_layout

    def residual_sum_holds(self, config: Any) -> bool:
        """True when `resid_post = resid_pre + attn_out + mlp_out` (pre-norm blocks, parallel
        or sequential); False for post-LayerNorm blocks (BERT, OPT-350m)."""
        return self.pre_norm(config) if callable(self.pre_norm) else self.pre_norm

    def split_qkv(self, fused: torch.Tensor, config: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., fused width) -> q (..., n_heads * head_dim), k and v (..., n_kv_heads * head_dim),
        head-major, by this family's layout. `concat` gives views; `grouped` copies.

            >>> import torch
            >>> from transformers import GPTNeoXConfig
            >>> cfg = GPTNeoXConfig(hidden_size=4, num_attention_heads=2)    # head_dim 2
            >>> q, k, v = ADAPTERS["gpt_neox"].split_qkv(torch.arange(12.), cfg)
            >>> q.tolist(), k.tolist(), v.tolist()     # per head [q, k, v]
            ([0.0, 1.0, 6.0, 7.0], [2.0, 3.0, 8.0, 9.0], [4.0, 5.0, 10.0, 11.0])
        """
        dims = self.dims(config)
        return split_fused_qkv(fused, self.layout(config), dims.n_heads, dims.n_kv_heads, dims.head_dim)


class SiteWidths(dict):
    """site -> width (`Adapter.site_widths`); asking for `pattern` when its width was not
    computed (no `n_keys`) is a ValueError saying why, not a bare KeyError."""

    def __missing__(self, site: str) -> int:
        if site == "pattern":
            raise ValueError("the width of site 'pattern' is n_heads * n_keys, n_keys the longest input of the "
                             "extraction: pass n_keys to Adapter.site_widths")
        raise KeyError(site)


def split_fused_qkv(fused: torch.Tensor, layout: str, n_heads: int, n_kv_heads: int,
                    head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused q/k/v projection output on its last dimension (see `Adapter.split_qkv`)."""
    q_width, kv_width = n_heads * head_dim, n_kv_heads * head_dim
    if fused.shape[-1] != q_width + 2 * kv_width:
        raise ValueError(f"fused q/k/v width {fused.shape[-1]} != {q_width} + 2 * {kv_width}")
    if layout == "concat":
        q, k, v = fused.split([q_width, kv_width, kv_width], dim=-1)
        return q, k, v
    if layout == "grouped":
        group = n_heads // n_kv_heads
        per_group = fused.unflatten(-1, (n_kv_heads, group + 2, head_dim))
        return (per_group[..., :group, :].flatten(-3), per_group[..., group, :].flatten(-2),
                per_group[..., group + 1, :].flatten(-2))
    raise ValueError(f"unknown q/k/v layout {layout!r}; expected one of {', '.join(QKV_LAYOUTS)}")


def index_adapters(adapters: Iterable[Adapter]) -> dict[str, Adapter]:
    """family -> adapter, in the given order; ValueError when two adapters share a family or
    claim the same `config.model_type` (`auto` could not choose), or a named q/k/v layout is
    unknown.

        >>> table = index_adapters([ADAPTERS["gpt2"], ADAPTERS["bert"]])
        >>> list(table)
        ['gpt2', 'bert']
    """
    table: dict[str, Adapter] = {}
    claimed: dict[str, str] = {}
    for adapter in adapters:
        if adapter.family in table:
            raise ValueError(f"two adapters of family {adapter.family!r}")
        for model_type in adapter.model_types:
            if model_type in claimed:
                raise ValueError(f"model_type {model_type!r} is claimed by both {claimed[model_type]!r} "
                                 f"and {adapter.family!r}")
            claimed[model_type] = adapter.family
        if not callable(adapter.qkv_layout) and adapter.qkv_layout not in QKV_LAYOUTS:
            raise ValueError(f"adapter {adapter.family!r}: unknown q/k/v layout {adapter.qkv_layout!r}; "
                             f"expected one of {', '.join(QKV_LAYOUTS)}")
        table[adapter.family] = adapter
    return table


def _falcon_layout(config: Any) -> str:
    """Falcon-40B/180B (`new_decoder_architecture`): per KV group [q_1 .. q_g, k, v]; Falcon-7B
    (`multi_query`): [all q | k | v]; the rest (falcon-rw): per head [q, k, v]."""
    if getattr(config, "new_decoder_architecture", False):
        return "grouped"
    return "concat" if getattr(config, "multi_query", False) else "grouped"


def _falcon_kv_heads(config: Any) -> int:
    """Falcon's key/value heads: `num_kv_heads` groups under `new_decoder_architecture`, one
    under `multi_query` (Falcon-7B), else one per query head (falcon-rw)."""
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def _post_norm_sublayers(family: str, model_types: tuple[str, ...]) -> Adapter:
    """Gemma 2/3 and OLMo 2: Llama-like projections, but each sublayer's output is normalised
    before it is added to the residual stream, so attn_out / mlp_out are those norms' outputs."""
    return Adapter(family=family, model_types=model_types, blocks_path="layers", q="self_attn.q_proj",
                   k="self_attn.k_proj", v="self_attn.v_proj", attn_out="post_attention_layernorm",
                   mlp_out="post_feedforward_layernorm", mlp_post="mlp.down_proj", attention="self_attn")


#: family -> adapter: the one table every other list is derived from. The order is the order
#: `model.family`'s choices are listed in (errors, the config schema).
ADAPTERS: dict[str, Adapter] = index_adapters([
    Adapter(
        family="gpt2",
        model_types=("gpt2",),
        blocks_path="h",
        q="attn.c_attn",
        k="attn.c_attn",
        v="attn.c_attn",
        attn_out="attn.c_proj",
        mlp_out="mlp.c_proj",
        mlp_post="mlp.c_proj",  # its input: gelu(c_fc(ln_2(x)))
        attention="attn",
        fused_qkv=True,
        config_keys=ConfigKeys(n_layers="n_layer", d_model="n_embd", n_heads="n_head", n_kv_heads=None,
                               head_dim=None, max_positions="n_positions", d_mlp="n_inner"),
        final_modules=("ln_f",),
    ),
    Adapter(
        family="bert",
        model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra"),
        blocks_path="encoder.layer",
        q="attention.self.query",
        k="attention.self.key",
        v="attention.self.value",
        attn_out="attention.output.dense",  # before dropout + LayerNorm(x + residual)
        mlp_out="output.dense",
        mlp_post="output.dense",  # its input: the intermediate layer's output, act(dense(x))
        attention="attention.self",
        pre_norm=False,
        final_modules=(),  # the last block's output is the last hidden state
        next_token=False,  # an encoder
    ),
    Adapter(
        family="llama",
        # qwen3: q/k captured at q_proj/k_proj, i.e. before its per-head q_norm/k_norm
        model_types=("llama", "mistral", "qwen2", "qwen3", "gemma"),
        blocks_path="layers",
        q="self_attn.q_proj",  # before RoPE
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        attn_out="self_attn.o_proj",
        mlp_out="mlp.down_proj",
        mlp_post="mlp.down_proj",  # its input: act(gate_proj(x)) * up_proj(x)
        attention="self_attn",
    ),
    Adapter(  # parallel residual (Pythia) or sequential, by use_parallel_residual
        family="gpt_neox",
        model_types=("gpt_neox",),
        blocks_path="layers",
        q="attention.query_key_value",
        k="attention.query_key_value",
        v="attention.query_key_value",
        attn_out="attention.dense",
        mlp_out="mlp.dense_4h_to_h",
        mlp_post="mlp.dense_4h_to_h",
        attention="attention",
        fused_qkv=True,
        qkv_layout="grouped",  # per head [q, k, v]
        final_modules=("final_layer_norm",),
    ),
    Adapter(
        family="opt",
        model_types=("opt",),
        blocks_path="decoder.layers",
        q="self_attn.q_proj",  # before OPT's query scaling
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        attn_out="self_attn.out_proj",
        mlp_out="fc2",
        mlp_post="fc2",
        attention="self_attn",
        pre_norm=lambda config: bool(config.do_layer_norm_before),  # False for OPT-350m
        flat_sites=("mlp_out", "mlp_post"),
        config_keys=ConfigKeys(d_mlp="ffn_dim"),
        final_modules=("decoder.final_layer_norm", "decoder.project_out"),  # None where a checkpoint has none
    ),
    Adapter(  # parallel: attention and MLP both read ln_1(resid_pre)
        family="gptj",
        model_types=("gptj",),
        blocks_path="h",
        q="attn.q_proj",
        k="attn.k_proj",
        v="attn.v_proj",
        attn_out="attn.out_proj",
        mlp_out="mlp.fc_out",
        mlp_post="mlp.fc_out",
        attention="attn",
        config_keys=ConfigKeys(d_mlp="n_inner"),  # n_inner None: 4 * n_embd
        final_modules=("ln_f",),
    ),
    Adapter(  # global and local (sliding-window) attention layers alternate
        family="gpt_neo",
        model_types=("gpt_neo",),
        blocks_path="h",
        q="attn.attention.q_proj",
        k="attn.attention.k_proj",
        v="attn.attention.v_proj",
        attn_out="attn.attention.out_proj",
        mlp_out="mlp.c_proj",
        mlp_post="mlp.c_proj",  # intermediate_size None: 4 * hidden_size
        attention="attn.attention",
        final_modules=("ln_f",),
    ),
    Adapter(  # parallel; q/k before the optional qk_layernorm and partial rotary
        family="phi",
        model_types=("phi",),
        blocks_path="layers",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        attn_out="self_attn.dense",
        mlp_out="mlp.fc2",
        mlp_post="mlp.fc2",
        attention="self_attn",
        final_modules=("final_layernorm",),
    ),
    Adapter(
        family="phi3",
        model_types=("phi3",),
        blocks_path="layers",
        q="self_attn.qkv_proj",
        k="self_attn.qkv_proj",
        v="self_attn.qkv_proj",
        attn_out="self_attn.o_proj",
        mlp_out="mlp.down_proj",
        mlp_post="mlp.down_proj",  # its input: up * act(gate) of the fused gate_up_proj
        attention="self_attn",
        fused_qkv=True,  # [q | k | v], k and v narrower with grouped-query attention
    ),
    _post_norm_sublayers("gemma2", ("gemma2",)),
    _post_norm_sublayers("gemma3_text", ("gemma3_text",)),  # q/k before q_norm / k_norm
    _post_norm_sublayers("olmo2", ("olmo2",)),  # q/k before q_norm / k_norm
    Adapter(
        family="falcon",
        model_types=("falcon",),
        blocks_path="h",
        q="self_attention.query_key_value",
        k="self_attention.query_key_value",
        v="self_attention.query_key_value",
        attn_out="self_attention.dense",
        mlp_out="mlp",  # the block adds the attention output into it in place: copied first
        mlp_post="mlp.dense_4h_to_h",
        attention="self_attention",  # eager: the probabilities with ALiBi or rotary alike
        fused_qkv=True,
        qkv_layout=_falcon_layout,
        copy_sites=("mlp_out",),
        config_keys=ConfigKeys(n_kv_heads=_falcon_kv_heads, d_mlp="ffn_hidden_size"),
        final_modules=("ln_f",),
    ),
])

#: what `model.family` accepts besides `auto`, in the table's order
FAMILIES: tuple[str, ...] = tuple(ADAPTERS)
#: `config.model_type` -> family: what `family: auto` accepts (from each adapter's `model_types`)
MODEL_TYPE_FAMILY: dict[str, str] = {model_type: adapter.family for adapter in ADAPTERS.values()
                                     for model_type in adapter.model_types}


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
    if family not in ADAPTERS:
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
    """Layers, width, heads and context length from a HF config of `family` (the family's
    `ConfigKeys`; `Adapter.dims` is the same for an adapter in hand).

        >>> from transformers import LlamaConfig
        >>> cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
        ...                   num_key_value_heads=2, max_position_embeddings=128)
        >>> model_dims(cfg, "llama")
        ModelDims(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, head_dim=16, max_positions=128, d_mlp=11008)
    """
    if family not in ADAPTERS:
        raise ConfigError("model.family", f"one of {', '.join(FAMILIES)} or auto", family)
    return ADAPTERS[family].dims(config)
