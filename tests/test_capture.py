"""SiteCapture: every site equals a manual computation, the residual identities hold, batched
(right-padded) equals unbatched, and hooks never outlive the `with` block. Site `pattern` needs
eager attention: the models capturing every site are loaded with it (`patterns=True`), and the
plain fixtures are shown to keep sdpa."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModel

from conftest import PROJECT_ROOT, read_model_cfg
from laminae.capture import SITES, SiteCapture, select_last, select_rows, select_tokens
from laminae.models.loading import LoadedModel, forward_inputs, load_model
from reference_gpt2 import reference_gpt2_sites

TEXTS = [
    "The next word is sun",
    "Hi",
    "A much longer sentence about the philosopher Nietzsche and his ideas on morality",
    "The next word is orange",
]


#: keys of every pattern row here: more than any text above has tokens (GPT-2 or WordPiece)
N_KEYS = 40


def capture(loaded: LoadedModel, texts: list[str], sites=SITES, **kwargs):
    batch = forward_inputs(loaded.tokenizer, texts, loaded.info.device)
    assert batch["input_ids"].shape[1] <= N_KEYS
    with torch.no_grad(), SiteCapture(loaded.model, loaded.adapter, sites=sites,
                                      n_keys=N_KEYS if "pattern" in sites else None, **kwargs) as cap:
        loaded.model(**batch)
        return batch, cap.pop()


def _eager(name: str, models_dir) -> LoadedModel:
    return load_model(read_model_cfg(name), device="cpu", models_dir=models_dir, project_root=PROJECT_ROOT,
                      patterns=True)


@pytest.fixture(scope="module")
def eager_gpt2(models_dir) -> LoadedModel:
    """tiny-gpt2 loaded for patterns (eager attention): the same weights as `tiny_gpt2`."""
    return _eager("tiny-gpt2", models_dir)


@pytest.fixture(scope="module")
def eager_llama(models_dir) -> LoadedModel:
    return _eager("tiny-llama", models_dir)


@pytest.fixture(scope="module")
def eager_minilm(models_dir) -> LoadedModel:
    return _eager("minilm-l6", models_dir)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# -- Q, K, V against a manual computation ----------------------------------------------------


def test_gpt2_qkv_is_c_attn_of_ln_1_split_in_3(tiny_gpt2: LoadedModel) -> None:
    batch, out = capture(tiny_gpt2, TEXTS, sites=("q", "k", "v", "resid_pre"))
    d = tiny_gpt2.info.d_model
    for layer, block in enumerate(tiny_gpt2.adapter.blocks(tiny_gpt2.model)):
        x = block.ln_1(out["resid_pre"][layer])                           # (batch, seq, d)
        fused = x @ block.attn.c_attn.weight + block.attn.c_attn.bias     # Conv1D: x @ W + b
        q, k, v = fused[..., :d], fused[..., d:2 * d], fused[..., 2 * d:]
        close(out["q"][layer], q)
        close(out["k"][layer], k)
        close(out["v"][layer], v)
    # layer 0's input is the embedding sum, computed without any hook
    model, ids = tiny_gpt2.model, batch["input_ids"]
    embedded = model.wte(ids) + model.wpe(torch.arange(ids.shape[1]))
    close(out["resid_pre"][0], embedded)


def test_llama_qkv_are_projections_of_the_input_norm(tiny_llama: LoadedModel) -> None:
    _, out = capture(tiny_llama, TEXTS, sites=("q", "k", "v", "resid_pre"))
    for layer, block in enumerate(tiny_llama.adapter.blocks(tiny_llama.model)):
        x = block.input_layernorm(out["resid_pre"][layer])                # (batch, seq, 64)
        attn = block.self_attn
        close(out["q"][layer], x @ attn.q_proj.weight.T)                  # (batch, seq, 64)
        close(out["k"][layer], x @ attn.k_proj.weight.T)                  # (batch, seq, 32): GQA
        close(out["v"][layer], x @ attn.v_proj.weight.T)
        assert out["k"][layer].shape[-1] == 32 < out["q"][layer].shape[-1] == 64


def test_bert_qkv_are_linear_maps_of_the_block_input(minilm: LoadedModel) -> None:
    _, out = capture(minilm, TEXTS[:2], sites=("q", "k", "v", "resid_pre"))
    for layer, block in enumerate(minilm.adapter.blocks(minilm.model)):
        x = out["resid_pre"][layer]                                       # (batch, seq, 384)
        self_attn = block.attention.self
        for site, linear in (("q", self_attn.query), ("k", self_attn.key),
                             ("v", self_attn.value)):
            close(out[site][layer], x @ linear.weight.T + linear.bias, atol=1e-4)


# -- mlp_post against a manual computation ----------------------------------------------------


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def test_gpt2_mlp_post_is_gelu_of_c_fc_of_ln_2(tiny_gpt2: LoadedModel) -> None:
    _, out = capture(tiny_gpt2, TEXTS, sites=("mlp_post", "mlp_out", "attn_out", "resid_pre"))
    for layer, block in enumerate(tiny_gpt2.adapter.blocks(tiny_gpt2.model)):
        x = block.ln_2(out["resid_pre"][layer] + out["attn_out"][layer])  # (batch, seq, d_model)
        hidden = _gelu_tanh(x @ block.mlp.c_fc.weight + block.mlp.c_fc.bias)  # (batch, seq, d_mlp)
        assert hidden.shape[-1] == tiny_gpt2.adapter.site_widths(tiny_gpt2.model.config)["mlp_post"]
        close(out["mlp_post"][layer], hidden)
        close(out["mlp_out"][layer], hidden @ block.mlp.c_proj.weight + block.mlp.c_proj.bias)


def test_bert_mlp_post_is_the_intermediate_activation(minilm: LoadedModel) -> None:
    _, out = capture(minilm, TEXTS[:2], sites=("mlp_post", "attn_out", "resid_pre"))
    assert minilm.model.config.hidden_act == "gelu"   # the erf form
    for layer, block in enumerate(minilm.adapter.blocks(minilm.model)):
        # attn_out is the attention's dense output, before dropout + LayerNorm(x + residual)
        x = block.attention.output.LayerNorm(out["attn_out"][layer] + out["resid_pre"][layer])
        dense = block.intermediate.dense
        hidden = torch.nn.functional.gelu(x @ dense.weight.T + dense.bias)       # (batch, seq, 1536)
        assert hidden.shape[-1] == minilm.model.config.intermediate_size == out["mlp_post"][layer].shape[-1]
        close(out["mlp_post"][layer], hidden, atol=1e-4)


# -- pattern against a softmax of the captured q and k ------------------------------------------


def heads_pattern(pattern: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., heads * N_KEYS) -> (..., heads, N_KEYS)."""
    return pattern.unflatten(-1, (n_heads, N_KEYS))


