"""A no-op `snakemake` rerun: everything is up to date, so Snakemake should only parse the
Snakefile (Hydra composition, validation, stage hashes), build the DAG and stop.

    .venv/bin/python benchmarks/bench_noop_rerun.py               # first run + 5 no-op reruns (~3 min)
    .venv/bin/python benchmarks/bench_noop_rerun.py --quick       # faster first run (200 permutations), 3 reruns

A complete tiny-gpt2 run of the default pipeline (the four default experiments, analyses and figures) is made
first in a scratch working directory (`snakemake -s <repo>/Snakefile -d <scratch> --cores 2`),
then `--repeats` identical reruns are timed end to end (process start to exit; each must print
"Nothing to be done"). Also timed, to say where a no-op rerun's time goes: a bare
`snakemake --version` (interpreter + Snakemake's imports) and, in process, composing and
planning the config (`laminae.config.load_runs`, what the Snakefile does at parse time).

Where a SLURM client is installed (`scontrol` on PATH), everything is timed twice: as the machine
is, and with `scontrol` shadowed by a stub that fails at once. snakemake-executor-plugin-slurm
(the `slurm` extra) runs `scontrol show config` when Snakemake imports it, i.e. on every
invocation, even local ones; when no controller answers, that call waits for scontrol's own
timeout (9 s on the machine of docs/PERFORMANCE.md). The stub is what a machine without SLURM, or with a responsive controller,
sees.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, median, print_header, print_table, spread

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
BASE = ["model=tiny-gpt2"]
FAST = ["qkv.n_permutations=200", "qkv.n_bootstrap=200"]


def snakemake(workdir: Path, overrides: list[str], *args: str, env: dict | None = None
              ) -> tuple[float, subprocess.CompletedProcess]:
    command = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args,
               "--config", f"overrides={json.dumps(overrides)}"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"snakemake failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return seconds, done


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed no-op reruns (default 5; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="first run with 200 permutations/bootstraps, 3 reruns")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    print_header("bench_noop_rerun: a no-op snakemake rerun", " ".join(["bench_noop_rerun.py", *sys.argv[1:]]))

    with tempfile.TemporaryDirectory(prefix="laminae-bench-noop-") as tmp:
        workdir = Path(tmp) / "work"
        environments = {"as is": dict(os.environ)}
        if shutil.which("scontrol"):
            stub = Path(tmp) / "stub"
            stub.mkdir()
            (stub / "scontrol").write_text("#!/bin/sh\nexit 1\n")
            (stub / "scontrol").chmod(0o755)
            environments["scontrol stubbed"] = {**os.environ, "PATH": f"{stub}{os.pathsep}{os.environ['PATH']}"}
            start = time.perf_counter()
            try:
                subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=30)
            except subprocess.TimeoutExpired:
                pass
            print(f"scontrol show config (what the SLURM plugin runs at import): {time.perf_counter() - start:.1f} s",
                  flush=True)
        overrides = [*BASE, *(FAST if args.quick else [])]
        first, _ = snakemake(workdir, overrides, "--cores", str(args.cores), env=environments.get("scontrol stubbed"))
        print(f"first complete run (tiny-gpt2, the default experiments, analyses + figures): {first:.1f} s", flush=True)
        rows = []
        for label, env in environments.items():
            reruns = []
            for index in range(repeats):
                seconds, done = snakemake(workdir, overrides, "--cores", str(args.cores), env=env)
                if "Nothing to be done" not in done.stdout + done.stderr:
                    raise SystemExit("the rerun was not a no-op:\n" + (done.stdout + done.stderr)[-3000:])
                reruns.append(seconds)
                print(f"  [{label}] no-op rerun {index + 1}/{repeats}: {seconds:.2f} s", file=sys.stderr, flush=True)
            dry = [snakemake(workdir, overrides, "-n", env=env)[0] for _ in range(repeats)]
            version = []
            for _ in range(repeats):
                start = time.perf_counter()
                subprocess.run([SNAKEMAKE, "--version"], check=True, capture_output=True, env=env)
                version.append(time.perf_counter() - start)
            rows += [
                {"env": label, "what": f"no-op rerun (snakemake --cores {args.cores})", "median s": median(reruns),
                 "range s": spread(reruns)},
                {"env": label, "what": "dry run (snakemake -n), same state", "median s": median(dry), "range s": spread(dry)},
                {"env": label, "what": "snakemake --version (interpreter + imports)", "median s": median(version),
                 "range s": spread(version)},
            ]

    from laminae.config import load_runs

    compose = []
    for _ in range(repeats):
        start = time.perf_counter()
        load_runs(overrides, project_root=ROOT)
        compose.append(time.perf_counter() - start)
    rows.append({"env": "in process", "what": "load_runs: Hydra compose + validate + hashes", "median s": median(compose),
                 "range s": spread(compose)})
    print(f"## {repeats} runs each")
    print_table(rows, ["env", "what", "median s", "range s"])
    for row in rows:
        if row["what"].startswith("no-op rerun"):
            print(f"goal no-op rerun < 5 s ({row['env']}): {row['median s']:.2f} s -> "
                  f"{'MET' if row['median s'] < 5 else 'NOT MET'}")
    return rows


if __name__ == "__main__":
    main()
