"""The model keys a run gets when its checkpoint is not the preset's own: `model=auto
model.pretrained=<dir or hub id>`, or a named preset pointed elsewhere (`model=gpt2
model.pretrained=/data/ckpt`).

A preset's `n_layers`, `d_model` and `n_params` describe the preset's own checkpoint; pointed at
another one they are dropped (null: the loaded model's shape is used, and job sizes come from the
checkpoint's files when it is local), so no shape needs to be declared or nulled by hand. Unless
`model.name` is set, the results folder is then named after the checkpoint (its folder's name,
or the hub id with `/` written `--`): another checkpoint's results never land in the preset's
folder.

    >>> resolve_model_keys({"name": None, "pretrained": "EleutherAI/pythia-70m", ...},
    ...                    ["model=auto", "model.pretrained=EleutherAI/pythia-70m"], "conf", ".")
    {'name': 'EleutherAI--pythia-70m', 'pretrained': 'EleutherAI/pythia-70m', ..., 'n_layers': None, ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from laminae.models.checkpoint import results_name

SHAPE_KEYS = ("n_layers", "d_model", "n_params")


def resolve_model_keys(model: dict[str, Any], overrides: Sequence[str], config_dir: str | Path,
                       project_root: str | Path) -> dict[str, Any]:
    """`model` (a composed config's model group) with the shapes dropped and the name derived
    when its `pretrained` is not the chosen preset's (see the module docstring)."""
    pretrained = model.get("pretrained")
    if pretrained is None:   # a random model: no preset to read (nor Hydra to import)
        return model
    preset = _preset(overrides, Path(config_dir))
    if pretrained == preset.get("pretrained"):
        return model
    model = dict(model)
    for key in SHAPE_KEYS:
        if not _overridden(f"model.{key}", overrides):  # shapes the user states still count
            model[key] = None
    if model.get("name") is None or not _overridden("model.name", overrides):
        local = pretrained.startswith("pkg://") or (Path(project_root) / Path(pretrained).expanduser()).is_dir()
        model["name"] = results_name(pretrained, local_folder=local)
    return model


def _preset(overrides: Sequence[str], config_dir: Path) -> dict[str, Any]:
    """The chosen `conf/model/<option>.yaml` as written (the last `model=` override, else the
    default of conf/config.yaml); {} when it cannot be read (composition reports that)."""
    option = _last_value("model", overrides)
    if option is None:
        root = yaml.safe_load((config_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        for entry in root.get("defaults", []):
            if isinstance(entry, dict) and "model" in entry:
                option = entry["model"]
    try:
        return yaml.safe_load((config_dir / "model" / f"{option}.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, TypeError):
        return {}


def _last_value(key: str, overrides: Sequence[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = None
    for override in OverridesParser.create().parse_overrides([str(o) for o in overrides]):
        if override.key_or_group == key and not override.is_delete():
            value = override.value()
    return value if isinstance(value, str) else None


def _overridden(key: str, overrides: Sequence[str]) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return any(o.key_or_group == key for o in OverridesParser.create().parse_overrides([str(o) for o in overrides]))
