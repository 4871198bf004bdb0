"""Run the real Snakefile in a scratch working directory, for end-to-end tests.

    >>> result = snakemake(workdir, ["model=tiny-gpt2"], "--cores", "2")
    >>> scheduled_rules(snakemake(workdir, ["model=tiny-gpt2"], "-n"))   # {} when nothing to do
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Sequence

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# Small but real analysis settings so end-to-end runs stay fast.
FAST = ["qkv.n_permutations=200", "qkv.n_bootstrap=200"]
# The default experiments on tiny-gpt2 with light resampling (test_api.py), and experiment 1 alone:
# the run test_cli.py and test_bad_inputs.py share (conftest.shared_run).
TINY_RUN = ["model=tiny-gpt2", "qkv.n_permutations=20", "qkv.n_bootstrap=20"]
TINY_QKV_RUN = [*TINY_RUN, "experiments=[qkv]"]


def snakemake_env(extra: dict | None = None, real_scontrol: bool = False) -> dict[str, str]:
    """The environment for a Snakemake subprocess: os.environ, `extra`, and (unless
    `real_scontrol`) a `scontrol` that fails at once, first on PATH, as every local run of the
    project's gets it (`laminae.api.plan.without_slurm_probe`: on a machine with a SLURM client
    but no controller, snakemake-executor-plugin-slurm's probe waits ~9 s on every start)."""
    from laminae.api.plan import without_slurm_probe

    env = {**os.environ, **(extra or {})}
    return env if real_scontrol else without_slurm_probe(PROJECT_ROOT, env)


def snakemake(workdir: Path, overrides: Sequence[str], *args: str, sweep: Sequence[str] = (),
              check: bool = True, timeout: float = 900, env: dict | None = None,
              real_scontrol: bool = False) -> subprocess.CompletedProcess:
    """`snakemake -s <repo>/Snakefile -d <workdir> <args> --config overrides=[...]`, in
    `snakemake_env(env, real_scontrol)`."""
    config = [f"overrides={json.dumps(list(overrides))}"]
    if sweep:
        config.append(f"sweep={json.dumps(list(sweep))}")
    command = [SNAKEMAKE, "-s", str(PROJECT_ROOT / "Snakefile"), "-d", str(workdir), *args, "--config", *config]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env=snakemake_env(env, real_scontrol))
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def scheduled_rules(dry_run: subprocess.CompletedProcess) -> dict[str, int]:
    """{rule: job count} from the job-stats table of a `snakemake -n` run ({} if nothing to do)."""
    text = dry_run.stdout + dry_run.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts
