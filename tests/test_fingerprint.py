"""The weights' fingerprint (laminae.models.fingerprint) and what the workflow does with it: a
checkpoint's files hashed (checked against hashlib over the files, computed here), remembered
per path, size and mtime; a hub revision's commit from the HF cache layout; changed weights
rerun the extraction and unchanged ones nothing; identical weights in a sweep are named; the
fingerprint is in the extraction's and the analyses' provenance."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import pytest
import yaml

from laminae.models import fingerprint as fp
from laminae.models.fingerprint import FingerprintCache, weights_fingerprint
from laminae.workflow import WorkflowPlan

ROOT = Path(__file__).resolve().parents[1]


def reference_fingerprint(folder: Path, names: list[str]) -> str:
    """sha256 over `name NUL sha256(file) LF`, names sorted: the definition, computed independently."""
    outer = hashlib.sha256()
    for name in sorted(names):
        outer.update(name.encode() + b"\0" + hashlib.sha256((folder / name).read_bytes()).hexdigest().encode() + b"\n")
    return "sha256:" + outer.hexdigest()


@pytest.fixture()
def checkpoint(tmp_path) -> Path:
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "model.safetensors").write_bytes(os.urandom(5000))
    (folder / "sub" / "tokenizer.json").write_text("{}")
    (folder / "README.md").write_text("not part of the weights")
    (folder / ".gitattributes").write_text("*.bin lfs")
    return folder


def test_a_folder_is_its_files_hashed(checkpoint, tmp_path):
    found = weights_fingerprint({"pretrained": str(checkpoint), "random_init": None}, tmp_path)
    assert found == reference_fingerprint(checkpoint, ["config.json", "model.safetensors", "sub/tokenizer.json"])
    relative = weights_fingerprint({"pretrained": "ckpt", "random_init": None}, tmp_path)   # relative to the project
    assert relative == found
    (checkpoint / "README.md").write_text("edited")      # documentation is not weights
    assert weights_fingerprint({"pretrained": str(checkpoint), "random_init": None}) == found
    (checkpoint / "model.safetensors").write_bytes(os.urandom(5000))
    assert weights_fingerprint({"pretrained": str(checkpoint), "random_init": None}) != found


def test_a_gguf_file_is_its_bytes_hashed(tmp_path):
    file = tmp_path / "m.gguf"
    file.write_bytes(os.urandom(3000))
    assert weights_fingerprint({"pretrained": str(file), "random_init": None}) == reference_fingerprint(tmp_path, ["m.gguf"])


def test_random_models_and_unreachable_hub_ids_have_none(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    assert weights_fingerprint({"random_init": {"seed": 0}}) is None
    assert weights_fingerprint({"pretrained": "org/not-cached", "revision": None, "random_init": None}) is None


def test_the_cache_hashes_a_file_once_per_size_and_mtime(checkpoint, tmp_path, monkeypatch):
    hashed = []
    original = fp.sha256_of
    monkeypatch.setattr(fp, "sha256_of", lambda path: hashed.append(Path(path).name) or original(path))
    store = tmp_path / "fingerprints.json"
    model = {"pretrained": str(checkpoint), "random_init": None}
    first = weights_fingerprint(model, cache=FingerprintCache(store))
    assert sorted(hashed) == ["config.json", "model.safetensors", "tokenizer.json"]
    hashed.clear()
    assert weights_fingerprint(model, cache=FingerprintCache(store)) == first and hashed == []   # read back from disk
    weights = checkpoint / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))     # touched, same bytes: rehashed, same value
    assert weights_fingerprint(model, cache=FingerprintCache(store)) == first and hashed == ["model.safetensors"]
    hashed.clear()
    weights.write_bytes(os.urandom(5001))                                   # changed in place
    assert weights_fingerprint(model, cache=FingerprintCache(store)) != first and hashed == ["model.safetensors"]


def test_a_hub_revision_is_the_commit_it_resolves_to(tmp_path, monkeypatch):
    """In the HF cache layout, a revision's snapshot folder is named by its commit."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--name"
    for ref, commit in (("main", "a" * 40), ("step1000", "b" * 40), ("step2000", "b" * 40)):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = {revision: weights_fingerprint({"pretrained": "org/name", "revision": revision, "random_init": None})
             for revision in (None, "step1000", "step2000")}
    assert found == {None: f"hub:org/name@{'a' * 40}", "step1000": f"hub:org/name@{'b' * 40}",
                     "step2000": f"hub:org/name@{'b' * 40}"}