def test_gpt2_pattern_is_the_causal_softmax_of_q_and_k(eager_gpt2: LoadedModel) -> None:
    batch, out = capture(eager_gpt2, TEXTS, sites=("q", "k", "pattern"))
    mask = batch["attention_mask"].bool()                                  # (batch, seq)
    n, n_heads = mask.shape[1], eager_gpt2.info.n_heads
    head_dim = eager_gpt2.info.d_model // n_heads
    causal = torch.ones(n, n).tril().bool()
    for layer in range(eager_gpt2.info.n_layers):
        q = out["q"][layer].unflatten(-1, (n_heads, head_dim)).transpose(1, 2)  # (batch, heads, seq, head_dim)
        k = out["k"][layer].unflatten(-1, (n_heads, head_dim)).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).masked_fill(~causal, float("-inf"))
        expected = torch.softmax(scores, dim=-1).transpose(1, 2)           # (batch, query, heads, key)
        got = heads_pattern(out["pattern"][layer], n_heads)                # (batch, query, heads, N_KEYS)
        assert got.shape == (len(TEXTS), n, n_heads, N_KEYS)
        assert got[..., n:].abs().max() == 0                               # keys past the batch: 0
        real = mask[:, :, None].expand(-1, -1, n_heads)                    # real query tokens
        close(got[..., :n][real], expected[real])
        close(got.sum(-1)[real], torch.ones(int(real.sum())))


