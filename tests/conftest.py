"""Shared fixtures: model configs from conf/model/*.yaml and loaded models, built once per test
session in a temporary models_dir (the random models are built there on first use); random models
prebuilt for end-to-end runs (`built_models`); Snakemake runs shared by test files (`shared_run`)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import yaml

from laminae.models.loading import LoadedModel, load_model

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_CONF = PROJECT_ROOT / "conf" / "model"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (make test, make check), each worker gets its share of the cores for
    torch's threads: n workers each running torch with every core's threads would oversubscribe
    the CPU (Snakemake's jobs are subprocesses and set their own threads)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long files first: the SLURM module (mostly waiting on its cluster), then every file with a
    test marked slow or smoke, then the rest, each file's tests in their own order. Under
    pytest-xdist (--dist loadfile --no-loadscope-reorder, as make test and make check run it)
    the workers start on the long files and the many short unit tests fill in behind them,
    rather than one worker finishing a long file alone at the end."""
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("slurm"):
            return 0
        return 1 if item.get_closest_marker("slow") or item.get_closest_marker("smoke") else 2

    ranks: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        ranks[path] = min(ranks.get(path, 2), rank(item))
    items.sort(key=lambda item: ranks[item.nodeid.split("::", 1)[0]])


def read_model_cfg(name: str) -> dict[str, Any]:
    """The model config dict of conf/model/<name>.yaml."""
    return yaml.safe_load((MODEL_CONF / f"{name}.yaml").read_text())


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide folder for random models (built on first use)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The override `models_dir=<folder>`, with tiny-gpt2 and tiny-llama built in that folder
    (once per worker, in this process): an end-to-end run given it finds its random model and
    schedules no `random_model` job. Tests of that rule (test_pipeline.py, test_sweep.py) and of
    what lies under a run's own models/ run without it."""
    from laminae.models.locate import locate_model

    folder = tmp_path_factory.mktemp("built-models")
    for name in ("tiny-gpt2", "tiny-llama"):
        locate_model(read_model_cfg(name), folder, PROJECT_ROOT)
    return f"models_dir={folder}"


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Sequence[str], Path], Path]:
    """`shared_run(overrides, into)` -> `into`: a private copy (timestamps kept, so Snakemake sees
    it up to date) of one `snakemake --cores 2` run of `overrides` in a fresh folder. The run is
    made once per pytest session, by whichever pytest-xdist worker asks first; a worker asking
    meanwhile waits on its file lock, then copies it. For files whose module fixtures run the same
    config (test_cli.py and test_bad_inputs.py: TINY_QKV_RUN). Not used by test_pipeline.py, whose
    second run is compared bit for bit with its first, made in the same module."""
    from workflow_helpers import snakemake

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent   # the pytest run's temporary folder, above each worker's own

    def copy_of_run(overrides: Sequence[str], into: Path) -> Path:
        name = "shared-run-" + hashlib.sha256(json.dumps(list(overrides)).encode()).hexdigest()[:12]
        source, done = root / name, root / f"{name}.done"
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.is_file():
                shutil.rmtree(source, ignore_errors=True)   # a failed attempt's
                snakemake(source, overrides, "--cores", "2")
                done.touch()
        return Path(shutil.copytree(source, into, symlinks=True))

    return copy_of_run


def _load(name: str, models_dir: Path) -> LoadedModel:
    return load_model(read_model_cfg(name), device="cpu", models_dir=models_dir,
                      project_root=PROJECT_ROOT)


@pytest.fixture(scope="session")
def tiny_gpt2(models_dir: Path) -> LoadedModel:
    """conf/model/tiny-gpt2.yaml: random 4-layer GPT-2, d_model 64, GPT-2 tokenizer (float32)."""
    return _load("tiny-gpt2", models_dir)


@pytest.fixture(scope="session")
def tiny_llama(models_dir: Path) -> LoadedModel:
    """conf/model/tiny-llama.yaml: random 4-layer Llama, d_model 64, 4 heads, 2 KV heads."""
    return _load("tiny-llama", models_dir)


@pytest.fixture(scope="session")
def minilm(models_dir: Path) -> LoadedModel:
    """conf/model/minilm-l6.yaml: real all-MiniLM-L6-v2 weights (BERT, 6 layers, d_model 384)."""
    return _load("minilm-l6", models_dir)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    """name -> folder of the tiny random checkpoint `name` of tests/tiny_families.py (every
    family laminae has an adapter for), built on first use, once per session."""
    from tiny_families import build_tiny

    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_tiny(name, root / name)
        return built[name]

    return get
