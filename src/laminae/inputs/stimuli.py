"""Stimuli inputs: category words -> prompts -> the token positions to keep (one row per word).

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
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from laminae.errors import ConfigError
from laminae.inputs import ExtractionPlan
from laminae.shards import Shard

log = logging.getLogger(__name__)
POSITIONS = ("target_last", "last", "target_mean")
ROW_COLUMNS = ("word", "category", "prompt", "position", "n_tokens", "token_id", "token")
#: The config keys that determine a stimuli extraction's activations.
CONFIG_KEYS = ("stimuli", "template", "extract.position")
PROMPT_TOKENS = 32   # a generous length of one prompt, for job sizes


# ------------------------------------------------------------------------ the input kind
def content_digest(cfg: dict[str, Any], project_root: str | Path) -> None:
    """Stimuli live in the config itself: no files to hash."""
    return None


def label(cfg: dict[str, Any]) -> str:
    """`<stimuli>.<template>`: names the extraction's folder."""
    return f"{cfg['stimuli']['name']}.{cfg['template']['name']}"


def describe(cfg: dict[str, Any]) -> dict[str, Any]:
    """Labels for figure titles and report captions."""
    return {"stimuli": cfg["stimuli"]["name"], "template": cfg["template"]["text"],
            "position": cfg["extract"]["position"]}


def documents(cfg: dict[str, Any], project_root: str | Path) -> list[Path]:
    return []


def estimate(cfg: dict[str, Any], input_bytes: int = 0) -> tuple[int, int, int]:
    """(stored rows, input tokens, tokens per forward pass), for job sizes: one row per word,
    prompts of at most PROMPT_TOKENS."""
    n_words = sum(len(words) for words in cfg["stimuli"]["categories"].values())
    return n_words, n_words * PROMPT_TOKENS, min(n_words, cfg["batch_size"]) * PROMPT_TOKENS


def plan(config: dict[str, Any], tokenizer, max_positions: int | None, project_root: Path,
         shard: Shard | None = None) -> ExtractionPlan:
    """The prompts and kept positions of an extraction stage's `config` (never sharded)."""
    from laminae.store import RowTable

    if shard is not None and shard.count > 1:
        raise ValueError("stimuli are never sharded (corpus.shards shards a corpus)")
    items = build_stimuli(config["stimuli"]["categories"], config["template"]["text"])
    position = config["extract"]["position"]
    encoded = encode_stimuli(items, tokenizer, position)
    return ExtractionPlan(sequences=[item.input_ids for item in encoded], keep=[item.positions for item in encoded],
                          average=position == "target_mean", rows=RowTable(stimulus_rows(encoded, tokenizer)),
                          columns=ROW_COLUMNS)


def validate(cfg: dict[str, Any], project_root: str | Path) -> None:
    """A template with exactly one `{word}`; >= 2 categories of >= 2 distinct, visible words."""
    _check_template(cfg["template"]["text"])
    _check_categories(cfg["stimuli"]["categories"])


def _check_template(text: str) -> None:
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError:
        raise ConfigError("template.text", "balanced braces around '{word}'", text) from None
    if fields != ["word"]:
        raise ConfigError("template.text", "a string with exactly one '{word}' placeholder and no other "
                                           "braces (write literal braces as '{{' and '}}')", text)


def _check_categories(categories: dict[str, list[str]]) -> None:
    if len(categories) < 2:
        raise ConfigError("stimuli.categories", "at least 2 categories (selectivity compares them)", list(categories))
    seen: dict[str, str] = {}
    for category, words in categories.items():
        key = f"stimuli.categories.{category}"
        if len(words) < 2:
            raise ConfigError(key, "at least 2 words (within-category similarity needs a pair)", words)
        for word in words:
            if not word.strip():
                raise ConfigError(key, "non-empty words", word)
            if not any(char.isprintable() for char in word):
                raise ConfigError(key, "words with at least one visible character", word)
            if word != word.strip():
                raise ConfigError(key, "words without leading or trailing spaces", word)
            if word in seen:
                where = "twice here" if seen[word] == category else f"also in {seen[word]!r}"
                raise ConfigError(key, f"each word once across all categories ({word!r} is {where})", word)
            seen[word] = category


# ------------------------------------------------------------------------------ prompts


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
