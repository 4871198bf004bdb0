"""The preflight's memory check: do the configured devices hold the model's weights? Read
without torch (the preflight must stay fast): the weights' size from `model.n_params` or the
checkpoint's safetensors headers, times the bytes of `model.dtype`; the devices' memory from the
machine (`nvidia-smi` for GPUs, the OS for CPU memory).

    >>> check_weights_fit({"name": "gpt-j-6b", "n_params": 6_053_381_344, "dtype": "float32",
    ...                    "device_map": None, "gpus": 1}, device="cuda", location=None)   # doctest: +SKIP
    laminae.errors.ConfigError: config key 'model.device_map': expected devices that hold the weights
    (gpt-j-6b needs about 22.6 GiB in float32; cuda:0 holds 15.9 GiB): set model.dtype=bfloat16, or
    model.device_map=auto with model.gpus=N, got None

Where a device's memory cannot be read (no `nvidia-smi` on a GPU machine), nothing is checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from laminae.errors import ConfigError
from laminae.models.checkpoint import checkpoint_facts

BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2}
GIB = 2**30


def weights_bytes(model_cfg: dict[str, Any], location: str | None) -> int | None:
    """Bytes of the weights in `model.dtype`: `model.n_params`, else the parameters counted in
    the local checkpoint's safetensors headers; None when neither is known."""
    n_params = model_cfg.get("n_params")
    if n_params is None and location is not None and Path(location).is_dir():
        n_params = checkpoint_facts(location).n_params
    if n_params is None:
        return None
    return int(n_params) * BYTES_PER_PARAM[model_cfg.get("dtype") or "float32"]


def gpu_memory() -> list[int] | None:
    """Total memory (bytes) of each GPU visible to this process (CUDA_VISIBLE_DEVICES honoured),
    from `nvidia-smi`; [] on a machine without one, None when it cannot be asked."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=10, check=True)
        totals = {int(index): int(float(mib)) * 2**20 for index, mib in
                  (line.split(",") for line in result.stdout.strip().splitlines() if line.strip())}
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(part.strip().isdigit() for part in visible.split(",") if part.strip()):
        return [totals[int(part)] for part in visible.split(",") if part.strip() and int(part) in totals]
    return [totals[index] for index in sorted(totals)]


def cpu_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def capacity(device: str, model_cfg: dict[str, Any]) -> tuple[int, str] | None:
    """(bytes, description) of what `device` and `model.device_map` give the weights: one GPU,
    the first `model.gpus` GPUs plus CPU memory (device_map), or CPU memory; None if unknown."""
    gpus = gpu_memory()
    ram = cpu_memory()
    if gpus is None or ram is None:
        return None
    on_cpu = device == "cpu" or (device == "auto" and not gpus)
    if on_cpu:
        return ram, f"this machine's memory holds {ram / GIB:.1f} GiB"
    first = int(device.split(":")[1]) if ":" in device else 0
    if first >= len(gpus):
        return None  # resolve_device reports a missing GPU
    if model_cfg.get("device_map") is None:
        return gpus[first], f"cuda:{first} holds {gpus[first] / GIB:.1f} GiB"
    used = gpus[first : first + int(model_cfg.get("gpus") or 1)]
    return (sum(used) + ram, f"{len(used)} GPU(s) hold {sum(used) / GIB:.1f} GiB and this machine's memory "
                             f"{ram / GIB:.1f} GiB")


def check_weights_fit(model_cfg: dict[str, Any], device: str, location: str | None) -> None:
    """Raise a one-line ConfigError when the configured devices cannot hold the weights."""
    need = weights_bytes(model_cfg, location)
    have = capacity(device, model_cfg) if need is not None else None
    if need is None or have is None or need <= have[0]:
        return
    name = model_cfg.get("name") or model_cfg.get("pretrained")
    hints = [] if model_cfg.get("dtype") in ("float16", "bfloat16") else ["model.dtype=bfloat16"]
    if model_cfg.get("device_map") is None and device != "cpu":
        hints.append("model.device_map=auto with model.gpus=N")
    hints.append("a machine with more memory")
    raise ConfigError("model.device_map" if device != "cpu" else "device",
                      f"devices that hold the weights ({name} needs about {need / GIB:.1f} GiB in "
                      f"{model_cfg.get('dtype') or 'float32'}; {have[1]}): use {', or '.join(hints)}",
                      model_cfg.get("device_map") if device != "cpu" else device)
