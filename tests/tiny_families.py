"""Tiny random checkpoints of every family laminae has an adapter for, saved as a user's folder
would be (a `*ForCausalLM` with `config.json`, safetensors and a tokenizer), so that tests load
them through the real loading code, and TransformerLens boots the very same files.

    >>> folder = build_tiny("gpt_neox", tmp_path / "pythia")     # 2 layers, d_model 32
    >>> load_model({"pretrained": str(folder), "family": "auto", ...})

Two layers, d_model 32, 4 heads of 8 (2 key/value heads where the family has grouped-query
attention, one under Falcon-7B's multi-query), the GPT-2 tokenizer (rebuilt offline), and
sliding-window attention with a window of 4 tokens where the family has it (GPT-Neo's local
layers, Phi-3, Gemma 2/3), so that inputs of a dozen tokens exercise it. Weights are drawn
with `initializer_range` 0.2 (not the usual 0.02), so that attention is far from uniform and a
wrong mask or split shows in every site.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers as tf
from tokenizers import Tokenizer

from laminae.models.gpt2_tokenizer import END_OF_TEXT, gpt2_tokenizer

VOCAB, EOT = 50257, 50256
SPECIAL = dict(vocab_size=VOCAB, bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT)
WINDOW = 4  # sliding-window attention span of the families that have it
LLAMA_LIKE = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128)

#: family name -> (config class, config kwargs). `falcon` is Falcon-7B's layout (multi-query,
#: parallel attention and MLP); `falcon_new` its `new_decoder_architecture` (grouped KV, two
#: layer norms); `falcon_rw` falcon-rw's (ALiBi, per-head [q, k, v], sequential); `opt_post_ln`
#: OPT-350m's post-LayerNorm layout with a projected embedding.
CONFIGS: dict[str, tuple[type, dict[str, Any]]] = {
    "gpt_neox": (tf.GPTNeoXConfig, dict(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                        num_hidden_layers=2, max_position_embeddings=128, rotary_pct=0.25,
                                        use_parallel_residual=True)),
    "opt": (tf.OPTConfig, dict(hidden_size=32, num_attention_heads=4, ffn_dim=64, num_hidden_layers=2,
                               max_position_embeddings=128, word_embed_proj_dim=32, do_layer_norm_before=True)),
    "opt_post_ln": (tf.OPTConfig, dict(hidden_size=32, num_attention_heads=4, ffn_dim=64, num_hidden_layers=2,
                                       max_position_embeddings=128, word_embed_proj_dim=16,
                                       do_layer_norm_before=False)),
    "gptj": (tf.GPTJConfig, dict(n_embd=32, n_head=4, n_layer=2, n_positions=128, rotary_dim=4, n_inner=64)),
    "gpt_neo": (tf.GPTNeoConfig, dict(hidden_size=32, num_heads=4, num_layers=2, intermediate_size=64,
                                      attention_types=[[["global", "local"], 1]], window_size=WINDOW,
                                      max_position_embeddings=128)),
    "phi": (tf.PhiConfig, dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
                               num_hidden_layers=2, max_position_embeddings=128, partial_rotary_factor=0.5)),
    "phi3": (tf.Phi3Config, dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                 num_hidden_layers=2, max_position_embeddings=128,
                                 original_max_position_embeddings=128, sliding_window=WINDOW)),
    "gemma2": (tf.Gemma2Config, dict(**LLAMA_LIKE, sliding_window=WINDOW,
                                     layer_types=["sliding_attention", "full_attention"])),
    "gemma3_text": (tf.Gemma3TextConfig, dict(**LLAMA_LIKE, sliding_window=WINDOW,
                                              layer_types=["sliding_attention", "full_attention"])),
    "olmo2": (tf.Olmo2Config, {k: v for k, v in LLAMA_LIKE.items() if k != "head_dim"}),
    "falcon": (tf.FalconConfig, dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                     ffn_hidden_size=64, max_position_embeddings=128, multi_query=True,
                                     new_decoder_architecture=False, parallel_attn=True, alibi=False, bias=False)),
    "falcon_new": (tf.FalconConfig, dict(hidden_size=32, num_attention_heads=4, num_kv_heads=2, num_hidden_layers=2,
                                         ffn_hidden_size=64, max_position_embeddings=128,
                                         new_decoder_architecture=True, parallel_attn=True, alibi=False,
                                         bias=True)),
    "falcon_rw": (tf.FalconConfig, dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                        ffn_hidden_size=64, max_position_embeddings=128, multi_query=False,
                                        new_decoder_architecture=False, parallel_attn=False, alibi=True,
                                        bias=True)),
}
#: the adapter family each tiny checkpoint loads as
FAMILY = {name: name.removesuffix("_new").removesuffix("_rw").removesuffix("_post_ln") for name in CONFIGS}


def tiny_config(name: str, **overrides: Any) -> Any:
    """The HF config of tiny checkpoint `name` (see CONFIGS)."""
    config_cls, kwargs = CONFIGS[name]
    config = config_cls(**{**SPECIAL, **kwargs, "initializer_range": 0.2, **overrides})
    config.architectures = None
    return config


def build_tiny(name: str, folder: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny random `*ForCausalLM` of `name` and the GPT-2 tokenizer to `folder`."""
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.AutoModelForCausalLM.from_config(tiny_config(name, **overrides)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(folder)
    return folder


def save_tokenizer(folder: Path) -> None:
    """GPT-2's tokenizer with <|endoftext|> as bos, eos, unk and pad."""
    tokenizer = gpt2_tokenizer()
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    type(tokenizer)(tokenizer_object=backend, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT,
                    pad_token=END_OF_TEXT, model_max_length=128).save_pretrained(folder)
