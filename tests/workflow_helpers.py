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


def snakemake(workdir: Path, overrides: Sequence[str], *args: str, sweep: Sequence[str] = (),
              check: bool = True, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """`snakemake -s <repo>/Snakefile -d <workdir> <args> --config overrides=[...]`."""
    config = [f"overrides={json.dumps(list(overrides))}"]
    if sweep:
        config.append(f"sweep={json.dumps(list(sweep))}")
    command = [SNAKEMAKE, "-s", str(PROJECT_ROOT / "Snakefile"), "-d", str(workdir), *args, "--config", *config]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
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
