"""The adapter table: the lists derived from its entries (families, model types, the schema's
choices) agree with them, family detection, shapes from configs (each family's `ConfigKeys`
against its modules' real widths), the llama-/bert-like types that `family: auto` accepts (tiny
random models from configs, so no weights are needed), and the fused q/k/v layouts. The other
families' sites are checked against TransformerLens in
tests/test_families.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers as tf

from laminae.capture import SITES, SiteCapture
from laminae.errors import ConfigError
from laminae.models.adapters import (
    ADAPTERS,
    FAMILIES,
    MODEL_TYPE_FAMILY,
    QKV_LAYOUTS,
    get_adapter,
    index_adapters,
    model_dims,
    resolve_family,
    split_fused_qkv,
)
from laminae.config.validate import core_schema
from tiny_families import CONFIGS, FAMILY, tiny_config

# head_dim is explicit: gemma's and qwen3's defaults (256, 128) are not hidden_size / heads
SMALL_LLAMA = dict(vocab_size=100, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=8, intermediate_size=64, num_hidden_layers=2,
                   max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
SMALL_BERT = dict(vocab_size=100, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                  num_hidden_layers=2, max_position_embeddings=64, pad_token_id=0)
LLAMA_LIKE = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
              "qwen3": tf.Qwen3Config, "gemma": tf.GemmaConfig}
BERT_LIKE = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig,
             "xlm-roberta": tf.XLMRobertaConfig, "camembert": tf.CamembertConfig,
             "electra": tf.ElectraConfig}


def test_every_mapped_type_is_tested() -> None:
    assert set(MODEL_TYPE_FAMILY) == {"gpt2", *LLAMA_LIKE, *BERT_LIKE, *FAMILY.values()}
    assert set(FAMILIES) == set(ADAPTERS) == set(MODEL_TYPE_FAMILY.values())
    assert core_schema()["properties"]["model"]["properties"]["family"]["enum"] == ["auto", *FAMILIES]


def test_derived_lists_agree_with_the_entries() -> None:
    """FAMILIES, MODEL_TYPE_FAMILY and the table's keys come from the entries, and nothing else."""
    assert FAMILIES == tuple(adapter.family for adapter in ADAPTERS.values())
    assert all(family == adapter.family for family, adapter in ADAPTERS.items())
    claims = [(model_type, adapter.family) for adapter in ADAPTERS.values() for model_type in adapter.model_types]
    assert len(claims) == len(MODEL_TYPE_FAMILY)  # no model_type claimed twice
    assert sorted(claims) == sorted(MODEL_TYPE_FAMILY.items())  # each maps back to its adapter
    for adapter in ADAPTERS.values():
        assert adapter.model_types, f"{adapter.family}: `family: auto` never picks it"
        assert len(set(adapter.model_types)) == len(adapter.model_types)


def test_entries_are_consistent() -> None:
    """A fused projection is one module for q, k and v; separate projections are three."""
    for adapter in ADAPTERS.values():
        paths = {adapter.module_path(site) for site in ("q", "k", "v")}
        assert len(paths) == (1 if adapter.fused_qkv else 3), adapter.family
        assert callable(adapter.qkv_layout) or adapter.qkv_layout in QKV_LAYOUTS
        assert set(adapter.flat_sites) | set(adapter.copy_sites) <= set(SITES)


def test_index_adapters_rejects_ambiguous_tables() -> None:
    gpt2, bert = ADAPTERS["gpt2"], ADAPTERS["bert"]
    assert list(index_adapters([bert, gpt2])) == ["bert", "gpt2"]
    with pytest.raises(ValueError, match="'roberta'.*'bert'.*'bert_copy'"):
        index_adapters([gpt2, bert, replace(bert, family="bert_copy", model_types=("roberta",))])
    with pytest.raises(ValueError, match="two adapters of family 'gpt2'"):
        index_adapters([gpt2, replace(gpt2, model_types=("gpt2_copy",))])
    with pytest.raises(ValueError, match="unknown q/k/v layout 'interleaved'"):
        index_adapters([replace(gpt2, qkv_layout="interleaved")])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_keys_read_the_model_shapes(name: str) -> None:
    """Each family's dims (read through its `ConfigKeys`) are the shapes its modules produce."""
    config = tiny_config(name)
    torch.manual_seed(0)
    model = tf.AutoModel.from_config(config, attn_implementation="eager").eval()   # eager: site pattern
    adapter = get_adapter("auto", config)
    dims = adapter.dims(config)
    assert dims == model_dims(config, adapter.family)
    assert dims.n_layers == len(adapter.blocks(model)) == 2
    assert dims.max_positions == 128
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), SiteCapture(model, adapter, sites=SITES) as cap:
        model(input_ids=ids)
        out = cap.pop()
    widths = adapter.site_widths(config, n_keys=5)
    assert {site: out[site][0].shape[-1] for site in SITES} == widths
    assert widths["q"] == dims.n_heads * dims.head_dim and widths["resid_post"] == dims.d_model


