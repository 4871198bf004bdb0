"""What the model reads. Each kind of input is a module here with the same functions:

    >>> kind = input_kind("corpus")                  # or "stimuli"
    >>> kind.CONFIG_KEYS                             # the config keys that shape the activations
    ('corpus',)
    >>> kind.content_digest(cfg, root)               # a hash of the input files' bytes (None: no files)
    >>> kind.label(cfg), kind.describe(cfg)          # folder label; labels for titles and captions
    ('nietzsche', {'corpus': 'nietzsche'})
    >>> kind.documents(cfg, root)                    # input files (Snakemake inputs), [] for stimuli
    >>> kind.validate(cfg, root)                     # ConfigError naming the key, before any job
    >>> plan = kind.plan(stage_config, tokenizer, max_positions, root)   # in the extraction job
    >>> kind.estimate(cfg, input_bytes)              # (stored rows, tokens, tokens per forward)

`stimuli`: category words in a template, one stored row per word (experiment 1's input).
`corpus`: text files cut into windows, one stored row per token.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from laminae.experiment import INPUT_KINDS


@dataclass(frozen=True)
class ExtractionPlan:
    """What to feed the model and which positions become stored rows.

    Input i yields one row per position in `keep[i]`, or, when `average`, one row holding the
    mean over them (target_mean)."""

    sequences: list[list[int]]
    keep: list[list[int]]
    average: bool
    rows: list[dict[str, Any]]
    columns: tuple[str, ...]

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def input_kind(name: str) -> ModuleType:
    """The module of an input kind (`laminae.inputs.stimuli`, `laminae.inputs.corpus`)."""
    if name not in INPUT_KINDS:
        raise KeyError(f"unknown input kind {name!r}; expected one of {', '.join(INPUT_KINDS)}")
    return importlib.import_module(f"laminae.inputs.{name}")
