"""Fidelity of an extraction (laminae.capture.fidelity): in every family, the last block's captured
output through the family's final modules equals the model's own output, each block's output the
next block's input, and the residual sum holds where the family's blocks add; bfloat16 runs are
compared with float32 and the model left as it was; the checks ride on the extraction's first
forward pass (no pass of their own); a misplaced hook stops the extraction in one line with
nothing written; fidelity.tsv and the provenance attributes record every check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import pytest
import torch

from laminae.capture.fidelity import FIDELITY_SEQUENCES, FIDELITY_TOKENS, FidelityError, checked_rows, measure_fidelity
from laminae.inputs import ExtractionPlan
from laminae.models.loading import load_model
from laminae.stages.extract import write_extraction
from laminae.store import FIDELITY_FILE, read_tsv

from tiny_families import CONFIGS

SEQUENCES = [[11, 12, 13, 14, 15, 16], [21, 22, 23], [31, 32, 33, 34, 35], [41]]
ROOT = Path(__file__).resolve().parents[1]


def load_tiny_config(folder: Path, dtype: str = "float32") -> dict:
    return {"name": folder.name, "pretrained": str(folder), "revision": None, "dtype": dtype, "family": "auto",
            "random_init": None, "n_layers": None, "d_model": None, "n_params": None, "device_map": None, "gpus": 1}


def load_tiny(folder: Path, models_dir: Path, dtype: str = "float32"):
    return load_model(load_tiny_config(folder, dtype), "cpu", models_dir, ROOT)


def hooks_left(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def by_check(checks) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for check in checks:
        grouped.setdefault(check.check, []).append(check)
    return grouped


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_family_captures_what_the_model_computes(name, tiny_dir, models_dir):
    loaded = load_tiny(tiny_dir(name), models_dir)
    checks = by_check(measure_fidelity(loaded, SEQUENCES))
    assert hooks_left(loaded.model) == 0
    n_layers = len(loaded.adapter.blocks(loaded.model))
    assert len(checks["chain"]) == n_layers - 1 and len(checks["final_output"]) == 1
    assert all(c.passed and c.max_rel_error < 1e-6 for c in checks["chain"] + checks["final_output"])
    if loaded.adapter.residual_sum_holds(loaded.model.config):
        assert len(checks["residual_sum"]) == n_layers and all(c.passed for c in checks["residual_sum"])
    else:   # OPT-350m's post-LayerNorm blocks: no residual sum to check
        assert "residual_sum" not in checks
    assert "float32" not in checks


@pytest.mark.parametrize("name", ["gpt_neox", "gemma2", "falcon_new"])
def test_bfloat16_is_compared_with_float32_and_the_model_left_as_it_was(name, tiny_dir, models_dir):
    from transformers import AutoModelForCausalLM

    from laminae.models.readout import ModelSource

    loaded = load_tiny(tiny_dir(name), models_dir, dtype="bfloat16")
    before = {key: value.clone() for key, value in loaded.model.state_dict().items()}
    source = ModelSource(load_tiny_config(tiny_dir(name)), models_dir=str(models_dir), project_root=ROOT)
    checks = by_check(measure_fidelity(loaded, SEQUENCES, readout=source.readout))
    # top-1 of the first input's tokens: the plain causal LM in bfloat16 against float32
    ids = torch.tensor([SEQUENCES[0]])
    tops = [AutoModelForCausalLM.from_pretrained(tiny_dir(name), dtype=dtype).eval()(ids).logits[0].argmax(-1)
            for dtype in (torch.bfloat16, torch.float32)]
    (top1,) = checks["float32_top1"]
    assert top1.max_rel_error == pytest.approx(float((tops[0] != tops[1]).float().mean())) and not top1.must_hold
    after = loaded.model.state_dict()
    assert all(after[key].dtype == torch.bfloat16 and torch.equal(after[key], value) for key, value in before.items())
    n_layers = len(loaded.adapter.blocks(loaded.model))
    assert len(checks["float32"]) == 4 * n_layers and not any(c.must_hold for c in checks["float32"])
    # bfloat16 is not float32: the differences are there, and of bfloat16's size
    assert 1e-4 < max(c.max_rel_error for c in checks["float32"]) < 0.1
    assert all(c.passed for c in checks["chain"] + checks["final_output"] + checks["residual_sum"])


def test_without_room_for_float32_weights_the_comparison_is_left_out_and_said(tiny_dir, models_dir, monkeypatch):
    """A 16-bit model that fills most of its device: casting it to float32 would fail the
    extraction at its end. The comparison is left out, said, and the model left as it was; the
    checks that must hold still run."""
    import accelerate.utils

    from laminae.capture.fidelity import FirstBatchCheck, fidelity_attrs, float32_room
    from laminae.capture.forward import pad_right

    loaded = load_tiny(tiny_dir("gpt_neox"), models_dir, dtype="bfloat16")
    extra = sum(p.numel() * 2 for p in loaded.model.parameters())    # 2 more bytes per bfloat16 weight
    assert float32_room(loaded.model) is None
    monkeypatch.setattr(accelerate.utils, "get_max_memory", lambda: {"cpu": extra})   # no room for the margin
    assert "needs" in float32_room(loaded.model) and "GiB free" in float32_room(loaded.model)
    before = {key: value.clone() for key, value in loaded.model.state_dict().items()}
    check = FirstBatchCheck(loaded)
    input_ids, attention_mask = pad_right(SEQUENCES, loaded.tokenizer.pad_token_id, "cpu")
    with torch.inference_mode():
        check.forward(SEQUENCES, input_ids, attention_mask)
    check.finish()
    checks = by_check(check.checks)
    assert "float32" not in checks and checks["chain"] and all(c.passed for c in checks["chain"])
    assert check.left_out.startswith("the float32 comparison: casting the weights to float32 needs")
    assert fidelity_attrs(check.checks, check.left_out)["fidelity_left_out"] == check.left_out
    after = loaded.model.state_dict()
    assert all(after[key].dtype == torch.bfloat16 and torch.equal(after[key], value) for key, value in before.items())


def test_the_checks_ride_on_the_first_batch(tiny_gpt2, tmp_path):
    """No forward pass of their own: an extraction of 9 inputs in batches of 4 runs the model 3
    times; the checked rows are the first inputs' first tokens."""
    long = [list(range(10 + i, 10 + i + 100)) for i in range(9)]
    calls = []
    original = tiny_gpt2.model.forward
    tiny_gpt2.model.forward = lambda *args, **kwargs: calls.append(kwargs["input_ids"].shape) or original(*args, **kwargs)
    try:
        write_extraction(tiny_gpt2, plan_of(long), record(), {"batch_size": 4, "compression": None},
                         tmp_path / "activations", {})
    finally:
        del tiny_gpt2.model.forward
    assert calls == [(4, 100), (4, 100), (1, 100)]
    batch, positions = checked_rows(long[:4])
    assert list(zip(batch, positions)) == [(b, p) for b in range(FIDELITY_SEQUENCES) for p in range(FIDELITY_TOKENS)]
    rows = read_tsv(tmp_path / "activations" / FIDELITY_FILE)
    assert {row["check"] for row in rows} == {"final_output", "chain", "residual_sum"}


