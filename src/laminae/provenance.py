"""Provenance: every output says where it came from (the stage, its hash and config, the
runtime settings, the versions of the packages that shape the numbers).

    >>> provenance_attrs(record, runtime)      # HDF5 attributes: stage, stage_hash, config_yaml, ...
    >>> stage_config_record(record, runtime)   # the config.yaml beside a stage's outputs
    >>> upstream_attrs(store.attrs)            # an extraction's model and hash, as activations_*

Writes that replace outputs atomically are in laminae.atomic.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from laminae.stages.records import Runtime, StageRecord

VERSIONED_PACKAGES = ("laminae", "torch", "transformers", "numpy", "scipy", "h5py")
# Model attributes of a store that its analyses copy onto their outputs (prefixed `activations_`).
MODEL_ATTRS = ("model_id", "model_revision", "family", "random_weights", "n_layers", "d_model", "n_heads",
               "n_kv_heads", "storage_dtype", "weights_fingerprint")


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


def provenance_attrs(stage: StageRecord, runtime: Runtime | None = None) -> dict[str, Any]:
    """Flat attributes for an output file: stage name and hash, versions, the stage config as
    YAML, and the runtime settings (device, batch size) that do not enter the hash."""
    attrs: dict[str, Any] = {
        "stage": stage.name,
        "stage_hash": stage.hash,
        "config_yaml": dump_yaml(stage.config),
        **package_versions(),
    }
    if stage.weights is not None:
        attrs["weights_fingerprint"] = stage.weights
    for key, value in _runtime_dict(runtime).items():
        attrs[f"runtime_{key}"] = "null" if value is None else value if isinstance(value, (int, float, str)) else str(value)
    return attrs


def upstream_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The upstream output's model and provenance attributes, prefixed `activations_`, so a
    metrics file says which model and extraction it comes from without opening the store."""
    keys = (*MODEL_ATTRS, "stage_hash")
    return {f"activations_{key}": attrs[key] for key in keys if key in attrs}


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)


def stage_config_record(stage: StageRecord, runtime: Runtime | None = None,
                        model: dict[str, Any] | None = None) -> str:
    """The `config.yaml` written beside a stage's outputs; `model`: what the extraction loaded
    (`ModelInfo.to_dict()`: revision, shape, and for GGUF files their sha256 and quantization)."""
    record = {**stage.as_dict(), "runtime": _runtime_dict(runtime), "versions": package_versions()}
    if stage.weights is not None:
        record["weights"] = stage.weights
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


def _runtime_dict(runtime: Runtime | None) -> dict[str, Any]:
    return {} if runtime is None else runtime.as_dict()