def test_gpt2_pattern_and_mlp_post_match_the_numpy_reference(eager_gpt2: LoadedModel) -> None:
    """The independent NumPy GPT-2 (tests/reference_gpt2.py) on one unpadded text."""
    weights = {name: tensor.numpy() for name, tensor in eager_gpt2.model.state_dict().items()}
    ids = eager_gpt2.tokenizer(TEXTS[2])["input_ids"]
    reference = reference_gpt2_sites(weights, n_heads=eager_gpt2.info.n_heads, input_ids=ids)
    _, out = capture(eager_gpt2, [TEXTS[2]], sites=("mlp_post", "pattern"))
    for layer in range(eager_gpt2.info.n_layers):
        close(out["mlp_post"][layer][0].double(), torch.from_numpy(reference["mlp_post"][layer]), atol=1e-4)
        pattern = heads_pattern(out["pattern"][layer][0], eager_gpt2.info.n_heads)[..., :len(ids)]
        close(pattern.double(), torch.from_numpy(reference["pattern"][layer]), atol=1e-5)


def test_bert_pattern_is_the_padded_softmax_of_q_and_k(eager_minilm: LoadedModel) -> None:
    """Bidirectional: every real key is seen, padded keys get 0."""
    batch, out = capture(eager_minilm, TEXTS[:2], sites=("q", "k", "pattern"))
    mask = batch["attention_mask"].bool()                                  # (batch, seq)
    n, n_heads = mask.shape[1], eager_minilm.info.n_heads
    head_dim = eager_minilm.info.d_model // n_heads
    for layer in range(eager_minilm.info.n_layers):
        q = out["q"][layer].unflatten(-1, (n_heads, head_dim)).transpose(1, 2)
        k = out["k"][layer].unflatten(-1, (n_heads, head_dim)).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(head_dim)).masked_fill(~mask[:, None, None, :], float("-inf"))
        expected = torch.softmax(scores, dim=-1).transpose(1, 2)           # (batch, query, heads, key)
        got = heads_pattern(out["pattern"][layer], n_heads)
        assert got[..., n:].abs().max() == 0
        real = mask[:, :, None].expand(-1, -1, n_heads)
        close(got[..., :n][real], expected[real], atol=1e-5)
        assert got[1, 0, :, :n][:, ~mask[1]].abs().max() == 0             # padded keys of the short text


def test_pattern_needs_eager_attention_and_only_it_loads_eager(tiny_gpt2: LoadedModel, eager_gpt2) -> None:
    """Plain loading keeps sdpa (the fast kernel); SiteCapture refuses `pattern` there in one
    line; the eager model gives the same other sites."""
    assert tiny_gpt2.model.config._attn_implementation == "sdpa"
    assert eager_gpt2.model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="eager"):
        SiteCapture(tiny_gpt2.model, tiny_gpt2.adapter, sites=("pattern",))
    _, fast = capture(tiny_gpt2, TEXTS, sites=("attn_out", "mlp_post"))
    _, slow = capture(eager_gpt2, TEXTS, sites=("attn_out", "mlp_post"))
    for site in fast:
        for layer in range(tiny_gpt2.info.n_layers):
            close(fast[site][layer], slow[site][layer])


def test_pattern_width_needs_n_keys(eager_gpt2: LoadedModel) -> None:
    config = eager_gpt2.model.config
    widths = eager_gpt2.adapter.site_widths(config)
    assert "pattern" not in widths
    with pytest.raises(ValueError, match="n_keys"):
        widths["pattern"]
    assert eager_gpt2.adapter.site_widths(config, n_keys=7)["pattern"] == 7 * eager_gpt2.info.n_heads
    batch = forward_inputs(eager_gpt2.tokenizer, TEXTS)
    with torch.no_grad(), SiteCapture(eager_gpt2.model, eager_gpt2.adapter, sites=("pattern",), n_keys=3):
        with pytest.raises(ValueError, match="n_keys=3"):                 # a longer input than n_keys
            eager_gpt2.model(**batch)


