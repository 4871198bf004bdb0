"""What an experiment needs of the model beyond a forward pass, checked before any job.

An experiment declares `needs` (`laminae.experiment.NEEDS`: "readout", the model's final norm
and unembedding) and its `sites`; some sites need the family's support ("pattern": attention
that can return its probabilities). A model family that cannot give what an experiment needs
is known from the config alone when the run names its family, or its random config or local
checkpoint says which it is:

    >>> unmet_need(registry["logit_lens"], "bert")
    'an encoder (family bert) has no next-token readout'
    >>> skipped = drop_inapplicable(cfg, registry, ".", explicit=False)   # cfg["experiments"] shortened
    >>> skipped
    ['logit_lens skipped for minilm-l6: an encoder (family bert) has no next-token readout']

A single run that names the experiment explicitly (`experiments=[logit_lens]`) stops instead,
in one line; a sweep, or an experiment enabled by the default list, skips it for that model
and says why once before the jobs (`WorkflowPlan.notes`). A hub id with `family: auto` is
known only once downloaded: its jobs then stop in one line (`laminae.models.readout`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from laminae.errors import ConfigError
from laminae.experiment import Experiment


def model_family(model: Mapping[str, Any], project_root: str | Path = ".") -> str | None:
    """The adapter family of a run's model config when the config tells it without loading
    anything: `model.family`, else the `model_type` of `random_init.config` or of a local
    checkpoint's config.json; None when unknown (a hub id, a GGUF file with `family: auto`)."""
    from laminae.models.adapters import MODEL_TYPE_FAMILY  # torch-free

    family = model.get("family")
    if family and family != "auto":
        return str(family)
    config: Any = (model.get("random_init") or {}).get("config")
    pretrained = model.get("pretrained")
    if config is None and isinstance(pretrained, str) and not pretrained.startswith("pkg://"):
        path = Path(project_root) / Path(pretrained).expanduser() / "config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            config = None
    model_type = config.get("model_type") if isinstance(config, Mapping) else None
    return MODEL_TYPE_FAMILY.get(model_type) if isinstance(model_type, str) else None


#: random base models (laminae.models.random_models) that tie their unembedding to the input
#: embedding by default, so that their saved weights hold a readout
TIED_BY_DEFAULT = {"gpt2": True, "llama": False}


def unmet_need(experiment: Experiment, family: str, model: Mapping[str, Any] | None = None) -> str | None:
    """Why a model of `family` (config `model`, when known) cannot run `experiment` (one
    phrase), or None when it can."""
    from laminae.models.adapters import ADAPTERS

    adapter = ADAPTERS.get(family)
    if adapter is None:
        return None
    if "readout" in experiment.needs and not adapter.next_token:
        return f"an encoder (family {family}) has no next-token readout"
    random_init = (model or {}).get("random_init")
    if "readout" in experiment.needs and random_init:
        tied = (random_init.get("config") or {}).get("tie_word_embeddings",
                                                       TIED_BY_DEFAULT.get(random_init.get("architecture"), True))
        if not tied:
            return ("a random base model saved without an unembedding has no next-token readout "
                    "(set model.random_init.config.tie_word_embeddings=true)")
    if "pattern" in experiment.sites and not adapter.returns_pattern:
        return f"the attention of family {family} cannot return its probabilities (site pattern)"
    return None


def drop_inapplicable(cfg: dict[str, Any], registry: Mapping[str, Experiment], project_root: str | Path,
                      explicit: bool) -> list[str]:
    """Remove from `cfg["experiments"]` those its model cannot run; return one note per removal.
    With `explicit` (a single run whose overrides name the experiments) raise ConfigError
    instead, naming `experiments` and why."""
    family = model_family(cfg["model"], project_root)
    if family is None:
        return []
    notes, kept = [], []
    for name in cfg["experiments"]:
        reason = unmet_need(registry[name], family, cfg["model"])
        if reason is None:
            kept.append(name)
            continue
        if explicit:
            raise ConfigError("experiments", f"experiments that model {cfg['model']['name']} can run "
                                             f"({name}: {reason})", cfg["experiments"])
        notes.append(f"{name} skipped for {cfg['model']['name']}: {reason}")
    cfg["experiments"] = kept
    return notes


def names_experiments(overrides: Sequence[str]) -> bool:
    """Whether `overrides` set the experiments list (`experiments=[...]`, `+experiments=...`)."""
    return any(override.lstrip("+~").split("=", 1)[0] == "experiments" for override in overrides)
