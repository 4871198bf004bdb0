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
    >>> plan = kind.plan(stage_config, tokenizer, max_positions, root, shard=Shard(2, 4, batch_size=8))   # laminae.shards.Shard
    >>> kind.estimate(cfg, input_bytes)              # (stored rows, tokens, tokens per forward)

`stimuli`: category words in a template, one stored row per word (experiment 1's input).
`corpus`: text files (.txt, .jsonl, .parquet) cut into windows, one stored row per token;
sharded over several extraction jobs with `corpus.shards`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

from laminae.experiment import INPUT_KINDS

if TYPE_CHECKING:
    from laminae.store import RowTable


@dataclass(frozen=True)
class ExtractionPlan:
    """What to feed the model and which positions become stored rows.

    Input i yields one row per position in `keep[i]`, or, when `average`, one row holding the
    mean over them (target_mean). `sequences` and `keep` are sequences that the extraction
    slices in order, batch by batch (a corpus reads them from disk); `rows` is a
    `laminae.store.RowTable` (a corpus computes its columns on demand). A shard of a corpus
    plans its windows only; `first_row` is the number of its first row in the whole corpus, and
    `max_length` the longest window of the whole corpus (what every shard pads attention
    patterns to, so that their stores line up), None: the longest of `sequences`."""

    sequences: Sequence[list[int]]
    keep: Sequence[list[int]]
    average: bool
    rows: "RowTable"
    columns: tuple[str, ...]
    first_row: int = 0
    max_length: int | None = None

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def input_kind(name: str) -> ModuleType:
    """The module of an input kind (`laminae.inputs.stimuli`, `laminae.inputs.corpus`)."""
    if name not in INPUT_KINDS:
        raise KeyError(f"unknown input kind {name!r}; expected one of {', '.join(INPUT_KINDS)}")
    return importlib.import_module(f"laminae.inputs.{name}")