# -- residual stream ---------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_pre_norm_residual_identity(fixture: str, request: pytest.FixtureRequest) -> None:
    loaded: LoadedModel = request.getfixturevalue(fixture)
    _, out = capture(loaded, TEXTS, sites=("attn_out", "mlp_out", "resid_pre", "resid_post"))
    assert len(out["resid_post"]) == loaded.info.n_layers
    for layer in range(loaded.info.n_layers):
        close(out["resid_post"][layer],
              out["resid_pre"][layer] + out["attn_out"][layer] + out["mlp_out"][layer])
        if layer + 1 < loaded.info.n_layers:
            assert torch.equal(out["resid_pre"][layer + 1], out["resid_post"][layer])


def test_minilm_resid_post_equals_hidden_states(minilm: LoadedModel) -> None:
    batch, out = capture(minilm, TEXTS, sites=("resid_post",))
    plain = AutoModel.from_pretrained(minilm.model.name_or_path).eval()  # no hooks, fresh copy
    with torch.no_grad():
        hidden = plain(**batch, output_hidden_states=True).hidden_states  # (n_layers + 1) x ...
    assert len(hidden) == minilm.info.n_layers + 1
    for layer in range(minilm.info.n_layers):
        close(out["resid_post"][layer], hidden[layer + 1])
    assert torch.equal(out["resid_post"][-1], hidden[-1])


# -- batched (right padding) == unbatched --------------------------------------------------------


@pytest.mark.parametrize("fixture", ["eager_gpt2", "eager_llama", "eager_minilm"])
def test_batched_equals_unbatched(fixture: str, request: pytest.FixtureRequest) -> None:
    loaded: LoadedModel = request.getfixturevalue(fixture)
    batch, full = capture(loaded, TEXTS)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) > 2 and 0 in batch["attention_mask"]  # padding is exercised
    for i, text in enumerate(TEXTS):
        one, single = capture(loaded, [text])
        n = one["input_ids"].shape[1]
        assert n == lengths[i] and torch.equal(batch["input_ids"][i, :n], one["input_ids"][0])
        for site in SITES:
            for layer in range(loaded.info.n_layers):
                expected = single[site][layer][0]                         # (n, width)
                # Not the attention: float32 GEMMs round differently with the number of rows
                # (MiniLM's query Linear on the same 7 rows alone vs inside 60 rows: 1.3e-5
                # apart; eager attention gives the same differences). So the tolerance is 1e-5
                # times the site's largest magnitude when that exceeds 1 (MiniLM mlp_out ~190).
                scale = max(1.0, expected.abs().max().item())
                close(full[site][layer][i, :n], expected, atol=1e-5 * scale)


def test_left_padding_without_position_ids_corrupts_gpt2(tiny_gpt2: LoadedModel) -> None:
    """The pitfall right padding avoids; also shows the comparison above can fail."""
    tok, model = tiny_gpt2.tokenizer, tiny_gpt2.model
    left = tok(TEXTS[:2], padding=True, padding_side="left", return_tensors="pt")
    _, single = capture(tiny_gpt2, [TEXTS[1]], sites=("resid_post",))
    with torch.no_grad(), SiteCapture(model, tiny_gpt2.adapter, sites=("resid_post",)) as cap:
        model(**left)
        padded = cap.pop()["resid_post"][-1][1, -single["resid_post"][-1].shape[1]:]
    assert (padded - single["resid_post"][-1][0]).abs().max() > 1e-3


# -- selectors, layers, hook hygiene -----------------------------------------------------------


def test_selector_keeps_only_selected_rows(eager_gpt2: LoadedModel) -> None:
    tiny_gpt2 = eager_gpt2
    batch, full = capture(tiny_gpt2, TEXTS)
    mask = batch["attention_mask"]
    _, last = capture(tiny_gpt2, TEXTS, select=select_last(mask))
    _, tokens = capture(tiny_gpt2, TEXTS, select=select_tokens(mask))
    positions = mask.sum(1) - 1
    widths = tiny_gpt2.adapter.site_widths(tiny_gpt2.model.config, n_keys=N_KEYS)
    for site in SITES:
        for layer in range(tiny_gpt2.info.n_layers):
            assert last[site][layer].shape == (len(TEXTS), widths[site])
            assert torch.equal(last[site][layer], full[site][layer][torch.arange(4), positions])
            assert torch.equal(tokens[site][layer], full[site][layer][mask.bool()])


