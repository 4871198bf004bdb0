"""The HDF5 writes of an extraction alone: `ActivationWriter` fed one batch from memory, no model,
to tell the store's own cost from the machine's write path.

    .venv/bin/python benchmarks/bench_writes.py                    # experiment 2 on GPT-2 Large's shape, 5 trials
    .venv/bin/python benchmarks/bench_writes.py --resident-gb 4    # with 4 GB held, as a loaded model would
    .venv/bin/python benchmarks/bench_writes.py --after-forward gpt2-large-shape   # each trial right after a forward pass

Writes `--sites` datasets of (`--rows`, `--width`) float32 into `--layers` layer files (defaults:
experiment 2's 4 sites, 346 tokens, d_model 1280, 36 layers = 244 MB), through the same
`ActivationWriter` as the extraction stage (atomic folder, chunking, no chunk cache, rows.tsv).
Printed per trial: the time of `write` (the datasets) and of the whole writer (file creation,
attributes, rows.tsv, rename). Each trial writes into a fresh temporary folder, removed after.
`--after-forward SHAPE` runs one forward pass of a random model of that shape (`--rows` tokens)
before each trial, untimed, as the extraction stage does before it writes: on a virtual machine
that reports freed memory to its host (free page reporting), the writes then fault their
page-cache pages back in from the host and cost several times more (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import SHAPES, Scratch, build_model, median, print_header, print_table, remove_tree, setup_torch

from laminae.store import ActivationWriter


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="trials (default 5; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="3 trials")
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rows", type=int, default=346)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--resident-gb", type=float, default=0.0, help="memory to allocate and touch first")
    parser.add_argument("--after-forward", choices=list(SHAPES), default=None,
                        help="a forward pass of a random model of this shape before each trial")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 5)

    print_header("bench_writes: ActivationWriter alone", " ".join(["bench_writes.py", *sys.argv[1:]]))
    resident = np.ones(int(args.resident_gb * 2**30) // 8)  # held until the end, like model weights
    setup_torch()
    model = build_model(args.after_forward).model if args.after_forward else None
    rng = np.random.default_rng(0)
    batch = {f"site{s}": [rng.standard_normal((args.rows, args.width), dtype=np.float32) for _ in range(args.layers)]
             for s in range(args.sites)}
    mebibytes = args.sites * args.layers * args.rows * args.width * 4 / 2**20
    rows = [{"position": i} for i in range(args.rows)]
    scratch = Scratch()
    results = []
    try:
        for trial in range(1, args.repeats + 1):
            out: Path = scratch.fresh()
            if model is not None:
                with torch.inference_mode():
                    model(torch.zeros((1, args.rows), dtype=torch.long))
            start = time.perf_counter()
            with ActivationWriter(out, args.layers, args.rows, {"benchmark": "bench_writes"}) as writer:
                write_start = time.perf_counter()
                writer.write(0, batch)
                write_s = time.perf_counter() - write_start
                writer.set_rows(rows, ["position"])
            total_s = time.perf_counter() - start
            remove_tree(out)
            print(f"  trial {trial}/{args.repeats}: write {write_s:.3f}s, whole writer {total_s:.3f}s", flush=True)
            results.append({"write s": write_s, "writer s": total_s})
    finally:
        scratch.cleanup()
    del resident, model
    writes = [r["write s"] for r in results]
    summary = {"MiB": round(mebibytes, 1), "resident GB": args.resident_gb,
               "after forward": args.after_forward or "-", "trials": args.repeats,
               "write median s": median(writes), "write min s": min(writes), "write max s": max(writes),
               "MiB/s at median": mebibytes / median(writes),
               "whole writer median s": median(r["writer s"] for r in results)}
    print(f"## {args.sites} sites x {args.layers} layer files of ({args.rows}, {args.width}) float32")
    print_table([summary], list(summary))
    return results


if __name__ == "__main__":
    main()
