"""The identity of a model's weights, for binding every result to the weights that made it.

    >>> weights_fingerprint({"pretrained": "checkpoints/my-run", "revision": None, "random_init": None})
    'sha256:5c1e...'            # the checkpoint folder's files, hashed (remembered by path, size, mtime)
    >>> weights_fingerprint({"pretrained": "EleutherAI/pythia-70m", "revision": "step1000", "random_init": None})
    'hub:EleutherAI/pythia-70m@<commit>'     # the commit the revision resolves to
    >>> weights_fingerprint({"random_init": {...}})        # its config defines it, already hashed
    None

- A local folder (`save_pretrained`, a `pkg://` folder) or a GGUF file: sha256 over the names
  and sha256 of its files (weights, config, tokenizer: everything that shapes the activations;
  not READMEs). A file's sha256 is remembered per (absolute path, size, mtime) in
  `FingerprintCache` (a JSON file in laminae.config.compose.cache_dir), so building a DAG never
  rehashes gigabytes twice.
- A hub id: `hub:<id>@<commit>`, the commit its revision resolves to: from the local HF cache
  (a snapshot folder is named by its commit), else from the hub (one quick request), else None
  (the model cannot be had: the preflight says so).

Pure Python (hashlib, json); huggingface_hub only for hub ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping

from laminae.atomic import atomic_write_text

#: Files of a checkpoint folder that do not shape its activations.
IGNORED_SUFFIXES = (".md", ".txt", ".gitattributes", ".lock")
CHUNK = 1 << 22


class FingerprintCache:
    """sha256 of files, remembered per (absolute path, size, mtime_ns) in a JSON file.

        >>> cache = FingerprintCache(Path(".snakemake/laminae-cache/fingerprints.json"))
        >>> cache.sha256(Path("model.safetensors"))     # hashed once; later calls read the record
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] | None = None
        self._dirty = False

    def sha256(self, file: Path) -> str:
        file = Path(file).resolve()
        stat = file.stat()
        key = str(file)
        records = self._load()
        record = records.get(key)
        if record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
            return record["sha256"]
        digest = sha256_of(file)
        records[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        self._dirty = True
        self.save()
        return digest

    def save(self) -> None:
        """Write the records (atomically) when some file was hashed; a cache that cannot be
        written only costs a rehash next time."""
        if self.path is None or not self._dirty:
            return
        with self._lock:
            try:
                atomic_write_text(self.path, json.dumps(self._records, indent=0, sort_keys=True))
                self._dirty = False
            except OSError:
                pass

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._records is None:
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8")) if self.path else {}
            except (OSError, ValueError):
                loaded = {}
            self._records = loaded if isinstance(loaded, dict) else {}
        return self._records


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def files_fingerprint(files: Mapping[str, Path], cache: FingerprintCache) -> str:
    """`sha256:<hex>` over `name\\0sha256\\n` of each file, in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{cache.sha256(files[name])}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def checkpoint_files(location: Path) -> dict[str, Path]:
    """The files that make a checkpoint: a GGUF file alone, or every file of a folder (recursively,
    by relative name) but READMEs, licences and locks."""
    if location.is_file():
        return {location.name: location}
    files = {}
    for path in sorted(location.rglob("*")):
        name = path.relative_to(location).as_posix()
        if path.is_file() and not path.name.startswith(".") and not path.name.lower().startswith("license") \
                and not name.endswith(IGNORED_SUFFIXES):
            files[name] = path
    return files


def weights_fingerprint(model_cfg: Mapping[str, Any], project_root: str | os.PathLike = ".",
                        cache: FingerprintCache | None = None) -> str | None:
    """The fingerprint of `model_cfg`'s weights (module docstring); None for a random model, or
    for a hub id that is neither cached nor reachable."""
    if model_cfg.get("random_init"):
        return None
    pretrained = model_cfg.get("pretrained")
    if not isinstance(pretrained, str) or not pretrained.strip():
        return None
    location = local_checkpoint(pretrained, project_root)
    if location is not None:
        return files_fingerprint(checkpoint_files(location), cache or FingerprintCache(None))
    commit = hub_commit(pretrained, model_cfg.get("revision"))
    return None if commit is None else f"hub:{pretrained}@{commit}"


def local_checkpoint(pretrained: str, project_root: str | os.PathLike = ".") -> Path | None:
    """The local file or folder `model.pretrained` names (a path or `pkg://` spec), or None for
    a hub id (or a path that does not exist: the preflight names it)."""
    from laminae.models.locate import PKG_SCHEME, looks_like_path, gguf_path, is_gguf, package_folder

    try:
        if is_gguf(pretrained):
            return gguf_path(pretrained, project_root)
        if pretrained.startswith(PKG_SCHEME):
            return package_folder(pretrained)
    except Exception:
        return None
    local = Path(pretrained).expanduser()
    local = local if local.is_absolute() else Path(project_root) / local
    if local.is_dir():
        return local
    return None if not looks_like_path(pretrained) or not local.exists() else local


def hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit `revision` (default main) of hub model `repo` resolves to: the local HF cache's
    snapshot, else the hub's answer (unless HF_HUB_OFFLINE), else None."""
    from laminae.models.locate import cached_snapshot, hub_config_metadata, offline

    snapshot = cached_snapshot(repo, revision)
    if snapshot is not None:
        return snapshot.name   # snapshots/<commit>/
    if offline():
        return None
    try:
        return hub_config_metadata(repo, revision).commit_hash
    except Exception:   # unreachable, or no such model: the preflight says which
        return None
