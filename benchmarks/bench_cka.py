"""Streaming linear CKA (laminae.metrics.cka.CrossProducts, the feature-space form): time and
peak memory against rows x layers x width, within one run (layer x layer) and between two runs.

    .venv/bin/python benchmarks/bench_cka.py                 # the default grid (~3-4 min on 2 busy cores)
    .venv/bin/python benchmarks/bench_cka.py --rows 10000 --layers 30 --width 576
    .venv/bin/python benchmarks/bench_cka.py --quick         # one small case (seconds)

Rows arrive in chunks of `--chunk` rows of float32 random data (as the store gives them),
generated per chunk and not timed. Printed per case: the time to accumulate and to finish
(`cka()`), the throughput in GFLOP/s (`flops`: 2 per multiply-add of the cross products), the
peak memory traced by tracemalloc (numpy reports its buffers to it), and the accumulator's own
size (`accumulator_bytes`). Memory depends on layers and width only, never on rows; time is
linear in rows.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from laminae.metrics.cka import CrossProducts, accumulator_bytes  # noqa: E402

# (rows, layers A, width A, layers B, width B); B None: within one run
GRID = (
    (10_000, 12, 576, None, None),
    (1_000, 12, 576, None, None),      # with the first: time linear in rows, memory flat
    (1_000, 12, 768, None, None),
    (1_000, 30, 576, None, None),
    (500, 30, 768, None, None),
    (1_000, 12, 768, 30, 576),         # between runs: GPT-2 small's shape against SmolLM2-135M's
)
QUICK = ((4_000, 6, 256, None, None), (4_000, 6, 256, 4, 128))


def flops(rows: int, la: int, pa: int, lb: int | None, pb: int | None) -> float:
    """Floating-point operations (2 per multiply-add) of the cross products."""
    if lb is None:
        return rows * (la * pa) * (la * pa + pa)      # the upper block triangle, diagonal blocks included
    return 2 * rows * (la * pa * lb * pb + la * pa * pa + lb * pb * pb)


def run_case(rows: int, la: int, pa: int, lb: int | None, pb: int | None, chunk: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tracemalloc.start()
    acc = CrossProducts(la, pa, *(() if lb is None else (lb, pb)))
    accumulate = 0.0
    for start in range(0, rows, chunk):
        size = min(chunk, rows - start)
        a = rng.standard_normal((la, size, pa), dtype=np.float32)
        b = None if lb is None else rng.standard_normal((lb, size, pb), dtype=np.float32)
        began = time.perf_counter()
        acc.update(a, b)
        accumulate += time.perf_counter() - began
    began = time.perf_counter()
    matrix = acc.cka()
    finish = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.isfinite(matrix).all()
    return {"accumulate_s": accumulate, "finish_s": finish, "peak_mib": peak / 2**20,
            "state_mib": accumulator_bytes(la, pa, lb, pb) / 2**20,
            "gflops": flops(rows, la, pa, lb, pb) / accumulate / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--layers-b", type=int)
    parser.add_argument("--width-b", type=int)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.rows:
        grid = ((args.rows, args.layers, args.width, args.layers_b, args.width_b),)
    else:
        grid = QUICK if args.quick else GRID
    print(f"numpy {np.__version__}, chunk {args.chunk} rows, float32 chunks accumulated in float64")
    print(f"{'rows':>8} {'A':>9} {'B':>9} {'accumulate s':>13} {'finish s':>9} {'GFLOP/s':>8} "
          f"{'peak MiB':>9} {'state MiB':>10}")
    for rows, la, pa, lb, pb in grid:
        result = run_case(rows, la, pa, lb, pb, args.chunk)
        b = "(within)" if lb is None else f"{lb}x{pb}"
        print(f"{rows:>8} {f'{la}x{pa}':>9} {b:>9} {result['accumulate_s']:>13.1f} {result['finish_s']:>9.2f} "
              f"{result['gflops']:>8.1f} {result['peak_mib']:>9.0f} {result['state_mib']:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
