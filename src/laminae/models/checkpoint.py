"""What a checkpoint says about itself, read without torch or transformers (the DAG build and
the preflight use it): its model type, depth and width (`config.json`), its parameter count
and stored dtype (the safetensors headers: 8 bytes of length, then JSON), and the results-folder
name of a `model.pretrained` value.

    >>> facts = checkpoint_facts("/data/pythia-70m")       # doctest: +SKIP
    CheckpointFacts(model_type='gpt_neox', n_layers=6, d_model=512, n_params=70426624, stored_bytes=2)
    >>> results_name("EleutherAI/pythia-70m"), results_name("/data/runs/my ckpt/")
    ('EleutherAI--pythia-70m', 'my-ckpt')
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: bytes per value of the safetensors dtypes a checkpoint may store
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                     "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
#: config.json keys of depth and width, by the names the families use
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class CheckpointFacts:
    """Shape facts of a checkpoint folder; None where the files do not say."""

    model_type: str | None
    n_layers: int | None
    d_model: int | None
    n_params: int | None      # every tensor of the safetensors files (embeddings and head included)
    stored_bytes: int | None  # bytes per parameter as stored (the most common dtype)


@lru_cache(maxsize=64)
def checkpoint_facts(folder: str | Path) -> CheckpointFacts:
    """Read `folder`'s config.json and safetensors headers (a few KB, whatever the model's size)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}

    def first(keys: tuple[str, ...]) -> int | None:
        for source in (config, text_config):
            for key in keys:
                if isinstance(source.get(key), int):
                    return source[key]
        return None

    n_params, stored = _safetensors_params(folder)
    return CheckpointFacts(model_type=config.get("model_type"), n_layers=first(LAYER_KEYS),
                           d_model=first(WIDTH_KEYS), n_params=n_params, stored_bytes=stored)


def _safetensors_params(folder: Path) -> tuple[int | None, int | None]:
    """(parameter count, bytes per parameter of the most common dtype) over the folder's
    safetensors files, from their headers; (None, None) without safetensors files."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None, None
    count: dict[str, int] = {}
    try:
        for path in files:
            with open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
            for name, entry in header.items():
                if name != "__metadata__":
                    count[entry["dtype"]] = count.get(entry["dtype"], 0) + math.prod(entry["shape"])
    except (OSError, ValueError, KeyError, struct.error):
        return None, None
    if not count:
        return None, None
    common = max(count, key=count.get)
    return sum(count.values()), SAFETENSORS_BYTES.get(common)


def results_name(pretrained: str, local_folder: bool | None = None) -> str:
    """The results-folder name of a `model.pretrained` value: a local folder's own name, a hub
    id with its `/` written `--` (as the HF cache does), a `pkg://` folder's last part; any
    other character outside letters, digits and `_.+-` becomes `-`. `local_folder` (when
    known) says whether `pretrained` names a local folder; otherwise an id with one `/` and no
    leading `.`, `/` or `~` is read as a hub id."""
    text = pretrained.strip().rstrip("/\\")
    if text.startswith("pkg://"):
        text = text.rsplit("/", 1)[-1]
    else:
        if local_folder is None:
            local_folder = text.startswith((".", "/", "~")) or text.count("/") != 1
        text = Path(text).name if local_folder else text.replace("/", "--")
    name = _UNSAFE.sub("-", text).strip("-.+_")
    return name or "model"
