"""Crash recovery: an extraction killed with SIGKILL while it streams its store, then rerun, gives
exactly the outputs of an uninterrupted run, and leaves no temporary folder behind.

Two ways to die, two behaviours (both tested):

- the job's process alone is killed (the kernel's OOM killer, `kill -9 <job pid>`): Snakemake
  sees the job fail, removes its declared outputs, releases its lock and exits 1. The writer's
  hidden `.activations.tmp-<pid>` folder stays (SIGKILL runs no cleanup) until the next writer
  of that folder finds the PID dead and removes it. A plain rerun completes.
- the whole run dies (node crash, power loss, `kill -9` of the session's process group):
  Snakemake's lock stays in `.snakemake/locks`, so a rerun stops with a LockException that
  says to run `snakemake --unlock`; after that a plain rerun completes.

The final `activations/` folder never exists half-written: it appears by one rename, when every
row is in.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from laminae.config import load_runs
from workflow_helpers import PROJECT_ROOT, SNAKEMAKE, snakemake, snakemake_env

pytestmark = pytest.mark.slow

# ~1000 windows of 12 tokens, one per forward pass: extraction takes seconds, the store ~25 MB
SETTINGS = ["model=tiny-gpt2", "experiments=[adjustments]", "corpus.window_tokens=12", "batch_size=1",
            "extract.storage_dtype=float16"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~12,000 GPT-2 tokens of words drawn from the seed corpus (deterministic)."""
    words = (PROJECT_ROOT / "data/corpora/nietzsche.txt").read_text(encoding="utf-8").split()
    rng = random.Random(0)
    drawn = [rng.choice(words) for _ in range(9000)]
    path = tmp_path_factory.mktemp("corpus") / "long.txt"
    path.write_text("\n".join(" ".join(drawn[i : i + 15]) for i in range(0, len(drawn), 15)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def overrides(corpus, built_models) -> list[str]:
    return [*SETTINGS, f"corpus.path={corpus}", built_models]  # the corpus path enters the hash: every run uses this one


@pytest.fixture(scope="module")
def stages(overrides):
    (run,) = load_runs(overrides, project_root=PROJECT_ROOT)
    return run.stages


@pytest.fixture(scope="module")
def target(stages) -> str:
    """The metrics table: the run stops there (figures add nothing to what is tested here)."""
    return str(stages["adjustments.analysis"].output_dir / "adjustments.tsv")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, overrides, target) -> Path:
    """An uninterrupted run."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    snakemake(workdir, overrides, "--cores", "1", target)
    return workdir


def start_and_kill(workdir: Path, overrides: list[str], target: str, activations: Path, whole_run: bool):
    """Start `snakemake --cores 1` in its own session; once the extraction job is streaming into
    its hidden folder, SIGKILL the job's process (or, `whole_run`, the session's whole process
    group). Returns (snakemake's exit status, its output, the killed job's pid, the hidden folder)."""
    command = [SNAKEMAKE, "-s", str(PROJECT_ROOT / "Snakefile"), "-d", str(workdir), "--cores", "1", target,
               "--config", f"overrides={json.dumps(overrides)}"]
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir.parent / f"{workdir.name}.out"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=snakemake_env())
    try:
        deadline = time.monotonic() + 600
        while not (hidden := sorted(activations.parent.glob(".activations.tmp-*"))):
            assert process.poll() is None, f"snakemake ended before extraction started:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "extraction did not start within 10 minutes"
            time.sleep(0.05)
        job_pid = int(hidden[0].name.rsplit("-", 1)[1])  # the writer names its folder by its pid
        assert str(workdir) in Path(f"/proc/{job_pid}/cmdline").read_text(), "not this run's extraction job"
        time.sleep(1.0)  # let it write part of the store
        assert not activations.exists(), "extraction finished before it could be killed: lengthen the corpus"
        assert {p.name for p in hidden[0].glob("layer_*.h5")}, "the writer has not created its layer files"
        if whole_run:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            os.kill(job_pid, signal.SIGKILL)
        returncode = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return returncode, log.read_text(), job_pid, hidden[0]


def wait_until_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def assert_same_outputs(first: Path, second: Path, stages) -> None:
    """Every HDF5 dataset and attribute, rows.tsv and config.yaml of the store, and the metrics."""
    extract = stages["corpus.extract"].output_dir
    names = sorted(p.name for p in (first / extract).iterdir())
    assert names == sorted(p.name for p in (second / extract).iterdir())
    assert [n for n in names if n.startswith("layer_")] == [f"layer_{i:02d}.h5" for i in range(4)]
    for name in names:
        if name.endswith(".h5"):
            assert_same_hdf5(first / extract / name, second / extract / name)
        elif not name.startswith(".snakemake"):
            assert (first / extract / name).read_bytes() == (second / extract / name).read_bytes(), name
    metrics = stages["adjustments.analysis"].output_dir
    for name in ("adjustments.tsv", "config.yaml"):
        assert (first / metrics / name).read_bytes() == (second / metrics / name).read_bytes(), name
    assert_same_hdf5(first / metrics / "adjustment_cosine.h5", second / metrics / "adjustment_cosine.h5")


def assert_same_hdf5(a_path: Path, b_path: Path) -> None:
    with h5py.File(a_path) as a, h5py.File(b_path) as b:
        assert sorted(a) == sorted(b), a_path.name
        assert len(a) > 0
        for name in a:
            values_a, values_b = a[name][()], b[name][()]
            assert values_a.dtype == values_b.dtype and values_a.shape == values_b.shape, (a_path.name, name)
            assert np.array_equal(values_a, values_b, equal_nan=values_a.dtype.kind in "fc"), (a_path.name, name)
        assert_same_attrs(dict(a.attrs), dict(b.attrs), a_path.name)


def assert_same_attrs(a: dict, b: dict, what: str) -> None:
    assert sorted(a) == sorted(b), what
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), (what, key)
        else:
            assert a[key] == b[key], (what, key)


def leftovers(workdir: Path) -> list[str]:
    return sorted(str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*") if ".tmp" in p.name)


def test_job_killed_midway_then_rerun_equals_an_uninterrupted_run(reference, overrides, target, stages, tmp_path):
    """The OOM-killer case: only the job's process dies."""
    workdir = tmp_path / "work"
    activations = workdir / stages["corpus.extract"].output_dir
    returncode, output, job_pid, hidden = start_and_kill(workdir, overrides, target, activations, whole_run=False)

    assert returncode == 1, output[-3000:]
    assert "SIGKILL" in output and "Error in rule extract" in output, output[-3000:]
    assert not activations.exists()                   # nothing under the final name
    assert hidden.is_dir()                            # SIGKILL runs no cleanup: the hidden folder stays
    locks = workdir / ".snakemake" / "locks"
    assert not locks.exists() or not any(locks.iterdir())  # Snakemake itself exited cleanly

    wait_until_gone(job_pid)
    snakemake(workdir, overrides, "--cores", "1", target)  # a plain rerun, no --unlock needed
    assert leftovers(workdir) == []
    assert_same_outputs(reference, workdir, stages)


def test_whole_run_killed_midway_needs_unlock_then_rerun_equals_an_uninterrupted_run(
        reference, overrides, target, stages, tmp_path):
    """The node-crash case: Snakemake dies with its job and cannot release its lock."""
    workdir = tmp_path / "work"
    activations = workdir / stages["corpus.extract"].output_dir
    returncode, output, job_pid, hidden = start_and_kill(workdir, overrides, target, activations, whole_run=True)

    assert returncode == -signal.SIGKILL
    assert not activations.exists() and hidden.is_dir()
    wait_until_gone(job_pid)

    locked = snakemake(workdir, overrides, "--cores", "1", target, check=False)
    assert locked.returncode != 0
    assert "LockException" in locked.stderr and "--unlock" in locked.stderr, locked.stderr[-3000:]
    assert "Traceback" not in locked.stdout + locked.stderr

    snakemake(workdir, overrides, "--unlock")
    snakemake(workdir, overrides, "--cores", "1", target)
    assert leftovers(workdir) == []
    assert_same_outputs(reference, workdir, stages)