def plan_of(sequences) -> ExtractionPlan:
    keep = [[len(s) - 1] for s in sequences]
    return ExtractionPlan(sequences=sequences, keep=keep, average=False, rows=[{"i": i} for i in range(len(keep))],
                          columns=("i",))


def record(sites=("q", "resid_post")) -> dict:
    config = {"inputs": "stimuli", "model": {"name": "tiny"}, "sites": list(sites), "reductions": {},
              "extract": {"storage_dtype": "float32"}, "upstream": None}
    return {"stage": "stimuli.extract", "hash": "f1de117000", "config": config}


def test_the_store_records_every_check(tiny_llama, tmp_path):
    out = tmp_path / "activations"
    write_extraction(tiny_llama, plan_of(SEQUENCES), record(), {"batch_size": 2, "compression": None}, out, {})
    rows = read_tsv(out / FIDELITY_FILE)
    n_layers = len(tiny_llama.adapter.blocks(tiny_llama.model))
    assert len(rows) == (n_layers - 1) + 1 + n_layers
    assert {row["check"] for row in rows} == {"chain", "final_output", "residual_sum"}
    assert all(row["passed"] == "True" for row in rows)
    with h5py.File(out / "layer_00.h5") as handle:
        assert bool(handle.attrs["fidelity_passed"])
        assert float(handle.attrs["fidelity_residual_sum_max_rel_error"]) == max(
            float(row["max_rel_error"]) for row in rows if row["check"] == "residual_sum")
    from laminae.stages.fidelity import draw_fidelity

    draw_fidelity(out, tmp_path / "fidelity.png", "tiny-llama, stimuli")   # rule fidelity_figure
    assert (tmp_path / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "fidelity.pdf").is_file()


def test_the_report_caption_renders_to_valid_restructuredtext():
    from types import SimpleNamespace

    import docutils.core
    import docutils.utils
    import jinja2

    wildcards = SimpleNamespace(xh="f1de117000", model="tiny-gpt2", label="nietzsche")
    text = jinja2.Template((ROOT / "workflow" / "report" / "fidelity.rst").read_text()).render(
        snakemake=SimpleNamespace(wildcards=wildcards))
    assert "f1de117000" in text and "nietzsche" in text
    docutils.core.publish_doctree(text, settings_overrides={"halt_level": docutils.utils.Reporter.WARNING_LEVEL,
                                                            "report_level": 5})


def test_a_misplaced_hook_stops_the_extraction_with_nothing_written(tiny_llama, tmp_path):
    """mlp_out hooked where attn_out is: each site still has the right shape and plausible values,
    but the block's sum no longer holds."""
    wrong = dataclasses.replace(tiny_llama.adapter, mlp_out=tiny_llama.adapter.attn_out)
    loaded = dataclasses.replace(tiny_llama, adapter=wrong)
    out = tmp_path / "activations"
    with pytest.raises(FidelityError, match=r"resid_post of layer 0 differs from resid_pre \+ attn_out \+ mlp_out"):
        write_extraction(loaded, plan_of(SEQUENCES), record(), {"batch_size": 2, "compression": None}, out, {})
    assert not out.exists() and not list(tmp_path.iterdir())
    no_norm = dataclasses.replace(tiny_llama, adapter=dataclasses.replace(tiny_llama.adapter, final_modules=()))
    with pytest.raises(FidelityError, match="final_output"):
        write_extraction(no_norm, plan_of(SEQUENCES), record(), {"batch_size": 2, "compression": None}, out, {})
