"""Experiment-1 inputs: category words -> prompts -> the token positions to keep.

The target word is located through the tokenizer's character offsets, so a template may put
the word anywhere (`"I saw a {word} in the picture"`), and multi-token words are handled:

    >>> items = build_stimuli({"fruit": ["apple", "pear"], "space": ["sun", "moon"]}, "The next word is {word}")
    >>> encoded = encode_stimuli(items, gpt2_tokenizer(), position="target_last")
    >>> encoded[0].input_ids, encoded[0].positions, encoded[0].target_tokens
    ([464, 1306, 1573, 318, 17180], [4], [4])

Position policies: `target_last` (the word's last token), `last` (the prompt's last non-special
token), `target_mean` (every token of the word; the caller averages them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

from laminae.errors import ConfigError

log = logging.getLogger(__name__)
POSITIONS = ("target_last", "last", "target_mean")
ROW_COLUMNS = ("word", "category", "prompt", "position", "n_tokens", "token_id", "token")


@dataclass(frozen=True)
class Stimulus:
    """One word in its prompt; `start:end` is the word's character span in the prompt."""

    word: str
    category: str
    category_index: int
    prompt: str
    start: int
    end: int


@dataclass(frozen=True)
class EncodedStimulus:
    """A tokenised prompt: the token ids, the word's tokens, and the positions to keep."""

    stimulus: Stimulus
    input_ids: list[int]
    target_tokens: list[int]   # indices of the tokens that overlap the word
    positions: list[int]       # indices whose vectors are kept (averaged when more than one)


def build_stimuli(categories: Mapping[str, Sequence[str]], template: str) -> list[Stimulus]:
    """One stimulus per word, ordered by category (config order) then word order."""
    prefix = template.split("{word}")[0].replace("{{", "{").replace("}}", "}")
    items = []
    for index, (category, words) in enumerate(categories.items()):
        for word in words:
            items.append(Stimulus(word, category, index, template.format(word=word), len(prefix), len(prefix) + len(word)))
    return items


def encode_stimuli(items: Sequence[Stimulus], tokenizer, position: str = "target_last") -> list[EncodedStimulus]:
    """Tokenise every prompt (with the tokenizer's special tokens) and pick the positions."""
    if position not in POSITIONS:
        raise ConfigError("extract.position", f"one of {list(POSITIONS)}", position)
    encodings = tokenizer([item.prompt for item in items], add_special_tokens=True,
                          return_offsets_mapping=True, return_special_tokens_mask=True)
    encoded, split_words = [], []
    for i, item in enumerate(items):
        offsets = encodings["offset_mapping"][i]
        special = encodings["special_tokens_mask"][i]
        targets = [t for t, (s, e) in enumerate(offsets) if not special[t] and s < item.end and e > item.start]
        if not targets:  # the tokenizer's normaliser dropped the word (e.g. BERT strips lone accents)
            raise ConfigError(f"stimuli.categories.{item.category}", "words the model's tokenizer keeps "
                              f"({item.word!r} leaves no token in the prompt {item.prompt!r})", item.word)
        if len(targets) > 1:
            split_words.append(f"{item.word} ({len(targets)})")
        last = max(t for t in range(len(offsets)) if not special[t])
        positions = {"target_last": [targets[-1]], "last": [last], "target_mean": targets}[position]
        encoded.append(EncodedStimulus(item, list(encodings["input_ids"][i]), targets, positions))
    if split_words:
        log.warning("%d of %d words split into several tokens: %s", len(split_words), len(items), ", ".join(split_words))
    return encoded


def stimulus_rows(encoded: Sequence[EncodedStimulus], tokenizer) -> list[dict[str, object]]:
    """rows.tsv content: one row per word. For target_mean, `position`, `token_id` and `token`
    describe the word's last token, the one target_last would keep."""
    rows = []
    for item in encoded:
        kept = item.positions[-1]
        token_id = item.input_ids[kept]
        rows.append({
            "word": item.stimulus.word,
            "category": item.stimulus.category,
            "prompt": item.stimulus.prompt,
            "position": kept,
            "n_tokens": len(item.target_tokens),
            "token_id": token_id,
            "token": tokenizer.decode([token_id]),
        })
    return rows
