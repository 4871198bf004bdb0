"""DAG build and job start-up of sweeps of 1 to 1,000 runs (tiny-gpt2, the default experiments).

    .venv/bin/python benchmarks/bench_dag.py                  # 1, 10, 100, 1000 runs (~3 min)
    .venv/bin/python benchmarks/bench_dag.py --quick          # 1, 10, 100 runs
    git archive <commit> | tar -x -C /tmp/laminae-before      # an earlier checkout, for paired before/after
    .venv/bin/python benchmarks/bench_dag.py --reference /tmp/laminae-before --sizes 1 10 100

A sweep of N runs is `sweep=["qkv.n_permutations=0,1,...,N-1"]` over `overrides=["model=tiny-gpt2"]`:
N qkv analyses, figures and claims, one stimuli and one corpus extraction shared by all. Timed,
each in a fresh process, from process start to exit:

- `dag cold`: `snakemake -n` with an empty composition cache (`LAMINAE_CACHE_DIR`, a fresh
  folder): parse the Snakefile (Hydra composition, validation, stage hashes of every run) and
  build the DAG of every job;
- `dag warm`: the same again, composed configs read from the cache;
- `job start`: what each cluster job pays before its stage function: `snakemake -n --cores 1
  --mode remote <one qkv metrics file>` with the same config and a warm cache (Snakemake's
  start, the Snakefile's plan of every run of the sweep as a job plans it: the stores the DAG
  chose, no config checks; the DAG of one job);
- `plan`: in one process, `WorkflowPlan.from_snakemake_config` with a warm cache plus that
  job's lookups (`stage_record`, `resources`), as the DAG's process plans (checks included).

Where a SLURM client is installed, `scontrol` is shadowed by a stub that fails at once, so the
numbers do not hold the ~9 s of the SLURM plugin's `scontrol show config` (docs/PERFORMANCE.md,
"No-op rerun"). `--reference PATH` times another checkout's Snakefile (e.g. a git worktree of an
earlier commit) beside this one, alternating, with the same interpreter and packages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, median, print_header, print_table, spread

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
OVERRIDES = ["model=tiny-gpt2"]

PLAN_SCRIPT = """
import sys, time
start = time.perf_counter()
sys.path.insert(0, sys.argv[1] + "/src")
from pathlib import Path
from laminae.workflow import WorkflowPlan
plan = WorkflowPlan.from_snakemake_config({"overrides": %r, "sweep": [sys.argv[2]]}, Path(sys.argv[1]))
digest = next(h for h, s in plan.stages.items() if s.kind == "analysis" and s.group == "qkv")
plan.stage_record(digest), plan.resources(digest)
print(time.perf_counter() - start)
""" % (OVERRIDES,)


def sweep_of(n: int) -> str:
    return "qkv.n_permutations=" + ",".join(str(i) for i in range(n))


def run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)[:300]}\n{done.stdout[-2000:]}\n"
                         f"{done.stderr[-4000:]}")
    return seconds, done.stdout + done.stderr


def dry_run(root: Path, workdir: Path, n: int, env: dict[str, str], *targets: str) -> tuple[float, str]:
    return run([SNAKEMAKE, "-s", str(root / "Snakefile"), "-d", str(workdir), "-n", "--cores", "1", *targets,
                "--config", f"overrides={json.dumps(OVERRIDES)}", f"sweep={json.dumps([sweep_of(n)])}"], env)


def one_target(root: Path, n: int) -> str:
    """The metrics file of the sweep's last qkv analysis (relative to the working directory)."""
    sys.path.insert(0, str(root / "src"))
    from laminae.workflow import WorkflowPlan

    plan = WorkflowPlan.from_snakemake_config({"overrides": OVERRIDES, "sweep": [sweep_of(n)]}, root)
    stage = [s for s in plan.runs[-1].stages.values() if s.name == "qkv.analysis"][0]
    return plan.stage_files(stage)[0]


def measure(name: str, root: Path, n: int, tmp: Path, base_env: dict[str, str], target: str) -> dict[str, float]:
    cache = tmp / f"cache-{name}-{n}"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**base_env, "LAMINAE_CACHE_DIR": str(cache)}
    workdir = tmp / f"work-{name}"
    cold, out = dry_run(root, workdir, n, env)
    total = re.search(r"^total\s+(\d+)", out, re.MULTILINE)
    jobs = int(total.group(1)) if total else 0
    warm, _ = dry_run(root, workdir, n, env)
    job, _ = dry_run(root, workdir, n, env, "--mode", "remote", target)   # as a cluster job starts
    plan = subprocess.run([sys.executable, "-c", PLAN_SCRIPT, str(root), sweep_of(n)], capture_output=True, text=True,
                          env=env, check=True)
    return {"dag cold": cold, "dag warm": warm, "job start": job, "plan": float(plan.stdout.split()[-1]), "jobs": jobs}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="runs per sweep (default 1 10 100 1000)")
    parser.add_argument("--quick", action="store_true", help="sizes 1 10 100")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every measurement (default 1)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="another checkout (e.g. a git worktree of an earlier commit) timed alternately")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([1, 10, 100] if args.quick else [1, 10, 100, 1000])
    print_header("bench_dag: DAG build and job start of sweeps", " ".join(["bench_dag.py", *(argv or sys.argv[1:])]))
    roots = {"this": ROOT, **({"reference": args.reference.resolve()} if args.reference else {})}
    rows = []
    with tempfile.TemporaryDirectory(prefix="laminae-bench-dag-") as tmp_name:
        tmp = Path(tmp_name)
        env = dict(os.environ)
        if shutil.which("scontrol"):
            (tmp / "stub").mkdir()
            (tmp / "stub" / "scontrol").write_text("#!/bin/sh\nexit 1\n")
            (tmp / "stub" / "scontrol").chmod(0o755)
            env["PATH"] = f"{tmp / 'stub'}{os.pathsep}{env['PATH']}"
            print("scontrol shadowed by a stub that exits 1", flush=True)
        for n in sizes:
            target = one_target(ROOT, n)
            samples: dict[str, list[dict[str, float]]] = {name: [] for name in roots}
            for _ in range(args.repeats):
                for name, root in roots.items():
                    sample = measure(name, root, n, tmp, env, target)
                    samples[name].append(sample)
                    print(f"{name:9s} {n:5d} runs: " + ", ".join(f"{k} {v:.2f}" if k != "jobs" else f"{k} {v:.0f}"
                                                           for k, v in sample.items()), flush=True)
            for name, runs in samples.items():
                row = {"checkout": name, "runs": n, "jobs": int(runs[0]["jobs"])}
                for key in ("dag cold", "dag warm", "job start", "plan"):
                    values = [r[key] for r in runs]
                    row[key] = f"{median(values):.2f} s" + (f" ({spread(values)})" if len(values) > 1 else "")
                rows.append(row)
    print()
    print_table(rows, ["checkout", "runs", "jobs", "dag cold", "dag warm", "job start", "plan"])
    return rows


if __name__ == "__main__":
    main()
