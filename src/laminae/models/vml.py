"""A guard against a oneMKL fault that makes CPU results differ between processes.

torch computes contiguous float32/float64 unary ops on the CPU (`tanh`, `exp`, `erf`, `sqrt`,
...) with oneMKL's vector math library (VML), each intra-op thread on its chunk. oneMKL picks
its kernels on the first call; when that call runs on several threads at once, one thread can
run a low-accuracy kernel for its whole chunk (pytorch/pytorch issue 188792; oneMKL 2024.2, the
version torch's x86 wheels ship): 5 and 6 of 30 fresh processes erred by up to 1.5e-4
relative in two runs of `benchmarks/bench_vml.py`. In a GPT-2 MLP (`gelu_new`: `tanh`) the
worker thread's half of layer 0's activation comes out slightly off and every later layer
carries it: activations that differ between reruns, and logit-lens ranks that flip. Later
calls are exact, so the fault only shows across processes.

Calling every VML-backed function once on one element, in one thread, before any parallel
use settles the kernel choice (the fix proposed upstream):

    >>> settle_vml_dispatch()      # idempotent; before the first forward pass or readout

`load_model`, `build_random_model` and `Readout` (however built) call it, so every extraction,
random model and analysis readout runs with the accurate kernels. `tests/test_vml.py` checks the fix
in fresh processes.
"""

from __future__ import annotations

import functools

#: The unary ops ATen sends to VML (aten/src/ATen/cpu/vml.h, IMPLEMENT_VML_MKL), by torch name,
#: plus those older releases also sent (abs, expm1, log1p): each is warmed in both dtypes.
VML_OPS = ("abs", "acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "expm1", "log", "log10",
           "log1p", "log2", "sin", "sqrt", "tan", "tanh", "trunc")


@functools.cache
def settle_vml_dispatch() -> None:
    """Call each VML-backed op once on a one-element float32 and float64 tensor (one element
    never runs on more than the calling thread), so that oneMKL has chosen its kernels before
    any op runs on several threads. About 1 ms once per process (median of 30 fresh processes,
    `benchmarks/bench_vml.py`); a no-op after that."""
    import torch

    for dtype in (torch.float32, torch.float64):
        value = torch.full((1,), 0.5, dtype=dtype)
        for name in VML_OPS:
            getattr(torch, name)(value)
