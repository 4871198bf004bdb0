"""Every family's every site against an independent implementation: TransformerLens 4.x
(`TransformerBridge` hooks, booted offline from the same checkpoint folder), or, for Falcon's
`new_decoder_architecture` (whose fused q/k/v TransformerLens splits wrongly), a manual forward
pass from the weights.

laminae runs the real extraction path (`iter_batches`: right-padded batches of 4, row
selectors, reused capture buffers) on real plans of both input kinds (stimuli prompts, at the
target word's last token; corpus windows, every token); TransformerLens runs each sequence
alone, unpadded. Agreement therefore also shows that batching with padding changes nothing.
Sliding-window attention is exercised where a family has it (window 4, sequences of 12 tokens)
and shown to be in force through TransformerLens' attention pattern. laminae's own `pattern`
(the model loaded with eager attention, as an extraction of that site loads it) equals
TransformerLens' `hook_pattern`, keys padded to the plan's longest sequence.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from laminae.capture import SiteCapture
from laminae.inputs import ExtractionPlan, input_kind
from laminae.models.loading import LoadedModel, load_model
from laminae.sites import SITES
from laminae.capture import iter_batches
from laminae.capture.forward import plan_keys
from tiny_families import CONFIGS, FAMILY, WINDOW, build_tiny

# `tiny_dir` (conftest.py): name -> the folder of that tiny checkpoint, built once per session

#: relative to the largest |value| of the site: float32 round-off over a 2-layer forward
#: (seen: at most 1.2e-6; sdpa here, eager attention in TransformerLens)
RTOL = 1e-5
TL_HOOKS = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "attn_out": "hook_attn_out",
            "mlp_out": "hook_mlp_out", "resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post",
            "mlp_post": "mlp.hook_post", "pattern": "attn.hook_pattern"}
AGAINST_TL = ("gpt_neox", "opt", "opt_post_ln", "gptj", "gpt_neo", "phi", "phi3", "gemma2", "gemma3_text",
              "olmo2", "falcon")
#: tiny checkpoint -> its sliding-window layers
SLIDING = {"gpt_neo": [1], "phi3": [0, 1], "gemma2": [0], "gemma3_text": [0]}
CORPUS = ("Friedrich Nietzsche was a German philosopher whose work has exerted a profound influence on "
          "modern intellectual history. He began his career as a classical philologist before turning "
          "to philosophy, and wrote on truth, morality, language and aesthetics.")
STIMULI = {"stimuli": {"categories": {"animals": ["dog", "elephant"], "tools": ["hammer", "screwdriver"],
                                      "colours": ["red", "turquoise"]}},
           "template": {"text": "In the story the word {word} appears twice"},
           "extract": {"position": "target_last"}}


def model_cfg(folder: Path, **overrides: Any) -> dict[str, Any]:
    return {"name": folder.name, "pretrained": str(folder), "revision": None, "dtype": "float32",
            "family": "auto", "random_init": None, "n_layers": None, "d_model": None, **overrides}


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExtractionPlan]:
    """The stimuli and corpus plans (every tiny checkpoint has the GPT-2 tokenizer)."""
    from laminae.models.loading import prepare_tokenizer
    from tiny_families import save_tokenizer
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(folder)
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(folder))
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS)
    stimuli = input_kind("stimuli").plan(STIMULI, tokenizer, 128, folder)
    windows = input_kind("corpus").plan({"corpus": {"path": str(corpus), "window_tokens": 12, "windowing": True}},
                                        tokenizer, 128, folder)
    assert len({len(s) for s in stimuli.sequences}) > 1 and len({len(s) for s in windows.sequences}) > 1
    assert max(len(s) for s in windows.sequences) > WINDOW
    return {"stimuli": stimuli, "corpus": windows}


def laminae_rows(loaded: LoadedModel, plan: ExtractionPlan, batch_size: int = 4,
                 sites: tuple[str, ...] = SITES) -> dict[str, np.ndarray]:
    """{site: (n_layers, rows, width)} through the extraction's own batching and capture
    (`pattern` needs the model loaded with `patterns=True`)."""
    chunks: dict[str, list[np.ndarray]] = {site: [] for site in sites}
    for _, batch in iter_batches(loaded, plan, sites, batch_size):
        for site in sites:
            chunks[site].append(np.stack(batch[site]))  # copies: the batch is only valid until the next
    return {site: np.concatenate(parts, axis=1) for site, parts in chunks.items()}


def pad_keys(pattern: torch.Tensor, n_keys: int) -> np.ndarray:
    """(rows, heads, keys) -> (rows, heads * n_keys): keys zero-padded, head-major, as stored."""
    rows, heads, keys = pattern.shape
    return torch.nn.functional.pad(pattern, (0, n_keys - keys)).reshape(rows, heads * n_keys).numpy()


def close(ours: np.ndarray, reference: np.ndarray, what: str) -> float:
    """Assert agreement within RTOL of the reference's scale; return the relative difference."""
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape} != {reference.shape}"
    scale = max(float(np.abs(reference).max()), 1e-6)
    difference = float(np.abs(ours - reference).max()) / scale
    assert difference <= RTOL, f"{what}: max |difference| {difference:.1e} x max |value|"
    return difference


