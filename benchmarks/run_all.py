"""Every benchmark, one after the other (what `make bench` runs).

    .venv/bin/python benchmarks/run_all.py            # full runs (~1 h on 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick    # smoke runs on tiny-gpt2 (~5 min)
    .venv/bin/python benchmarks/run_all.py --repeats 3 --only extraction metrics

Each script runs in its own process (the GPT-2 Large-shaped models take ~3 GB each, and the
memory benchmark must start from fresh processes anyway), with its output passed through;
`--quick` and `--repeats` are handed to each. See docs/PERFORMANCE.md for the results.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "dag": "bench_dag.py",
    "extraction": "bench_extraction.py",
    "memory": "bench_memory.py",
    "metrics": "bench_metrics.py",
    "noop": "bench_noop_rerun.py",
    "writes": "bench_writes.py",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    args = parser.parse_args(argv)
    failed = []
    for name in args.only:
        command = [sys.executable, str(HERE / SCRIPTS[name])]
        command += ["--quick"] if args.quick else []
        command += ["--repeats", str(args.repeats)] if args.repeats else []
        print(f"\n==== {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, cwd=HERE.parent)
        print(f"==== {name}: exit {code}, {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