def test_fused_subset_and_views_are_compact(tiny_gpt2: LoadedModel) -> None:
    batch, full = capture(tiny_gpt2, TEXTS, sites=("q", "k", "v"))
    _, only_k = capture(tiny_gpt2, TEXTS, sites=("k",), select=lambda a: a[:, -1])
    assert list(only_k) == ["k"]
    k = only_k["k"][0]                                                    # (batch, 64)
    assert torch.equal(k, full["k"][0][:, -1])
    assert k.untyped_storage().nbytes() == k.numel() * k.element_size()  # nothing else pinned


def test_layer_subset_and_negative_indices(tiny_llama: LoadedModel) -> None:
    _, full = capture(tiny_llama, TEXTS, sites=("v", "mlp_out"))
    _, part = capture(tiny_llama, TEXTS, sites=("v", "mlp_out"), layers=[1, -1])
    for site in ("v", "mlp_out"):
        assert len(part[site]) == 2
        assert torch.equal(part[site][0], full[site][1])
        assert torch.equal(part[site][1], full[site][3])


def test_two_passes_before_pop_are_concatenated(tiny_gpt2: LoadedModel) -> None:
    model, adapter = tiny_gpt2.model, tiny_gpt2.adapter
    a = forward_inputs(tiny_gpt2.tokenizer, TEXTS[:2])
    b = forward_inputs(tiny_gpt2.tokenizer, TEXTS[2:])
    with torch.no_grad(), SiteCapture(model, adapter, sites=("attn_out",)) as cap:
        cap.select = select_last(a["attention_mask"])
        model(**a)
        cap.select = select_last(b["attention_mask"])
        model(**b)
        both = cap.pop()["attn_out"][2]
        with pytest.raises(RuntimeError, match="no activations"):
            cap.pop()
    mask = forward_inputs(tiny_gpt2.tokenizer, TEXTS)["attention_mask"]
    _, one = capture(tiny_gpt2, TEXTS, sites=("attn_out",), select=select_last(mask))
    close(both, one["attn_out"][2])


def _n_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_only_needed_hooks_and_all_removed_after_an_error(eager_gpt2: LoadedModel) -> None:
    model, adapter = eager_gpt2.model, eager_gpt2.adapter
    before = _n_hooks(model)
    with SiteCapture(model, adapter, sites=("q", "k", "v")):
        assert _n_hooks(model) == before + 4  # one fused c_attn hook per layer
    with SiteCapture(model, adapter, sites=SITES, layers=[0]):
        # c_attn, attn c_proj, mlp c_proj's output (mlp_out) and input (mlp_post), attn (pattern),
        # block pre + post
        assert _n_hooks(model) == before + 7
    assert _n_hooks(model) == before
    with pytest.raises(ZeroDivisionError):
        with SiteCapture(model, adapter, sites=SITES):
            1 / 0
    assert _n_hooks(model) == before


@pytest.mark.parametrize("kwargs", [{"sites": ("q", "nope")}, {"sites": ()},
                                    {"layers": [4]}, {"layers": [0, -4]}])
def test_bad_sites_or_layers(tiny_gpt2: LoadedModel, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SiteCapture(tiny_gpt2.model, tiny_gpt2.adapter, **kwargs)


def test_select_rows() -> None:
    act = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)                      # (batch, seq, width)
    rows = select_rows(torch.tensor([1, 0]), torch.tensor([2, 0]))(act)
    assert torch.equal(rows, torch.stack([act[1, 2], act[0, 0]]))


def test_select_rows_of_a_whole_unpadded_batch_is_a_view() -> None:
    act = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)                      # (batch, seq, width)
    every = select_rows(torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1, 2, 0, 1, 2]))
    rows = every(act)
    assert torch.equal(rows, act.reshape(6, 4)) and rows.data_ptr() == act.data_ptr()  # no copy
    assert torch.equal(every(torch.zeros(3, 2, 4)), torch.zeros(6, 4))    # other shapes: gathered
    swapped = select_rows(torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 2, 1, 0, 1, 2]))(act)
    assert torch.equal(swapped, act.reshape(6, 4)[[0, 2, 1, 3, 4, 5]])
    partial = select_rows(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 0]))(act)
    assert torch.equal(partial, act.reshape(6, 4)[[0, 1, 3]])