@pytest.fixture(scope="module")
def bridge_class():
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


@pytest.mark.parametrize("name", AGAINST_TL)
def test_every_site_equals_transformer_lens(name: str, tiny_dir, plans, bridge_class) -> None:
    folder = tiny_dir(name)
    loaded = load_model(model_cfg(folder), device="cpu", patterns=True)
    assert loaded.info.family == FAMILY[name] and loaded.info.n_layers == 2
    assert loaded.model.config._attn_implementation == "eager"
    bridge = bridge_class.boot_transformers(str(folder), device="cpu")
    n_layers = loaded.info.n_layers
    names = [f"blocks.{layer}.{hook}" for layer in range(n_layers) for hook in TL_HOOKS.values()]
    patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in SLIDING.get(name, [])]
    for kind, plan in plans.items():
        ours = laminae_rows(loaded, plan)
        n_keys = plan_keys(plan)
        theirs: dict[str, list[list[np.ndarray]]] = {site: [[] for _ in range(n_layers)] for site in SITES}
        with torch.inference_mode():
            for sequence, keep in zip(plan.sequences, plan.keep):  # one at a time, no padding
                _, cache = bridge.run_with_cache(torch.tensor([sequence]), names_filter=names)
                for site, hook in TL_HOOKS.items():
                    for layer in range(n_layers):
                        if site == "pattern":   # (batch, heads, query, key) -> (kept, heads * n_keys)
                            act = cache[f"blocks.{layer}.{hook}"][0, :, keep, :].transpose(0, 1)
                            theirs[site][layer].append(pad_keys(act, n_keys))
                            continue
                        act = cache[f"blocks.{layer}.{hook}"][0, keep]  # (kept, width) or (kept, heads, d_head)
                        theirs[site][layer].append(act.reshape(len(keep), -1).numpy())
                for pattern_name in patterns:  # (heads, query, key): nothing beyond the window
                    pattern = cache[pattern_name][0]
                    query, key = torch.meshgrid(torch.arange(len(sequence)), torch.arange(len(sequence)), indexing="ij")
                    assert pattern[:, query - key >= WINDOW].abs().max() == 0
                    assert pattern[:, (query - key < WINDOW) & (key <= query)].min() > 0
        for site in SITES:
            reference = np.stack([np.concatenate(parts) for parts in theirs[site]])
            close(ours[site], reference, f"{name} {kind} {site}")
        residual = ours["resid_pre"] + ours["attn_out"] + ours["mlp_out"]
        if loaded.adapter.residual_sum_holds(loaded.model.config):
            close(residual, ours["resid_post"], f"{name} {kind} resid_post = resid_pre + attn_out + mlp_out")
        else:  # post-LayerNorm (OPT-350m's layout): the sublayers' sum is normalised afterwards
            assert name == "opt_post_ln"
            assert np.abs(residual - ours["resid_post"]).max() > 0.1
        check_pattern_rows(ours["pattern"], plan, loaded.info.n_heads, SLIDING.get(name, []))


def check_pattern_rows(pattern: np.ndarray, plan: ExtractionPlan, n_heads: int, sliding: list[int]) -> None:
    """Every stored pattern row (n_layers, rows, heads * n_keys) is a causal distribution over
    its sequence's keys: sums to 1, zero after the query token (and beyond the window on the
    sliding-window layers), positive on the keys it may see."""
    n_keys = plan_keys(plan)
    positions = np.concatenate([np.asarray(keep) for keep in plan.keep])             # (rows,)
    rows = pattern.reshape(pattern.shape[0], len(positions), n_heads, n_keys)
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-5)
    key = np.arange(n_keys)
    for layer in range(rows.shape[0]):
        window = WINDOW if layer in sliding else n_keys
        visible = (key[None, :] <= positions[:, None]) & (positions[:, None] - key[None, :] < window)  # (rows, keys)
        assert np.abs(rows[layer][~np.broadcast_to(visible[:, None], rows[layer].shape)]).max() == 0
        assert rows[layer][np.broadcast_to(visible[:, None], rows[layer].shape)].min() > 0


