"""benchmarks/bench_gpu.py runs where only torch, transformers, h5py (and numpy) are installed:
a smoke run on the CPU with hydra-core, omegaconf, snakemake and jsonschema made unimportable,
which also checks the overlapped store against the serial one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

BLOCKED_RUN = """
import builtins, runpy, sys
blocked = {"hydra", "omegaconf", "snakemake", "jsonschema"}
real = builtins.__import__
def guard(name, *args, **kwargs):
    if name.split(".")[0] in blocked:
        raise ImportError(f"{name} is not installed on this machine (blocked by the test)", name=name)
    return real(name, *args, **kwargs)
builtins.__import__ = guard
sys.argv = ["bench_gpu.py", *sys.argv[1:]]
sys.path.insert(0, "benchmarks")
runpy.run_path("benchmarks/bench_gpu.py", run_name="__main__")
"""


def test_bench_gpu_smoke_run_without_hydra_or_snakemake(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, "--device", "cpu", "--shape", "tiny-gpt2", "--repeats", "1",
         "--no-peers", "--prompts", "16", "--windows", "2", "--window-tokens", "32", "--json", str(tmp_path / "r.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("overlapped vs serial store: max rel diff 0.0e+00") == 2
    assert "laminae/max(bare,writes)" in result.stdout
    assert (tmp_path / "r.json").is_file()
