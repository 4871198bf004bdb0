"""Where a model's blocks run: the whole model on one device (`model.device_map: null`, the
default), or spread by accelerate over several (`model.device_map: auto | balanced |
balanced_low_0 | sequential`): the first `model.gpus` GPUs of the machine, then CPU memory, then
(if even that is short) a temporary folder on disk. The capture's hooks fire wherever a block
runs and copy its rows into buffers in layer order, so dispatched and single-device extractions
store the same rows.

    >>> kwargs = dispatch_kwargs({"device_map": "auto", "gpus": 2}, torch.device("cuda"))  # doctest: +SKIP
    {'device_map': 'auto', 'max_memory': {0: ..., 1: ..., 'cpu': ...}, 'offload_folder': '/tmp/laminae-offload-...'}
    >>> model = AutoModel.from_pretrained(folder, **kwargs)                                  # doctest: +SKIP
    >>> input_device(model, torch.device("cuda"))                                            # doctest: +SKIP
    device(type='cuda', index=0)

A `device_map` may also be a dict (module path -> `cpu`, `disk` or a GPU index), as
`from_pretrained` takes it, when laminae is used as a library.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from typing import Any

import torch
from torch import nn

from laminae.errors import ConfigError

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def dispatch_kwargs(model_cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for `model_cfg`'s `device_map` ({} when null). With
    `device` cpu, a named map keeps every block in CPU memory (or on disk)."""
    device_map = model_cfg.get("device_map")
    if device_map is None:
        return {}
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise ConfigError("model.device_map", f"null, {', '.join(DEVICE_MAPS)} or a dict of module -> device",
                          device_map)
    from accelerate.utils import get_max_memory  # only needed here; a core dependency

    kwargs: dict[str, Any] = {"device_map": device_map, "offload_folder": _offload_folder()}
    if isinstance(device_map, str):
        available = get_max_memory()
        gpus = int(model_cfg.get("gpus") or 1) if device.type == "cuda" else 0
        first = (device.index or 0) if device.type == "cuda" else 0
        wanted = [i for i in available if isinstance(i, int) and first <= i < first + gpus]
        kwargs["max_memory"] = {**{i: available[i] for i in wanted}, "cpu": available["cpu"]}
    return kwargs


def input_device(model: nn.Module, device: torch.device) -> torch.device:
    """Where input ids go: `device`, or for a dispatched model the device of its first module
    (CPU when that module is offloaded to disk; accelerate moves its weights in on use)."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map:
        return device
    first = next(iter(device_map.values()))
    if first in ("cpu", "disk"):
        return torch.device("cpu")
    return torch.device(f"cuda:{first}" if isinstance(first, int) else first)


def placement_summary(model: nn.Module) -> str:
    """"cuda:0 x13, cuda:1 x12" (modules per device of a dispatched model), "" otherwise."""
    device_map = getattr(model, "hf_device_map", None)
    if not device_map or len(set(device_map.values())) < 2:
        return ""
    counts: dict[str, int] = {}
    for target in device_map.values():
        name = f"cuda:{target}" if isinstance(target, int) else str(target)
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} x{count}" for name, count in counts.items())


def _offload_folder() -> str:
    """A temporary folder for blocks accelerate offloads to disk, removed when the process ends."""
    folder = tempfile.mkdtemp(prefix="laminae-offload-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