def test_sliding_window_changes_the_activations(tiny_dir, plans, tmp_path: Path) -> None:
    """The same Gemma 2 weights with a window longer than every input give other activations:
    the window of 4 that the comparison above runs with is in force, not a no-op."""
    windowed = load_model(model_cfg(tiny_dir("gemma2")), device="cpu", patterns=True)
    wide = load_model(model_cfg(build_tiny("gemma2", tmp_path / "wide", sliding_window=64)), device="cpu",
                      patterns=True)
    a, b = laminae_rows(windowed, plans["corpus"]), laminae_rows(wide, plans["corpus"])
    np.testing.assert_array_equal(a["resid_pre"][0], b["resid_pre"][0])  # same weights
    assert np.abs(a["attn_out"][0] - b["attn_out"][0]).max() > 1e-2
    # layer 0 slides: the wide model's pattern reaches keys the windowed one gives 0
    assert np.abs(a["pattern"][0] - b["pattern"][0]).max() > 1e-2


# -- Falcon's new_decoder_architecture against a manual forward pass ----------------------------


def _rotate(x: torch.Tensor, position: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (rotate-half convention, whole head): x (seq, heads, head_dim)."""
    head_dim = x.shape[-1]
    inverse = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = position[:, None].double() * inverse                           # (seq, head_dim / 2)
    cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]
    half = torch.cat([-x[..., head_dim // 2:], x[..., : head_dim // 2]], -1)
    return (x.double() * cos + half.double() * sin).float()


def falcon_new_reference(model: torch.nn.Module, ids: list[int]) -> dict[str, list[torch.Tensor]]:
    """Every site of a new-architecture Falcon block, from its weights alone: per key/value
    group, the fused projection holds that group's queries, then its key, then its value."""
    config = model.config
    n_heads, n_kv, head_dim = config.num_attention_heads, config.num_kv_heads, config.hidden_size // config.num_attention_heads
    group = n_heads // n_kv
    x = model.word_embeddings.weight[torch.tensor(ids)]                      # (seq, d_model)
    seq = len(ids)
    position = torch.arange(seq)
    causal = torch.ones(seq, seq).tril().bool()
    out: dict[str, list[torch.Tensor]] = {site: [] for site in SITES}
    for block in model.h:
        out["resid_pre"].append(x)
        attn_in, mlp_in = block.ln_attn(x), block.ln_mlp(x)
        qkv = attn_in @ block.self_attention.query_key_value.weight.T + block.self_attention.query_key_value.bias
        per_group = qkv.view(seq, n_kv, group + 2, head_dim)
        q = per_group[:, :, :group].reshape(seq, n_heads, head_dim)          # head h = kv * group + j
        k, v = per_group[:, :, group], per_group[:, :, group + 1]           # (seq, n_kv, head_dim)
        out["q"].append(q.reshape(seq, -1))
        out["k"].append(k.reshape(seq, -1))
        out["v"].append(v.reshape(seq, -1))
        theta = config.rope_parameters["rope_theta"]
        q_rot, k_rot = _rotate(q, position, theta), _rotate(k, position, theta)
        heads, pattern = [], []
        for head in range(n_heads):
            scores = q_rot[:, head] @ k_rot[:, head // group].T / math.sqrt(head_dim)
            weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)   # (query, key)
            heads.append(weights @ v[:, head // group])
            pattern.append(weights)
        out["pattern"].append(torch.stack(pattern, dim=1))                   # (query, heads, key)
        attn_out = block.self_attention.dense(torch.cat(heads, dim=-1))
        mlp_post = torch.nn.functional.gelu(block.mlp.dense_h_to_4h(mlp_in))      # (seq, d_mlp)
        mlp_out = block.mlp.dense_4h_to_h(mlp_post)
        x = x + attn_out + mlp_out
        out["mlp_post"].append(mlp_post)
        out["attn_out"].append(attn_out)
        out["mlp_out"].append(mlp_out)
        out["resid_post"].append(x)
    return out


def test_falcon_new_architecture_against_a_manual_forward(tiny_dir, plans) -> None:
    loaded = load_model(model_cfg(tiny_dir("falcon_new")), device="cpu", patterns=True)
    config = loaded.model.config
    assert config.new_decoder_architecture and config.num_kv_heads == 2 < config.num_attention_heads == 4
    widths = loaded.adapter.site_widths(config)
    assert (widths["q"], widths["k"], widths["v"]) == (32, 16, 16)
    for kind, plan in plans.items():
        ours = laminae_rows(loaded, plan)
        with torch.no_grad():
            references = [falcon_new_reference(loaded.model, sequence) for sequence in plan.sequences]
        for site in SITES:
            keys = plan_keys(plan)
            reference = np.stack([np.concatenate([pad_keys(ref[site][layer][keep], keys) if site == "pattern"
                                                  else ref[site][layer][keep].numpy()
                                                  for ref, keep in zip(references, plan.keep)])
                                  for layer in range(2)])
            close(ours[site], reference, f"falcon_new {kind} {site}")


def test_falcon_rw_interleaved_qkv_split(tiny_dir) -> None:
    """falcon-rw's layout (neither multi-query nor new architecture): per head [q, k, v]."""
    loaded = load_model(model_cfg(tiny_dir("falcon_rw")), device="cpu")
    ids = torch.tensor([[100, 200, 300, 400, 500]])
    with torch.no_grad(), SiteCapture(loaded.model, loaded.adapter, sites=("q", "k", "v", "resid_pre")) as cap:
        loaded.model(input_ids=ids)
        out = cap.pop()
        for layer, block in enumerate(loaded.adapter.blocks(loaded.model)):
            linear = block.self_attention.query_key_value
            fused = block.input_layernorm(out["resid_pre"][layer]) @ linear.weight.T + linear.bias
            per_head = fused.view(1, 5, 4, 3, 8)
            for index, site in enumerate(("q", "k", "v")):
                close(out[site][layer].numpy(), per_head[..., index, :].reshape(1, 5, 32).numpy(), site)


def test_falcon_mlp_out_is_copied_before_the_in_place_add(tiny_dir) -> None:
    """FalconDecoderLayer adds the attention output into the MLP's output tensor in place; with
    no selector (the kept tensor would be the module output itself) mlp_out must still be the
    MLP's own output, so that resid_post = resid_pre + attn_out + mlp_out."""
    loaded = load_model(model_cfg(tiny_dir("falcon")), device="cpu", patterns=True)
    with torch.no_grad(), SiteCapture(loaded.model, loaded.adapter, sites=SITES) as cap:
        loaded.model(input_ids=torch.tensor([[100, 200, 300, 400]]))
        out = cap.pop()
    for layer in range(2):
        block = loaded.adapter.blocks(loaded.model)[layer]
        with torch.no_grad():
            mlp = block.mlp(block.input_layernorm(out["resid_pre"][layer]))
        close(out["mlp_out"][layer].numpy(), mlp.numpy(), "mlp_out")
        close((out["resid_pre"][layer] + out["attn_out"][layer] + out["mlp_out"][layer]).numpy(),
              out["resid_post"][layer].numpy(), "resid_post")


def test_half_precision_every_family(tiny_dir, plans) -> None:
    """`model.dtype=bfloat16|float16` loads and captures every family; the rows agree with
    float32 to the precision of the dtype (relative to each site's scale)."""
    from laminae.models.loading import open_model

    tolerances = {"bfloat16": 0.1, "float16": 0.02}
    plan = ExtractionPlan(plans["corpus"].sequences[:2], plans["corpus"].keep[:2], False,
                          plans["corpus"].rows, plans["corpus"].columns)
    for name in CONFIGS:
        files = open_model(model_cfg(tiny_dir(name)))  # config and tokenizer, read once
        reference = laminae_rows(load_model(model_cfg(tiny_dir(name)), device="cpu", files=files, patterns=True), plan)
        for dtype, tolerance in tolerances.items():
            loaded = load_model(model_cfg(tiny_dir(name), dtype=dtype), device="cpu", files=files, patterns=True)
            assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, dtype)}
            ours = laminae_rows(loaded, plan)
            for site in SITES:
                scale = np.abs(reference[site]).max()
                assert np.isfinite(ours[site]).all(), (name, dtype, site)
                assert np.abs(ours[site] - reference[site]).max() <= tolerance * scale, (name, dtype, site)
