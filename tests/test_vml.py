"""The guard against oneMKL's first-call VML fault (laminae.models.vml): the loaders settle the
kernel choice, and fresh processes then compute float unary ops on several threads to full
accuracy. Without the guard, about one fresh process in three computed its first VML call
(`CHILD` below) with relative errors of ~1e-4; the fault exists only on the first call of a
process, so the check needs fresh processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from laminae.models.vml import VML_OPS, settle_vml_dispatch

SRC = Path(__file__).resolve().parents[1] / "src"

#: One fresh process: settle as the loaders do, then its first VML calls on two threads (the
#: fault hits the first VML call of a process, whichever op it is) on a GPT-2 MLP's shape (48
#: tokens x 256); prints the largest relative error against float64.
CHILD = """
import sys
import numpy as np, torch
torch.set_num_threads(2)
sys.path.insert(0, sys.argv[1])
from laminae.models.vml import settle_vml_dispatch
settle_vml_dispatch()
x = np.random.default_rng(0).uniform(0.05, 0.95, (48, 256)).astype(np.float32)
errors = [np.max(np.abs(getattr(torch, name)(torch.from_numpy(x)).numpy() - exact(x.astype(np.float64))) / exact(x))
          for name, exact in (("exp", np.exp), ("tanh", np.tanh))]
print(float(max(errors)))
"""


def test_every_op_is_a_torch_function_and_settling_runs_once():
    assert all(callable(getattr(torch, name)) for name in VML_OPS)
    settle_vml_dispatch.cache_clear()
    settle_vml_dispatch()
    settle_vml_dispatch()
    assert settle_vml_dispatch.cache_info().currsize == 1 and settle_vml_dispatch.cache_info().hits == 1


@pytest.mark.parametrize("loader", ["build_random_model", "readout"])
def test_the_loaders_settle_before_anything_runs(loader, tmp_path):
    from laminae.models.random_models import build_random_model, save_random_model

    random_init = {"seed": 0, "tokenizer": "gpt2", "architecture": "gpt2",
                   "config": {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64}}
    if loader == "readout":
        from laminae.models.readout import Readout

        save_random_model(random_init, tmp_path / "model")
        settle_vml_dispatch.cache_clear()
        Readout.open({"name": "tiny", "pretrained": str(tmp_path / "model")}, tmp_path, tmp_path)
    else:
        settle_vml_dispatch.cache_clear()
        build_random_model(random_init)
    assert settle_vml_dispatch.cache_info().currsize == 1


def test_load_model_settles_first(monkeypatch):
    from laminae.models import loading

    settle_vml_dispatch.cache_clear()
    monkeypatch.setattr(loading, "resolve_device", lambda device: pytest.fail("settled after the device"))
    with pytest.raises(pytest.fail.Exception):
        loading.load_model({"name": "x"}, "cpu")
    assert settle_vml_dispatch.cache_info().currsize == 1


@pytest.mark.slow
@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="torch without MKL has no VML")
def test_fresh_processes_compute_on_two_threads_to_full_accuracy():
    """12 fresh processes, one at a time (two at once on two cores leave the worker thread no
    core to race on): without the guard, each had about a one-in-three chance of a
    low-accuracy first call, so this fails with probability ~0.99 when the guard does not work."""
    def fresh_process_error() -> float:
        done = subprocess.run([sys.executable, "-c", CHILD, str(SRC)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return float(done.stdout.split()[-1])

    errors = [fresh_process_error() for _ in range(12)]
    assert max(errors) < 1e-6, errors