def test_a_sweep_names_runs_whose_weights_are_identical(tmp_path, checkpoint):
    import shutil

    shutil.copytree(checkpoint, tmp_path / "copy")
    (tmp_path / "copy" / "README.md").write_text("another card, the same weights")
    shutil.copytree(checkpoint, tmp_path / "other")
    (tmp_path / "other" / "model.safetensors").write_bytes(os.urandom(5000))
    sweep = [f"model.pretrained={checkpoint},{tmp_path / 'copy'},{tmp_path / 'other'}"]
    plan = WorkflowPlan.from_snakemake_config({"overrides": ["model=auto", f"models_dir={tmp_path / 'models'}"],
                                               "sweep": sweep}, ROOT)
    (line,) = plan.identical_weights()
    assert f"model.pretrained={checkpoint}" in line and f"model.pretrained={tmp_path / 'copy'}" in line
    assert "other" not in line
    labels = [run["label"] for run in next(iter(plan.comparisons.values())).config["runs"]]
    assert labels == [f"model.pretrained={checkpoint}",
                      f"model.pretrained={tmp_path / 'copy'} [same weights as model.pretrained={checkpoint}]",
                      f"model.pretrained={tmp_path / 'other'}"]


@pytest.mark.slow
def test_changed_weights_rerun_the_extraction_and_are_recorded(tmp_path):
    """Through Snakemake on a tiny GPT-NeoX checkpoint folder: the fingerprint is recorded by the
    extraction and the analysis; a rerun schedules nothing; weights changed in place rerun the
    extraction (and what reads it)."""
    from tiny_families import build_tiny
    from workflow_helpers import scheduled_rules, snakemake

    folder = build_tiny("gpt_neox", tmp_path / "ckpt")
    overrides = ["model=auto", f"model.pretrained={folder}", "experiments=[qkv]", "qkv.n_permutations=0",
                 "qkv.n_bootstrap=0", "device=cpu"]
    plan = WorkflowPlan.from_snakemake_config({"overrides": overrides}, ROOT)
    (digest,) = [h for h, stage in plan.stages.items() if stage.kind == "extract"]
    expected = reference_fingerprint(folder, [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()])
    analysis = next(s for s in plan.stages.values() if s.kind == "analysis")
    work = tmp_path / "work"
    snakemake(work, overrides, "--cores", "2", str(analysis.output_dir / "qkv_laminar.tsv"))
    store = work / plan.stages[digest].output_dir
    assert yaml.safe_load((store / "config.yaml").read_text())["weights"] == expected
    with h5py.File(store / "layer_00.h5") as handle:
        assert handle.attrs["weights_fingerprint"] == expected
    with h5py.File(work / analysis.output_dir / "similarity.h5") as handle:
        assert handle.attrs["activations_weights_fingerprint"] == expected
    assert yaml.safe_load((work / analysis.output_dir / "config.yaml").read_text())["weights"] == expected
    target = str(analysis.output_dir / "qkv_laminar.tsv")
    assert scheduled_rules(snakemake(work, overrides, "-n", target)) == {}
    build_tiny("gpt_neox", folder, seed=1)         # another checkpoint at the same path
    assert scheduled_rules(snakemake(work, overrides, "-n", target)) == {"extract": 1, "qkv_analysis": 1}


def test_the_across_training_title_names_checkpoints_with_repeated_weights():
    """Pythia-style step branches serving one set of files: the figure says which step repeats which."""
    from laminae.stages.compare import training_title
    from laminae.stages.records import SAME_WEIGHTS

    runs = [{"label": "model.revision=step1000"}, {"label": "model.revision=step2000"},
            {"label": f"model.revision=step3000{SAME_WEIGHTS}model.revision=step2000]"}]
    assert training_title("RSA", runs, [1000, 2000, 3000]) == (
        "RSA across training: 3 checkpoints; step 3,000 has the weights of step 2,000 (one model, not two)")
    assert training_title("RSA", runs[:2], [1000, 2000]) == "RSA across training: 2 checkpoints"