def _tiny(config_cls: type, kwargs: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return tf.AutoModel.from_config(config_cls(**kwargs), attn_implementation="eager").eval()  # eager: pattern


def _run_all_sites(model: torch.nn.Module, family: str) -> dict[str, list[torch.Tensor]]:
    adapter = get_adapter("auto", model.config)
    assert adapter.family == family
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad(), SiteCapture(model, adapter, sites=SITES) as cap:
        model(input_ids=ids, attention_mask=mask)
        out = cap.pop()
    widths = adapter.site_widths(model.config, n_keys=5)
    for site in SITES:
        assert [a.shape for a in out[site]] == [(2, 5, widths[site])] * 2
    return out


@pytest.mark.parametrize("model_type", sorted(LLAMA_LIKE))
def test_llama_like_types(model_type: str) -> None:
    model = _tiny(LLAMA_LIKE[model_type], SMALL_LLAMA)
    assert model.config.model_type == model_type
    out = _run_all_sites(model, "llama")
    assert out["k"][0].shape[-1] == 16 < out["q"][0].shape[-1] == 32  # GQA
    for layer in range(2):
        torch.testing.assert_close(
            out["resid_post"][layer],
            out["resid_pre"][layer] + out["attn_out"][layer] + out["mlp_out"][layer],
            rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", sorted(BERT_LIKE))
def test_bert_like_types(model_type: str) -> None:
    model = _tiny(BERT_LIKE[model_type], SMALL_BERT)
    assert model.config.model_type == model_type
    out = _run_all_sites(model, "bert")
    # post-LayerNorm: block output = LayerNorm(mlp_out + attention output); checked on the
    # unpadded sequence 0, since this direct call of the attention gets no mask
    block = ADAPTERS["bert"].blocks(model)[0]
    attention_output = block.attention(out["resid_pre"][0][:1])[0]
    expected = block.output.LayerNorm(out["mlp_out"][0][:1] + attention_output)
    torch.testing.assert_close(out["resid_post"][0][:1], expected, rtol=0, atol=1e-5)


def test_gpt2_head_model_uses_the_base_model() -> None:
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=100))
    adapter = get_adapter("gpt2", model.config)
    assert adapter.blocks(model) is model.transformer.h
    assert adapter.module(adapter.blocks(model)[1], "k") is model.transformer.h[1].attn.c_attn


def test_auto_rejects_unknown_model_types() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_family("auto", tf.T5Config())
    assert info.value.key == "model.family"
    assert "'t5'" in str(info.value) and "\n" not in str(info.value)


def test_explicit_family_must_match_and_exist() -> None:
    assert resolve_family("llama", tf.MistralConfig()) == "llama"
    with pytest.raises(ConfigError, match="model.family"):
        resolve_family("bert", tf.GPT2Config())
    with pytest.raises(ConfigError, match="model.family"):
        resolve_family("t5", tf.T5Config())


def test_model_dims() -> None:
    gpt2 = model_dims(tf.GPT2Config(n_layer=36, n_embd=1280, n_head=20), "gpt2")
    assert (gpt2.n_layers, gpt2.d_model, gpt2.n_heads, gpt2.head_dim, gpt2.max_positions) == (
        36, 1280, 20, 64, 1024)
    llama = model_dims(tf.LlamaConfig(**SMALL_LLAMA), "llama")
    assert (llama.n_heads, llama.n_kv_heads, llama.head_dim, llama.max_positions) == (4, 2, 8, 64)
    bert = model_dims(tf.BertConfig(**SMALL_BERT), "bert")
    assert (bert.n_layers, bert.d_model, bert.n_kv_heads) == (2, 32, 4)


def test_site_widths_with_gqa() -> None:
    widths = ADAPTERS["llama"].site_widths(tf.LlamaConfig(**SMALL_LLAMA))
    assert widths == {"q": 32, "k": 16, "v": 16, "attn_out": 32, "mlp_out": 32,
                      "resid_pre": 32, "resid_post": 32, "mlp_post": 64}   # mlp_post: intermediate_size


def test_module_paths() -> None:
    assert ADAPTERS["gpt2"].module_path("resid_pre") is None
    with pytest.raises(ValueError):
        ADAPTERS["gpt2"].module_path("logits")


def test_fused_layouts() -> None:
    """`concat`: [q | k | v]; `grouped`: per key/value group, its queries, its key, its value."""
    fused = torch.arange(2 * 16.0).view(2, 16)          # (rows, fused width), head_dim 2
    q, k, v = split_fused_qkv(fused, "concat", n_heads=4, n_kv_heads=2, head_dim=2)
    assert (q.tolist()[0], k.tolist()[0], v.tolist()[0]) == (list(range(8)), [8, 9, 10, 11], [12, 13, 14, 15])
    q, k, v = split_fused_qkv(fused, "grouped", n_heads=4, n_kv_heads=2, head_dim=2)
    # group 0: q heads 0, 1 = 0..3, k = 4 5, v = 6 7; group 1: q heads 2, 3 = 8..11, k = 12 13, v = 14 15
    assert q.tolist()[0] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert (k.tolist()[0], v.tolist()[0]) == ([4, 5, 12, 13], [6, 7, 14, 15])
    with pytest.raises(ValueError):
        split_fused_qkv(fused, "grouped", n_heads=4, n_kv_heads=4, head_dim=2)   # width 24 expected
    with pytest.raises(ValueError):
        split_fused_qkv(fused, "interleaved", n_heads=4, n_kv_heads=2, head_dim=2)


@pytest.mark.parametrize("name, layout, kv_heads", [("falcon", "concat", 1), ("falcon_new", "grouped", 2),
                                                    ("falcon_rw", "grouped", 4), ("gpt_neox", "grouped", 4),
                                                    ("phi3", "concat", 2)])
def test_fused_layout_per_checkpoint(name: str, layout: str, kv_heads: int) -> None:
    config = tiny_config(name)
    adapter = get_adapter("auto", config)
    assert adapter.fused_qkv and adapter.layout(config) == layout
    assert model_dims(config, adapter.family).n_kv_heads == kv_heads


def test_residual_sum_per_checkpoint() -> None:
    for name in FAMILY:
        config = tiny_config(name)
        assert get_adapter("auto", config).residual_sum_holds(config) == (name != "opt_post_ln")
