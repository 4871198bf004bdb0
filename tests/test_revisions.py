"""Training checkpoints as a sweep axis: `sweep=["model.revision=step1000,step8000,step143000"]`
with a Pythia preset runs every checkpoint as its own cached run in one DAG.

Offline: the test builds a Hugging Face cache (`$HF_HOME/hub/models--<org>--<name>/`) holding
three revisions of a tiny random Pythia (a different seed each, so different weights), one
`snapshots/<commit>/` folder per revision and `refs/<revision>` naming its commit, exactly as the
hub client leaves it after `hf download --revision stepN`; the real loading code finds each
revision through the refs, with `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from tiny_families import build_tiny
from workflow_helpers import scheduled_rules, snakemake

REPO = "laminae-test/tiny-pythia"
REVISIONS = {"step1000": 1, "step8000": 2, "step143000": 3}   # revision -> seed of its weights
SWEEP = ["model.revision=" + ",".join(REVISIONS)]
OVERRIDES = ["model=pythia-70m", f"model.pretrained={REPO}", "experiments=[adjustments]", "device=cpu"]


def commit_of(revision: str) -> str:
    return hashlib.sha1(revision.encode()).hexdigest()


def build_hub_cache(home: Path) -> Path:
    """`home/hub/models--laminae-test--tiny-pythia` with a snapshot and a ref per revision
    (and `main` -> the last one, as on the hub)."""
    repo = home / "hub" / ("models--" + REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    for revision, seed in REVISIONS.items():
        build_tiny("gpt_neox", repo / "snapshots" / commit_of(revision), seed=seed)
        (repo / "refs" / revision).write_text(commit_of(revision))
    (repo / "refs" / "main").write_text(commit_of("step143000"))
    return repo


@pytest.mark.slow
def test_revision_sweep_is_one_dag_of_cached_runs(tmp_path: Path) -> None:
    home = tmp_path / "hf-home"
    build_hub_cache(home)
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    snakemake(tmp_path, OVERRIDES, "--cores", "2", sweep=SWEEP, env=env)

    # one extraction per revision, under the checkpoint's own name (the preset points elsewhere)
    extractions = sorted((tmp_path / "results" / "laminae-test--tiny-pythia" / "corpus").glob("*/activations"))
    assert len(extractions) == 3
    stored = {}
    for folder in extractions:
        with h5py.File(folder / "layer_01.h5") as layer:
            revision = {commit_of(r): r for r in REVISIONS}[layer.attrs["model_revision"]]
            assert layer.attrs["model_id"] == REPO and layer.attrs["family"] == "gpt_neox"
            assert layer.attrs["n_layers"] == 2  # the preset's 6 layers describe EleutherAI's checkpoint only
            stored[revision] = layer["resid_post"][()]
    assert set(stored) == set(REVISIONS)
    assert not np.allclose(stored["step1000"], stored["step143000"])   # each revision's own weights

    # the comparison lists every revision's metrics, labelled by it, and draws the headline
    # metric across training: the heatmap's rows are the checkpoints in step order
    (sweep,) = (tmp_path / "results" / "sweeps").glob("adjustments-*")
    record = yaml.safe_load((sweep / "sweep.yaml").read_text())
    assert [run["label"] for run in record["runs"]] == [f"model.revision={r}" for r in REVISIONS]
    assert all((tmp_path / run["metrics"] / "adjustments.tsv").is_file() for run in record["runs"])
    assert (sweep / "compare_adjustments.png").stat().st_size > 0
    assert (sweep / "training_adjustments.png").stat().st_size > 0 and (sweep / "training_adjustments.pdf").is_file()

    # cached: another revision is one more extraction (and analysis); the three done are reused
    repo = home / "hub" / ("models--" + REPO.replace("/", "--"))
    build_tiny("gpt_neox", repo / "snapshots" / commit_of("step2000"), seed=4)
    (repo / "refs" / "step2000").write_text(commit_of("step2000"))
    more = ["model.revision=step1000,step2000,step8000,step143000"]
    dry = scheduled_rules(snakemake(tmp_path, OVERRIDES, "-n", sweep=more, env=env))
    assert {rule: dry[rule] for rule in ("extract", "adjustments_analysis", "adjustments_figures",
                                         "adjustments_training")} == {
        "extract": 1, "adjustments_analysis": 1, "adjustments_figures": 1, "adjustments_training": 1}


def test_a_missing_revision_fails_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "hf-home"
    build_hub_cache(home)
    result = snakemake(tmp_path, OVERRIDES, "--cores", "1", sweep=["model.revision=step1000,step9"], check=False,
                       env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("laminae:")]
    assert result.returncode != 0 and len(lines) == 1
    assert "model.pretrained" in lines[0] and "'step9'" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()   # the preflight stops it before any job