def test_unpadded_batch_capture_equals_copying_selection(eager_gpt2: LoadedModel) -> None:
    tiny_gpt2 = eager_gpt2
    texts = ["The next word is sun", "The next word is orange"]         # same length: no padding
    batch = forward_inputs(tiny_gpt2.tokenizer, texts)
    assert bool(batch["attention_mask"].all())
    _, viewed = capture(tiny_gpt2, texts, select=select_tokens(batch["attention_mask"]))
    _, full = capture(tiny_gpt2, texts)
    for site in SITES:
        for layer in range(tiny_gpt2.info.n_layers):
            assert torch.equal(viewed[site][layer], full[site][layer].flatten(0, 1))


@pytest.mark.parametrize("sites", [SITES, ("k", "mlp_out")])
def test_reuse_buffers_equals_keeping_outputs(eager_gpt2: LoadedModel, sites) -> None:
    tiny_gpt2 = eager_gpt2
    model, adapter = tiny_gpt2.model, tiny_gpt2.adapter
    a = forward_inputs(tiny_gpt2.tokenizer, TEXTS[:2])
    b = forward_inputs(tiny_gpt2.tokenizer, TEXTS[2:])      # more tokens than `a`

    def check(passes) -> None:
        for batch in passes:
            plain.select = reused.select = select_tokens(batch["attention_mask"])
            model(**batch)
        expected, got = plain.pop(), reused.pop()
        for site in sites:
            for layer in range(tiny_gpt2.info.n_layers):
                assert torch.equal(got[site][layer], expected[site][layer])

    with torch.inference_mode(), SiteCapture(model, adapter, sites=sites, n_keys=N_KEYS) as plain, \
            SiteCapture(model, adapter, sites=sites, reuse_buffers=True, n_keys=N_KEYS) as reused:
        check([a])
        check([b])                                            # grows the buffers
        check([a, b])                                         # two passes: concatenated (grows)
        storage = {site: reused._buffers[site].data_ptr() for site in sites}
        check([a])                                            # fits: the same buffers, reused
        check([b])
        assert {site: reused._buffers[site].data_ptr() for site in sites} == storage
        with pytest.raises(RuntimeError, match="no activations"):
            reused.pop()


def test_reuse_buffers_needs_row_selection(tiny_gpt2: LoadedModel) -> None:
    batch = forward_inputs(tiny_gpt2.tokenizer, TEXTS[:1])
    with torch.inference_mode(), SiteCapture(tiny_gpt2.model, tiny_gpt2.adapter, sites=("mlp_out",),
                                             reuse_buffers=True):
        with pytest.raises(ValueError, match="selector"):
            tiny_gpt2.model(**batch)


# -- the extraction loads eager attention only for pattern ---------------------------------------


class _Loaded(Exception):
    """Stops an extraction once its model is loaded."""


@pytest.mark.parametrize("experiment,implementation", [("adjustments", "sdpa"), ("attention", "eager")])
def test_only_an_extraction_of_pattern_loads_eager_attention(tmp_path, models_dir, monkeypatch, experiment,
                                                            implementation) -> None:
    """`adjustments` stores attn_out, mlp_out, resid_*: the fast kernel; `attention` reads
    `pattern`: eager."""
    from laminae.config import load_runs
    from laminae.registry import discover
    from laminae.stages import extract as extract_module

    seen: list[str] = []

    def spy(*args, **kwargs):
        seen.append(load_model(*args, **kwargs).model.config._attn_implementation)
        raise _Loaded

    monkeypatch.setattr(extract_module, "load_model", spy)
    (run,) = load_runs(["model=tiny-gpt2", f"experiments=[{experiment}]", f"models_dir={models_dir}", "device=cpu"],
                       project_root=PROJECT_ROOT)
    stage = run.stages["corpus.extract"]
    with pytest.raises(_Loaded):
        extract_module.extract({"stage": stage.name, "hash": stage.hash, "config": stage.config}, run.runtime,
                               tmp_path / "activations", PROJECT_ROOT, discover())
    assert seen == [implementation]
