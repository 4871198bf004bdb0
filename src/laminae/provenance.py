"""Provenance records and atomic writes: every output says where it came from, and a crash
never leaves a half-written output under its final name.

    >>> with atomic_dir(Path("results/x/activations")) as tmp:   # writes go to a hidden sibling
    ...     (tmp / "layer_00.h5").write_bytes(b"...")
    >>> # only now does results/x/activations exist, complete
    >>> atomic_write_text(Path("metrics/table.tsv"), "layer\tvalue\n0\t1.0\n")
"""

from __future__ import annotations

import contextlib
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import yaml

VERSIONED_PACKAGES = ("laminae", "torch", "transformers", "numpy", "scipy", "h5py")


def package_versions() -> dict[str, str]:
    """`{"laminae_version": "0.1.0", "torch_version": ..., ...}` for the packages that shape the
    numbers (read from installed metadata, so nothing heavy is imported)."""
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[f"{package}_version"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[f"{package}_version"] = "not installed"
    return versions


def provenance_attrs(stage: dict[str, Any], runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat attributes for an output file: stage name and hash, versions, the stage config as
    YAML, and the runtime settings (device, batch size) that do not enter the hash."""
    attrs: dict[str, Any] = {
        "stage": stage["stage"],
        "stage_hash": stage["hash"],
        "config_yaml": dump_yaml(stage["config"]),
        **package_versions(),
    }
    for key, value in (runtime or {}).items():
        attrs[f"runtime_{key}"] = "null" if value is None else value if isinstance(value, (int, float, str)) else str(value)
    return attrs


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)


def stage_config_record(stage: dict[str, Any], runtime: dict[str, Any] | None = None,
                        model: dict[str, Any] | None = None) -> str:
    """The `config.yaml` written beside a stage's outputs; `model`: what the extraction loaded
    (`ModelInfo.to_dict()`: revision, shape, and for GGUF files their sha256 and quantization)."""
    record = {"stage": stage["stage"], "hash": stage["hash"], "config": stage["config"],
              "runtime": runtime or {}, "versions": package_versions()}
    if model is not None:
        record["loaded_model"] = model
    return dump_yaml(record)


def read_stage_record(path: Path) -> dict[str, Any]:
    """A stage's `config.yaml` back as a dict ({} when missing or unreadable)."""
    try:
        record = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return record if isinstance(record, dict) else {}


def _temporary_sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def _remove_stale_siblings(final: Path) -> None:
    """Remove temporary siblings left by crashed writers (their PID no longer runs)."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) writes nothing more
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rpartition(")")[2].split()[:1] != ["Z"]
    except OSError:  # no /proc (macOS) or the process just ended
        return True


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces `final` only if the block finishes without error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(final)
    tmp = _temporary_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path that replaces `final` only if the block finishes without error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(final)
    tmp = _temporary_sibling(final)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
