"""Disk space for activation stores: what a store takes, whether it fits, and one line when a
disk is full.

    >>> store_bytes(n_layers=4, n_rows=346, widths=[64, 64, 64, 64], storage_dtype="float32")
    1417216
    >>> require_space(Path("results"), 1417216, "the 1 activation store still to extract")
    DiskSpaceError: folder 'results': not enough disk space for the 1 activation store still to extract:
    it needs at least 1.4 MB, 600.0 KB free; free some space or set results_dir to a larger disk

Three moments (both one-line `DiskSpaceError`s, `laminae: <message>`, exit 1):
- the workflow's preflight, before any job: the stores still to extract whose size is known
  from the config (`WorkflowPlan.preflight`), summed per filesystem;
- an extraction job, after planning its inputs (exact rows) and before loading the weights;
- a disk that fills anyway (another process writing): the store's writer ends on ENOSPC with
  every file closed and its temporary folder removed (`laminae.store.ActivationWriter`).

Sizes count the stored values only (HDF5 adds a few KB per file): a lower bound, so a check
never stops a run that would fit. No torch, no NumPy: the preflight runs while Snakemake starts.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from laminae.errors import LaminaeError

STORAGE_BYTES = {"float32": 4, "float16": 2}
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
ADVICE = "free some space or set results_dir to a larger disk"


class DiskSpaceError(LaminaeError):
    """Not enough disk space for what a stage must write (before it starts, or when the disk
    filled while it wrote)."""

    def __init__(self, folder: Path | str, problem: str):
        self.folder = str(folder)
        super().__init__(f"folder '{folder}': {problem}")


def store_bytes(n_layers: int, n_rows: int, widths: Iterable[int], storage_dtype: str = "float32") -> int:
    """Bytes of the values of an activation store: n_layers x n_rows x sum of the site widths x
    the storage dtype's size."""
    return int(n_layers) * int(n_rows) * sum(int(width) for width in widths) * STORAGE_BYTES[storage_dtype]


def existing_folder(path: Path | str) -> Path:
    """`path` or its nearest ancestor that exists (where a folder still to be made will live)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path | str) -> int:
    """Free bytes, for this user, on the filesystem `path` (or the folder that will hold it) is on."""
    return shutil.disk_usage(existing_folder(path)).free


def filesystem(path: Path | str) -> int:
    """The device id of the filesystem `path` (or the folder that will hold it) is on."""
    return os.stat(existing_folder(path)).st_dev


def size_text(n_bytes: float) -> str:
    """1536 -> '1.5 KB' (powers of 1024, as `df -h`)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n_bytes) < 1024 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError  # unreachable


def require_space(folder: Path | str, needed: int, what: str) -> None:
    """DiskSpaceError naming `folder` unless its filesystem has `needed` bytes free."""
    free = free_bytes(folder)
    if needed > free:
        raise DiskSpaceError(folder, f"not enough disk space for {what}: it needs at least {size_text(needed)}, "
                                     f"{size_text(free)} free; {ADVICE}")


def require_store_space(out_dir: Path | str, n_layers: int, n_rows: int, widths: Mapping[str, int],
                        sites: Sequence[str], storage_dtype: str, compression: str | None = None) -> None:
    """An extraction job's check, once its inputs are planned (exact rows) and before the
    weights load: the store of `sites` (their `widths`) fits on the disk of `out_dir`'s folder.
    Skipped for compressed stores (their size is not known in advance)."""
    if compression or not sites:
        return
    needed = store_bytes(n_layers, n_rows, [widths[site] for site in sites], storage_dtype)
    require_space(Path(out_dir).parent, needed, f"the activation store {Path(out_dir).name}/ "
                                                f"({n_layers} layers x {n_rows} rows x {', '.join(sites)})")


def is_disk_full(error: BaseException | None) -> bool:
    """An OSError for a full disk or an exhausted quota (HDF5's write errors carry the errno)."""
    return isinstance(error, OSError) and error.errno in FULL_ERRNOS


def disk_full_error(folder: Path | str, what: str) -> DiskSpaceError:
    """The one line for a disk that filled while `what` was written into `folder`."""
    return DiskSpaceError(folder, f"no space left on device while writing {what} ({size_text(free_bytes(folder))} "
                                  f"free now); nothing was kept: {ADVICE}, then rerun")
