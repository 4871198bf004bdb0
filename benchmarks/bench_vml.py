"""How often oneMKL's first-call VML fault strikes a fresh process, with and without
`laminae.models.vml.settle_vml_dispatch` (see that module).

    .venv/bin/python benchmarks/bench_vml.py                  # 30 processes each way
    .venv/bin/python benchmarks/bench_vml.py --processes 12 --guarded-only

Each process, one at a time (two at once on two cores leave the worker thread no core to race
on): torch on two threads, optionally the guard, then its first VML calls (exp, tanh) on a
GPT-2 MLP's shape (48 tokens x 256) against float64. Prints, per mode, how many processes
erred beyond 1e-6 relative and the largest error; with the guard, also its median cost. `tests/test_vml.py` runs the guarded mode.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
#: A relative error above this is the low-accuracy kernel (the accurate ones stay below 1e-7).
TOLERANCE = 1e-6

CHILD = """
import sys, time
import numpy as np, torch
torch.set_num_threads(2)
seconds = 0.0
if sys.argv[2] == "guard":
    sys.path.insert(0, sys.argv[1])
    from laminae.models.vml import settle_vml_dispatch
    began = time.perf_counter()
    settle_vml_dispatch()
    seconds = time.perf_counter() - began
x = np.random.default_rng(0).uniform(0.05, 0.95, (48, 256)).astype(np.float32)
errors = [np.max(np.abs(getattr(torch, name)(torch.from_numpy(x)).numpy() - exact(x.astype(np.float64))) / exact(x))
          for name, exact in (("exp", np.exp), ("tanh", np.tanh))]
print(float(max(errors)), seconds)
"""


def first_call(guard: bool) -> tuple[float, float]:
    """A fresh process's first VML calls on two threads: their largest relative error, and the
    seconds the guard took (0 without it)."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(SRC), "guard" if guard else "bare"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    error, seconds = done.stdout.split()[-2:]
    return float(error), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=30)
    parser.add_argument("--guarded-only", action="store_true")
    args = parser.parse_args()
    for guard in (True,) if args.guarded_only else (False, True):
        errors, seconds = zip(*(first_call(guard) for _ in range(args.processes)))
        bad = sum(error > TOLERANCE for error in errors)
        cost = f"; the guard took {1e3 * statistics.median(seconds):.1f} ms (median)" if guard else ""
        print(f"{'with' if guard else 'without'} the guard: {bad} of {args.processes} processes erred "
              f"(largest relative error {max(errors):.1e}){cost}")


if __name__ == "__main__":
    main()
