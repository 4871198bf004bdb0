"""Which result folders no kept config needs, and removing them when asked (`laminae gc`).

Every stage writes one folder (`<stage dir>/activations|metrics|figures|claims/`, nested under its
upstream stage's folder; a sweep's comparisons and claims matrix under `<results>/sweeps/`).
A folder is needed when some stage of a kept config (`laminae.plan(...)`: its runs, their
comparisons and claims matrix) lives there or below it, or when a kept store links sites stored
there (laminae.config.reuse). Every other stage folder is unused:

    >>> keep = [laminae.plan(["model=tiny-gpt2"]), laminae.plan(sweep=["model=smollm2-135m,minilm-l6"])]
    >>> found = unused(keep)                     # [Unused(path, stage, size), ...], largest first
    >>> sum(u.size for u in found)               # bytes they hold
    >>> remove(found, workdir=".")               # refused while a Snakemake run holds the folder's lock

Only the top-most unused folder of a chain is listed (removing an extraction removes the analyses
nested in it, which no kept config can need, as they read it). Nothing outside `results_dir` is
touched: random models (`models_dir`) and the caches in `.snakemake/` stay.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from laminae.api.plan import Plan
from laminae.api.results import folder_size
from laminae.config.reuse import reused_stores
from laminae.config.stages import OUTPUT_FOLDERS
from laminae.errors import LaminaeError


@dataclass(frozen=True)
class Unused:
    """A stage folder no kept config needs: its path (from here), the stage it holds
    (`qkv.analysis`, `sweep`), and its size in bytes (everything below it)."""

    path: Path
    stage: str
    size: int


def unused(keep: Sequence[Plan]) -> list[Unused]:
    """The stage folders under the kept plans' results folder(s) that none of them needs,
    largest first (see the module docstring)."""
    if not keep:
        raise LaminaeError("gc needs at least one config to keep (laminae gc --keep 'OVERRIDES')")
    needed: set[Path] = set()
    results: dict[Path, Path] = {}   # resolved -> as the plan names it (paths are shown that way)
    for plan in keep:
        folder = plan.path(plan.workflow.results_dir)
        results.setdefault(folder.resolve(), folder)
        for output in plan.outputs:
            folder = output.path if output.kind in ("compare", "across", "matrix") else output.path.parent
            needed.add(folder.resolve())
        for stage in plan.workflow.stages.values():   # the stores a kept composite store links
            needed.update(plan.path(store).parent.resolve() for store in reused_stores(stage))
    kept_or_above = needed | {parent for folder in needed for parent in folder.parents}
    found: list[Unused] = []
    dropped: set[Path] = set()
    for root in results.values():
        for folder, stage in stage_folders(root):
            resolved = folder.resolve()
            if resolved in kept_or_above or dropped.intersection(resolved.parents):
                continue
            dropped.add(resolved)
            found.append(Unused(folder, stage, folder_size(folder)))
    return sorted(found, key=lambda u: (-u.size, str(u.path)))


def stage_folders(results: Path) -> Iterable[tuple[Path, str]]:
    """(folder, stage) of every stage folder under `results`, parents before children: a folder
    holding an output folder with its config.yaml, and each folder of `results/sweeps/`."""
    if not results.is_dir():
        return
    outputs = set(OUTPUT_FOLDERS.values())
    for config in sorted(results.rglob("config.yaml"), key=lambda p: len(p.parts)):
        if config.parent.name in outputs and "sweeps" not in config.relative_to(results).parts[:1]:
            yield config.parent.parent, stage_name(config)
    sweeps = results / "sweeps"
    if sweeps.is_dir():
        yield from ((folder, "sweep") for folder in sorted(sweeps.iterdir()) if folder.is_dir())


def stage_name(config: Path) -> str:
    """The `stage:` key of a stage's config.yaml (`qkv.analysis`), or its output folder's name."""
    for line in config.read_text(encoding="utf-8").splitlines():
        if line.startswith("stage:"):
            return line.split(":", 1)[1].strip().strip("'\"")
    return config.parent.name


def remove(found: Sequence[Unused], workdir: str | Path = ".") -> int:
    """Delete the `found` folders; bytes freed. Refused, before anything is deleted, while a
    Snakemake run holds its lock on `workdir` (`.snakemake/locks/`): it may be writing there."""
    locks = Path(workdir) / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        raise LaminaeError(f"a Snakemake run holds its lock on '{Path(workdir)}' ({locks}): run gc when it "
                           "has finished (or, if none runs, snakemake --unlock)")
    freed = 0
    for item in found:
        if item.path.is_dir():
            shutil.rmtree(item.path)
            freed += item.size
    return freed
