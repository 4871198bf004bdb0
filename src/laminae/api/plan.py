"""A config's outputs, before (or instead of) running it, and a way to run it through Snakemake.

    >>> p = plan(overrides=["model=tiny-gpt2"])                  # composed and checked: nothing runs
    >>> [(o.stage, o.exists) for o in p.outputs][:2]
    [('stimuli.extract', False), ('qkv.analysis', False)]
    >>> p.outputs[1].path                                        # the same folders as the Snakefile's
    PosixPath('results/tiny-gpt2/stimuli/space_furniture_fruit.next_word-b18decf815/qkv/analysis-.../metrics')
    >>> p.table()                                                # the same as a DataFrame
    >>> p.missing                                                # the outputs a run would make
    >>> p.run(cores=2)                                           # snakemake -s <project>/Snakefile ...
    >>> p.complete, laminae.load(p.outputs[1].path)              # (True, <laminae.Run ...>)

`plan(...)` takes what `snakemake --config` takes (`overrides`, `sweep`) and gives the stages of
every run with their output folders (`laminae.workflow.WorkflowPlan`, the object the Snakefile
builds), plus a sweep's comparison and claims-matrix folders. A bad override raises the
pipeline's one-line `ConfigError`. Paths are relative to `workdir` (where Snakemake runs and
`results_dir` is; default: the current folder) unless `results_dir` is absolute; `project` is
the checkout whose `Snakefile` and `conf/` are used (default: the current folder or a parent
holding both, else the checkout laminae is installed from).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from laminae.atomic import atomic_file
from laminae.config.keys import stable_hash
from laminae.errors import LaminaeError

if TYPE_CHECKING:
    import pandas as pd

    from laminae.workflow import WorkflowPlan


@dataclass(frozen=True)
class Output:
    """One stage's output folder: `run` is the run's label (its sweep overrides, or 'default'),
    `stage` e.g. `qkv.analysis` (`<experiment>.compare` and `claims.matrix` for a sweep's)."""

    run: str
    stage: str
    kind: str
    hash: str
    path: Path
    exists: bool


class Plan:
    """The outputs of one config (see the module docstring)."""

    def __init__(self, workflow: "WorkflowPlan", overrides: Sequence[str], sweep: Sequence[str],
                 project: Path, workdir: Path):
        self.workflow = workflow
        self.overrides = list(overrides)
        self.sweep = list(sweep)
        self.project = project
        self.workdir = workdir

    def __repr__(self) -> str:
        done = sum(output.exists for output in self.outputs)
        return (f"<laminae.Plan {len(self.workflow.runs)} run(s), {done} of {len(self.outputs)} outputs exist "
                f"under '{self.workdir}'>")

    @property
    def runs(self) -> list[str]:
        """The runs' labels, in order."""
        return [run.label for run in self.workflow.runs]

    @property
    def outputs(self) -> list[Output]:
        """Every stage's output folder, run by run (a stage shared by runs once, under its first),
        then the sweep's comparisons and claims matrix; `exists` is read from disk each time."""
        found: list[Output] = []
        seen: set[str] = set()
        for run in self.workflow.runs:
            for stage in run.stages.values():
                if stage.hash in seen:
                    continue
                seen.add(stage.hash)
                path = self.path(stage.output_dir)
                found.append(Output(run.label, stage.name, stage.kind, stage.hash, path, (path / "config.yaml").is_file()))
        for comparison in self.workflow.comparisons.values():
            path = self.path(comparison.dir)
            found.append(Output("sweep", comparison.config["stage"], "compare", comparison.hash, path,
                                all(self.path(f).is_file() for f in comparison.files)))
        for cross in self.workflow.cross_runs.values():
            path = self.path(cross.dir)
            found.append(Output("sweep", cross.config["stage"], "across", cross.hash, path,
                                all(self.path(f).is_file() for f in cross.files)))
        matrix = self.workflow.claims_matrix
        if matrix is not None:
            found.append(Output("sweep", "claims.matrix", "matrix", matrix.hash, self.path(matrix.dir),
                                all(self.path(f).is_file() for f in matrix.files)))
        return found

    def path(self, relative: str | Path) -> Path:
        """A path of the plan (relative to the working directory) as seen from here."""
        relative = Path(relative)
        return relative if relative.is_absolute() or self.workdir == Path(".") else self.workdir / relative

    @property
    def files(self) -> list[Path]:
        """Every file the pipeline's default target asks for (`rule all`: metrics, figures,
        claims, a sweep's comparisons), as paths from here."""
        return [self.path(target) for target in self.workflow.targets()]

    @property
    def missing(self) -> list[Output]:
        return [output for output in self.outputs if not output.exists]

    @property
    def complete(self) -> bool:
        """Whether every output exists (a run would make nothing; `snakemake -n` may still
        schedule a rerun of outputs older than the code that makes them)."""
        return not self.missing

    def table(self) -> "pd.DataFrame":
        """`outputs` as a DataFrame: run, stage, kind, hash, path, exists."""
        import pandas as pd

        return pd.DataFrame([{**output.__dict__, "path": str(output.path)} for output in self.outputs],
                            columns=["run", "stage", "kind", "hash", "path", "exists"])

    @property
    def report_path(self) -> Path:
        """Where `report()` writes by default: `<results_dir>/reports/<config>.html`, `<config>`
        being `default` or the overrides and sweep axes (a long list shortened by its hash).

            >>> plan(["model=tiny-gpt2"], sweep=["qkv.zscore=true,false"]).report_path
            PosixPath('results/reports/model=tiny-gpt2_sweep_qkv.zscore=true,false.html')
        """
        words = [*self.overrides, *(f"sweep_{axis}" for axis in self.sweep)]
        name = re.sub(r"[^A-Za-z0-9=,.+-]+", "_", "_".join(words)) or "default"
        if len(name) > 80:
            name = f"{name[:60]}-{stable_hash(words)}"
        return self.path(Path(self.workflow.results_dir) / "reports" / f"{name}.html")

    def report(self, path: str | Path | None = None, timeout: float | None = None) -> Path:
        """Snakemake's report of this config (one HTML page: every figure and claims table its
        outputs hold, with their captions) at `path` (default `report_path`), built through
        Snakemake (`--report`) from the outputs that exist; returns the path."""
        target = Path(path) if path is not None else self.report_path
        target.parent.mkdir(parents=True, exist_ok=True)
        self.run(cores=1, args=["--report", str(target.resolve())], timeout=timeout)
        return target

    def command(self, cores: int = 1, args: Sequence[str] = ()) -> list[str]:
        """The Snakemake command line that runs this config."""
        config = [f"overrides={json.dumps(self.overrides)}"]
        if self.sweep:
            config.append(f"sweep={json.dumps(self.sweep)}")
        return [snakemake_executable(), "-s", str(self.project / "Snakefile"), "-d", str(self.workdir),
                "--cores", str(cores), *args, "--config", *config]

    def run(self, cores: int = 1, args: Sequence[str] = (), quiet: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run this config through Snakemake (`command(cores, args)`, e.g. `args=["-n"]` for a
        dry run): what exists and is up to date is not made again. `quiet` captures Snakemake's
        output (returned) instead of printing it. A failed run raises a one-line LaminaeError:
        the pipeline's own `laminae: ...` line when it gave one, else Snakemake's last error line."""
        command = self.command(cores, args)
        local = not any(arg.split("=", 1)[0] in ("--executor", "-e", "--profile") for arg in args)
        result = subprocess.run(command, capture_output=quiet, text=True, timeout=timeout,
                                env=without_slurm_probe(self.project) if local else None)
        if result.returncode != 0:
            raise LaminaeError(f"snakemake failed (exit {result.returncode}): "
                               f"{failure_line((result.stderr or '') + (result.stdout or ''))}")
        return result


def plan(overrides: Sequence[str] = (), sweep: Sequence[str] = (), project: str | Path | None = None,
         workdir: str | Path = ".") -> Plan:
    """The outputs of the config that `snakemake --config overrides=[...] sweep=[...]` runs;
    nothing is run, no model loaded (see the module docstring)."""
    from laminae.workflow import WorkflowPlan

    for name, value in (("overrides", overrides), ("sweep", sweep)):
        if isinstance(value, str):
            raise LaminaeError(f"{name} must be a list of strings, e.g. {name}=[{value!r}]")
    root = find_project(project)
    workflow = WorkflowPlan.from_snakemake_config({"overrides": list(overrides), "sweep": list(sweep)}, root)
    return Plan(workflow, overrides, sweep, root, Path(workdir))


def find_project(project: str | Path | None = None) -> Path:
    """The laminae checkout to plan with: `project`, else the current folder or the nearest
    parent holding a Snakefile and conf/, else the checkout this package is installed from."""
    def is_project(folder: Path) -> bool:
        return (folder / "Snakefile").is_file() and (folder / "conf").is_dir()

    if project is not None:
        folder = Path(project).resolve()
        if not is_project(folder):
            raise LaminaeError(f"project '{project}' is not a laminae checkout (no Snakefile and conf/ there)")
        return folder
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if is_project(folder):
            return folder
    installed = Path(__file__).resolve().parents[3]
    if is_project(installed):
        return installed
    raise LaminaeError("no laminae checkout here or above (a folder with its Snakefile and conf/): "
                       "give project=... (laminae where --project DIR)")


def snakemake_executable() -> str:
    """The `snakemake` beside this Python (a virtual environment's), else the one on PATH."""
    beside = Path(sys.executable).with_name("snakemake")
    if beside.is_file():
        return str(beside)
    found = shutil.which("snakemake")
    if found is None:
        raise LaminaeError("snakemake not found beside this Python or on PATH: pip install snakemake (make install)")
    return found


def without_slurm_probe(project: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment (`env`, default os.environ) for a Snakemake run on this machine, with an
    `scontrol` that exits 1 first on PATH where one is installed.

    snakemake-executor-plugin-slurm runs `scontrol show config` whenever Snakemake starts, before
    it reads a profile or the Snakefile; where SLURM's client is installed and no controller
    answers, that waits ~9 s for scontrol's timeout. A local run never uses the answer."""
    env = dict(os.environ if env is None else env)
    if shutil.which("scontrol", path=env.get("PATH")) is None:
        return env
    from laminae.config.compose import cache_dir

    folder = cache_dir(project) / "no-slurm"
    stub = folder / "scontrol"
    if not stub.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(stub) as tmp:   # executable before it appears: another run may call it at once
            tmp.write_text("#!/bin/sh\nexit 1\n", encoding="utf-8")
            tmp.chmod(0o755)
    env["PATH"] = f"{folder}{os.pathsep}{env.get('PATH', '')}"
    return env


def failure_line(output: str) -> str:
    """The line that says why a Snakemake run failed: the last `laminae: ...` line, else the
    last line naming an error, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("laminae: "):
            return line.removeprefix("laminae: ")
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line
    return lines[-1] if lines else "no output"


def describe(outputs: Sequence[Any]) -> str:
    """`outputs` as aligned text lines: stage, exists|missing, path (laminae where)."""
    width = max((len(output.stage) for output in outputs), default=0)
    return "\n".join(f"{output.stage:<{width}}  {'exists ' if output.exists else 'missing'}  {output.path}"
                     for output in outputs)
